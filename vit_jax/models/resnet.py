"""ResNet root and stages (weight-standardised conv + GroupNorm) for hybrid R+ViT models.

Parameter names (`conv_root`, `gn_root`, `block{i}/unit{j}/{conv1..3,conv_proj,gn1..3,gn_proj}`) and numerics
(weight-standardisation eps 1e-5, GroupNorm 32 groups eps 1e-6) follow the implementation that produced the
published hybrid checkpoints.
"""
from typing import Any, Callable, Sequence, TypeVar

import flax.linen as nn
import jax.numpy as jnp

T = TypeVar('T')
Dtype = Any


def weight_standardize(w: jnp.ndarray, axis: Sequence[int], eps: float) -> jnp.ndarray:
  """Subtracts the mean and divides by the standard deviation over `axis`."""
  w = w - jnp.mean(w, axis=axis)
  return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
  """Convolution with weight standardisation."""

  def param(self, name: str, init_fn: Callable[..., T], *init_args, **init_kwargs) -> T:
    param = super().param(name, init_fn, *init_args, **init_kwargs)
    if name == 'kernel':
      param = weight_standardize(param, axis=[0, 1, 2], eps=1e-5)
    return param


class ResidualUnit(nn.Module):
  """Bottleneck ResNet block (v1.5 stride placement, GroupNorm)."""

  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    conv = lambda f, k, s, name: StdConv(  # pylint: disable=g-long-lambda
        features=f, kernel_size=k, strides=s, use_bias=False, dtype=self.dtype, name=name)
    norm = lambda name, **kw: nn.GroupNorm(dtype=self.dtype, name=name, **kw)
    needs_projection = x.shape[-1] != self.features * 4 or tuple(self.strides) != (1, 1)

    residual = x
    if needs_projection:
      residual = conv(self.features * 4, (1, 1), self.strides, 'conv_proj')(residual)
      residual = norm('gn_proj')(residual)

    y = nn.relu(norm('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
    y = nn.relu(norm('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
    y = norm('gn3', scale_init=nn.initializers.zeros)(conv(self.features * 4, (1, 1), (1, 1), 'conv3')(y))
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """A stage of `block_size` residual units; the first one may stride."""

  block_size: int
  nout: int
  first_stride: Sequence[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = ResidualUnit(self.nout, strides=self.first_stride, dtype=self.dtype, name='unit1')(x)
    for i in range(1, self.block_size):
      x = ResidualUnit(self.nout, strides=(1, 1), dtype=self.dtype, name=f'unit{i + 1}')(x)
    return x


def root_stride(num_layers: Sequence[int]) -> int:
  """Pixels per output position of `resnet_root`: 4 (root conv and max-pool), times 2 per stage after the first."""
  return 4 * 2 ** max(len(tuple(num_layers)) - 1, 0)


def resnet_root(x: jnp.ndarray, num_layers: Sequence[int], width_factor: float = 1,
                dtype: Dtype = jnp.float32) -> jnp.ndarray:
  """Root conv + stages of a hybrid; call inside a compact method so the layers sit at its top level.

  The published hybrids keep `conv_root`, `gn_root`, `block{i}` directly beside `embedding`, so this is a
  function that creates its layers in the calling module rather than a submodule of its own.
  Downsamples by 4 (root) and 2 per stage after the first.
  """
  width = int(64 * width_factor)
  x = StdConv(features=width, kernel_size=(7, 7), strides=(2, 2), use_bias=False, dtype=dtype,
              name='conv_root')(x)
  x = nn.GroupNorm(dtype=dtype, name='gn_root')(x)
  x = nn.relu(x)
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for i, block_size in enumerate(num_layers):
    x = ResNetStage(block_size=block_size, nout=width * 2**i, first_stride=(1, 1) if i == 0 else (2, 2),
                    dtype=dtype, name=f'block{i + 1}')(x)
  return x
