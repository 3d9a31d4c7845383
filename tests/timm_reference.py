"""Runs timm's VisionTransformer on a published-layout .npz, in its own process (see checkpoint_test).

PyTorch and TensorFlow loaded into one process can crash it, and the test suite imports TensorFlow for TFDS, so
the independent implementation runs here: `python tests/timm_reference.py SPEC.json` reads the spec (npz path,
images .npy, timm kwargs, optional hybrid ResNet layers) and writes the logits to the spec's `out` path.
"""
import functools
import json
import sys

import numpy as np
import torch
from timm.layers import GroupNormAct, StdConv2dSame
from timm.models import resnetv2
from timm.models import vision_transformer as timm_vit
from timm.models import vision_transformer_hybrid


def main(spec_path: str) -> None:
  with open(spec_path) as f:
    spec = json.load(f)
  images = np.load(spec['images'])
  kwargs = dict(spec['kwargs'])
  if spec.get('hybrid_layers') is not None:
    # timm's hybrid helper keeps GroupNorm's eps at 1e-5; the published models use flax's 1e-6.
    backbone = resnetv2.ResNetV2(
        layers=tuple(spec['hybrid_layers']), num_classes=0, global_pool='', preact=False, stem_type='same',
        conv_layer=functools.partial(StdConv2dSame, eps=1e-8),
        norm_layer=functools.partial(GroupNormAct, num_groups=32, eps=1e-6))
    kwargs['embed_layer'] = functools.partial(vision_transformer_hybrid.HybridEmbed, backbone=backbone)
  model = timm_vit.VisionTransformer(
      img_size=images.shape[1:3], fc_norm=False, act_layer='gelu_tanh',
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), **kwargs).eval()
  model.load_pretrained(spec['npz'])  # timm's reader of the published / big_vision .npz layouts
  with torch.no_grad():
    logits = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  np.save(spec['out'], logits)


if __name__ == '__main__':
  main(sys.argv[1])
