"""Analytic model FLOPs of a ViT (or hybrid R+ViT) forward pass: matmuls and convolutions, 2 FLOPs per multiply-add.

The count the MFU figures use (the training loop's `progress/mfu` and the benchmark's): unlike XLA's cost analysis
it does not count a `scan` body once, a gradient-accumulation scan once, or a cuDNN attention custom call as zero.
A train step is 3 forward passes (forward + backward, the convention of `timm_baseline.py`); recomputation under
remat is not model work and is not counted. Norms, GELU and softmax are left out (a few % of a ViT's FLOPs).
"""
import math
from typing import Any, Mapping


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  return cfg[key] if cfg is not None and key in cfg else default


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


def forward_flops(mc: Mapping[str, Any], resolution: int, num_classes: int) -> float:
  """Matmul FLOPs of one image's forward pass for a model config of the model table (`registry.get_config`).

  Per layer 2 N (4 D^2 + 2 D M) for the q/k/v/out projections and the MLP, plus 4 N^2 D for q k^T and
  weights @ v; plus the ResNet root of hybrids, the patch embedding, a MAP head, the pre-logits layer and the head.
  """
  p = _get(mc, 'patches')['size'][0]
  d, t = mc['hidden_size'], _get(mc, 'transformer')
  side, channels, flops = resolution, 3, 0
  if _get(mc, 'resnet') is not None:
    flops, side, channels = resnet_root_flops(resolution, _get(mc['resnet'], 'num_layers'),
                                              _get(mc['resnet'], 'width_factor', 1))
  grid = (side // p) ** 2
  flops += 2 * grid * p * p * channels * d
  classifier = _get(mc, 'classifier', 'token')
  if t is not None:
    n = grid + (1 if classifier in ('token', 'token_unpooled') else 0)
    m = t['mlp_dim']
    flops += t['num_layers'] * (2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d)
    if classifier == 'map':  # one probe query: q/out projections of 1 token, k/v of N, its attention and MLP
      flops += 2 * 2 * d * d + 2 * n * 2 * d * d + 4 * n * d + 2 * 2 * d * m
  rep = _get(mc, 'representation_size')
  if rep:
    flops += 2 * d * rep
    d = rep
  return float(flops + 2 * d * num_classes)


def model_forward_flops(model: Any, resolution: int) -> float:
  """`forward_flops` of a built `VisionTransformer` (its own fields: patches, width, depth, head)."""
  mc = {'patches': model.patches, 'hidden_size': model.hidden_size, 'transformer': model.transformer,
        'resnet': model.resnet, 'classifier': model.classifier, 'representation_size': model.representation_size}
  return forward_flops(mc, resolution, model.num_classes or 0)


def train_step_flops(model: Any, resolution: int, global_batch: int) -> float:
  """Model FLOPs of one train step over the global batch: 3 forward passes per image (forward + backward)."""
  return 3. * model_forward_flops(model, resolution) * global_batch
