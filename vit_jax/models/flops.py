"""Analytic model FLOPs of a ViT (or hybrid R+ViT) forward pass: matmuls and convolutions, 2 FLOPs per multiply-add.

The count the MFU figures use (the training loop's `progress/mfu` and the benchmark's): unlike XLA's cost analysis
it does not count a `scan` body once, a gradient-accumulation scan once, or a cuDNN attention custom call as zero.
It counts the tokens the model actually processes: patch dropout's kept patches (training only), the class token,
DeiT's distillation token (and its second head), register tokens, a MAP head's probe over the pooled tokens, a
per-token head for unpooled classifiers, and the ResNet stem of hybrids. A train step is 3 forward passes (forward
+ backward, the convention of `timm_baseline.py`); recomputation under remat is not model work and is not counted,
nor is the cuDNN path's padding of 197 tokens to 198. Norms, GELU and softmax are left out (a few % of a ViT's
FLOPs; `tests/perf/flops_test.py` holds the count to XLA's cost analysis of the unrolled forward for every model
option).
"""
import math
from typing import Any, Mapping, Optional


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  return cfg[key] if cfg is not None and key in cfg and cfg[key] is not None else default


def resnet_root_flops(resolution: int, num_layers: Any, width_factor: float = 1) -> tuple:
  """(FLOPs, output side, output channels) of the hybrid ResNet root (`vit_jax.models.resnet.resnet_root`)."""
  width = int(64 * width_factor)
  side = math.ceil(resolution / 2)  # 7x7 stride-2 root conv ('SAME' padding)
  flops = 2 * side * side * 7 * 7 * 3 * width
  side = math.ceil(side / 2)  # 3x3 stride-2 max-pool
  cin = width
  for i, block_size in enumerate(num_layers):
    nout = width * 2**i
    for j in range(block_size):
      stride = 2 if i > 0 and j == 0 else 1
      out = math.ceil(side / stride)
      if cin != 4 * nout or stride != 1:
        flops += 2 * out * out * cin * 4 * nout                 # conv_proj, 1x1
      flops += 2 * side * side * cin * nout                     # conv1, 1x1
      flops += 2 * out * out * 3 * 3 * nout * nout              # conv2, 3x3
      flops += 2 * out * out * nout * 4 * nout                  # conv3, 1x1
      cin, side = 4 * nout, out
  return flops, side, cin


def kept_patches(num_patches: int, patch_dropout: float, train: bool) -> int:
  """Patch tokens that reach the encoder: patch dropout keeps max(1, int(n (1 - rate))) in training (`vit.py`)."""
  if not train or not patch_dropout:
    return num_patches
  return max(1, int(num_patches * (1. - patch_dropout)))


def forward_flops(mc: Mapping[str, Any], resolution: int, num_classes: int, *, train: bool = False,
                  visible: Optional[int] = None) -> float:
  """Matmul FLOPs of one image's forward pass for a model config of the model table (`registry.get_config`).

  `mc` may also hold the model options that change the token count, `num_registers` and `patch_dropout` (the
  latter applies when `train`). Per layer 2 N (4 D^2 + 2 D M) for the q/k/v/out projections and the MLP, plus
  4 N^2 D for q k^T and weights @ v, with N the tokens in the encoder; plus the ResNet root of hybrids, the patch
  embedding (every patch: dropout comes after it), a MAP head, the pre-logits layer and the head. `visible`: the
  patch tokens the encoder runs on when fewer than all (MAE's unmasked patches).
  """
  p = _get(mc, 'patches')['size'][0]
  d, t = mc['hidden_size'], _get(mc, 'transformer')
  side, channels, flops = resolution, 3, 0
  if _get(mc, 'resnet') is not None:
    flops, side, channels = resnet_root_flops(resolution, _get(mc['resnet'], 'num_layers'),
                                              _get(mc['resnet'], 'width_factor', 1))
  grid = (side // p) ** 2
  flops += 2 * grid * p * p * channels * d
  classifier, distill = _get(mc, 'classifier', 'token'), bool(_get(mc, 'distill_token'))
  outputs = grid  # tokens leaving the encoder (registers dropped)
  if t is not None:
    prefix = int(classifier in ('token', 'token_unpooled')) + int(distill)  # class (and DeiT's distillation) token
    outputs = prefix + kept_patches(grid if visible is None else visible, _get(mc, 'patch_dropout', 0.), train)
    n, m = outputs + _get(mc, 'num_registers', 0), t['mlp_dim']
    flops += t['num_layers'] * (2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d)
    if classifier == 'map':  # one probe query: q/out projections of 1 token, k/v of the outputs, attention, MLP
      flops += 2 * 2 * d * d + 2 * outputs * 2 * d * d + 4 * outputs * d + 2 * 2 * d * m
  # Unpooled: the head runs on every token; DeiT: the class and distillation tokens, each through its own head.
  heads = outputs if classifier in ('unpooled', 'token_unpooled') else 2 if distill else 1
  rep = _get(mc, 'representation_size')
  if rep:
    flops += heads * 2 * d * rep
    d = rep
  return float(flops + heads * 2 * d * num_classes)


def model_config(model: Any) -> dict:
  """The fields of a built `VisionTransformer` that `forward_flops` reads."""
  return {'patches': model.patches, 'hidden_size': model.hidden_size, 'transformer': model.transformer,
          'resnet': model.resnet, 'classifier': model.classifier, 'representation_size': model.representation_size,
          'num_registers': model.num_registers, 'patch_dropout': model.patch_dropout,
          'distill_token': model.distill_token}


def mae_forward_flops(model: Any, resolution: int) -> float:
  """One image's forward through a `models.mae.MaskedAutoencoder`: a hybrid's ResNet stem on the whole image, the
  patch embedding of every patch, the encoder on the class token and the visible patches, the decoder's embedding
  of those, its blocks on all tokens (MLP 4x) and the pixel prediction of every token."""
  enc = model.encoder
  p = model.patch  # pixels per token side (the stem's stride times the patch size in a hybrid)
  n = (resolution // p) ** 2
  k = max(1, int(n * (1. - model.mask_ratio)))  # models.mae.num_visible
  prefix = 1 if enc.classifier in ('token', 'token_unpooled') else 0
  flops = forward_flops(model_config(enc), resolution, 0, visible=k)
  d, dd, tokens = enc.hidden_size, model.decoder_hidden_size, prefix + n
  flops += 2 * (prefix + k) * d * dd
  flops += model.decoder_num_layers * (2 * tokens * (4 * dd * dd + 2 * dd * 4 * dd) + 4 * tokens * tokens * dd)
  return float(flops + 2 * tokens * dd * p * p * 3)


def model_forward_flops(model: Any, resolution: int, *, train: bool = False) -> float:
  """`forward_flops` of a built `VisionTransformer` (or `mae_forward_flops` of an MAE); `train` counts the tokens
  patch dropout keeps."""
  if hasattr(model, 'decoder_num_layers'):  # an MAE (models.mae, not imported: this module stays flax-free)
    return mae_forward_flops(model, resolution)
  return forward_flops(model_config(model), resolution, model.num_classes or 0, train=train)


def train_step_flops(model: Any, resolution: int, global_batch: int) -> float:
  """Model FLOPs of one train step over the global batch: 3 training forward passes per image."""
  return 3. * model_forward_flops(model, resolution, train=True) * global_batch
