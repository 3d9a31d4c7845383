"""MLP activations and the normalisation constants of the ViT families other codebases trained (timm, HF).

The published ViTs use flax's tanh-approximate GELU and LayerNorm eps 1e-6; timm and PyTorch models use the exact
(erf) GELU, OpenAI's CLIP the sigmoid "quick" GELU, DINOv2-g a gated SiLU (SwiGLU), and some LayerNorm eps 1e-5
(CLIP) or 1e-12 (HF ViT). These are `VisionTransformer` options so that their checkpoints compute their function.
"""
from typing import Callable, Dict

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def quick_gelu(x: Array) -> Array:
  """OpenAI CLIP's GELU approximation x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


# name -> activation; 'swiglu' is gated (the first MLP projection gives 2 * mlp_dim features, see `mlp_activate`).
ACTIVATIONS: Dict[str, Callable[[Array], Array]] = {
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'quick_gelu': quick_gelu,
    'swiglu': jax.nn.silu,
}
GATED = ('swiglu',)


def mlp_hidden_features(mlp_dim: int, activation: str) -> int:
  """Width of the first MLP projection: twice `mlp_dim` for gated activations (value and gate packed)."""
  return 2 * mlp_dim if activation in GATED else mlp_dim


def mlp_activate(x: Array, activation: str) -> Array:
  """The MLP's nonlinearity; gated ones split the packed features as DINOv2 does: act(first half) * second half."""
  if activation in GATED:
    gate, value = jnp.split(x, 2, axis=-1)
    return ACTIVATIONS[activation](gate) * value
  return ACTIVATIONS[activation](x)
