"""The model table: every published ViT name, ViT-g/14, tiny `testing` models, and a variant parser.

Configs are plain dicts (no ml_collections needed) with the keys of google-research/vision_transformer's model
configs; `vit_jax.configs.models.MODEL_CONFIGS` wraps them as ConfigDicts for code written against that repo.
"""
import copy
import re
from typing import Any, Dict, Optional

from vit_jax.models import vit

# Size -> (width, depth, mlp_dim, heads), as in the ViT, AugReg, "Scaling ViTs" and SigLIP papers.
VARIANTS = {
    'mu': (32, 1, 128, 2),
    'Ti': (192, 12, 768, 3),
    'S': (384, 12, 1536, 6),
    'M': (512, 12, 2048, 8),
    'B': (768, 12, 3072, 12),
    'L': (1024, 24, 4096, 16),
    'So400m': (1152, 27, 4304, 16),
    'H': (1280, 32, 5120, 16),
    'g': (1408, 40, 6144, 16),
    'G': (1664, 48, 8192, 16),
    'e': (1792, 56, 15360, 16),
}


def _vit(size: str, patch: int, *, name: str, dropout: float = 0., classifier: str = 'token',
         representation_size: Optional[int] = None, resnet: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  width, depth, mlp_dim, heads = VARIANTS[size]
  cfg = {
      'model_name': name,
      'patches': {'size': (patch, patch)},
      'hidden_size': width,
      'transformer': {'mlp_dim': mlp_dim, 'num_heads': heads, 'num_layers': depth,
                      'attention_dropout_rate': 0.0, 'dropout_rate': dropout},
      'classifier': classifier,
      'representation_size': representation_size,
  }
  if resnet is not None:
    cfg['resnet'] = resnet
  return cfg


def _resnet(num_layers: tuple, width_factor: float = 1) -> Dict[str, Any]:
  return {'num_layers': num_layers, 'width_factor': width_factor}


def _testing(name: str, classifier: str) -> Dict[str, Any]:
  return {'model_name': name, 'patches': {'size': (16, 16)}, 'hidden_size': 10,
          'transformer': {'mlp_dim': 10, 'num_heads': 2, 'num_layers': 1, 'attention_dropout_rate': 0.0,
                          'dropout_rate': 0.1},
          'classifier': classifier, 'representation_size': None}


_TABLE = [
    # Published ViT and AugReg checkpoints (dropout rates as published).
    _vit('Ti', 16, name='ViT-Ti_16'),
    _vit('S', 16, name='ViT-S_16'),
    _vit('S', 32, name='ViT-S_32'),
    _vit('B', 8, name='ViT-B_8'),
    _vit('B', 16, name='ViT-B_16'),
    _vit('B', 32, name='ViT-B_32'),
    _vit('L', 16, name='ViT-L_16', dropout=0.1),
    _vit('L', 32, name='ViT-L_32'),
    _vit('H', 14, name='ViT-H_14', dropout=0.1),
    _vit('S', 16, name='ViT-S_16-gap-norep', classifier='gap'),
    _vit('B', 16, name='ViT-B_16-gap-norep', classifier='gap'),
    _vit('S', 32, name='ViT-S_32-gap-norep', classifier='gap'),
    _vit('B', 32, name='ViT-B_32-gap-norep', classifier='gap'),
    # Hybrids: the ResNet root downsamples 4x, then 2x per stage after the first (R+ViT-Ti_16 is /32 overall).
    _vit('Ti', 8, name='R+ViT-Ti_16', resnet=_resnet(())),
    _vit('B', 1, name='R50+ViT-B_16', dropout=0.1, resnet=_resnet((3, 4, 9))),
    _vit('B', 1, name='R26+ViT-B_32', resnet=_resnet((2, 2, 2, 2))),
    _vit('S', 1, name='R26+ViT-S_32', resnet=_resnet((2, 2, 2, 2))),
    _vit('L', 1, name='R50+ViT-L_32', dropout=0.1, resnet=_resnet((3, 4, 6, 3))),
    # Larger than published by the ViT paper ("Scaling Vision Transformers").
    _vit('g', 14, name='ViT-g_14'),
    # Tiny, for tests (google-research/vision_transformer's `testing` and `testing-unpooled`).
    _testing('testing', 'token'),
    _testing('testing-unpooled', 'unpooled'),
]
MODEL_CONFIGS: Dict[str, Dict[str, Any]] = {c['model_name']: c for c in _TABLE}

_VARIANT_RE = re.compile(r'^(?:ViT-)?(?P<size>[A-Za-z0-9]+)[/_](?P<patch>\d+)$')


def parse_variant(variant: str) -> Dict[str, Any]:
  """Config for a variant string such as 'B/16', 'So400m/14' or 'ViT-L/16' (token pooling, no dropout)."""
  m = _VARIANT_RE.match(variant)
  if not m or m.group('size') not in VARIANTS:
    raise ValueError(f'Unknown model {variant!r}: use a registered name ({", ".join(MODEL_CONFIGS)}) or '
                     f'"<size>/<patch>" with size one of {", ".join(VARIANTS)}.')
  return _vit(m.group('size'), int(m.group('patch')), name=variant)


def get_config(name: str) -> Dict[str, Any]:
  """A fresh copy of the config of a registered name or a variant string."""
  if name in MODEL_CONFIGS:
    return copy.deepcopy(MODEL_CONFIGS[name])
  return parse_variant(name)


def get_model(name: str, num_classes: Optional[int] = 1000, **overrides: Any) -> vit.VisionTransformer:
  """Builds a `VisionTransformer` by name; `transformer=` overrides merge into the transformer section."""
  cfg = get_config(name)
  if 'transformer' in overrides and cfg.get('transformer') is not None:
    cfg['transformer'] = {**cfg['transformer'], **dict(overrides.pop('transformer'))}
  cfg.update(overrides)
  return vit.VisionTransformer(num_classes=num_classes, **cfg)
