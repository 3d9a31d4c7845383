"""google-research/vision_transformer's model configs as ml_collections ConfigDicts: `MODEL_CONFIGS`,
`AUGREG_CONFIGS` and its `get_*_config()` functions, with the same names, keys and values.

A thin view over `vit_jax.models.registry` (the single source of truth); experiment configs live in `configs/`.
Each `get_*_config()` returns a fresh unlocked ConfigDict (`MODEL_CONFIGS` holds locked ones), as there. The
reference's MLP-Mixer and LiT configs are absent: vit_jax has no such models.
"""
from typing import NoReturn

import ml_collections

from vit_jax.models import registry


def _config(name: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(registry.get_config(name))


def get_testing_config() -> ml_collections.ConfigDict:
  """The tiny `testing` model (hidden size 10, one layer)."""
  return _config('testing')


def get_testing_unpooled_config() -> ml_collections.ConfigDict:
  """`testing` with classifier='unpooled' (no class token, one output per patch)."""
  return _config('testing-unpooled')


def get_ti16_config() -> ml_collections.ConfigDict:
  """ViT-Ti/16."""
  return _config('ViT-Ti_16')


def get_s16_config() -> ml_collections.ConfigDict:
  """ViT-S/16."""
  return _config('ViT-S_16')


def get_b16_config() -> ml_collections.ConfigDict:
  """ViT-B/16."""
  return _config('ViT-B_16')


def get_l16_config() -> ml_collections.ConfigDict:
  """ViT-L/16."""
  return _config('ViT-L_16')


def get_h14_config() -> ml_collections.ConfigDict:
  """ViT-H/14."""
  return _config('ViT-H_14')


def get_s16_gap_norep_config() -> ml_collections.ConfigDict:
  """ViT-S/16 with classifier='gap' and no representation layer."""
  return _config('ViT-S_16-gap-norep')


def get_b16_gap_norep_config() -> ml_collections.ConfigDict:
  """ViT-B/16 with classifier='gap' and no representation layer."""
  return _config('ViT-B_16-gap-norep')


def get_b8_config() -> ml_collections.ConfigDict:
  """ViT-B/8."""
  return _config('ViT-B_8')


def get_s32_config() -> ml_collections.ConfigDict:
  """ViT-S/32."""
  return _config('ViT-S_32')


def get_b32_config() -> ml_collections.ConfigDict:
  """ViT-B/32."""
  return _config('ViT-B_32')


def get_l32_config() -> ml_collections.ConfigDict:
  """ViT-L/32."""
  return _config('ViT-L_32')


def get_s32_gap_norep_config() -> ml_collections.ConfigDict:
  """ViT-S/32 with classifier='gap' and no representation layer."""
  return _config('ViT-S_32-gap-norep')


def get_b32_gap_norep_config() -> ml_collections.ConfigDict:
  """ViT-B/32 with classifier='gap' and no representation layer."""
  return _config('ViT-B_32-gap-norep')


def get_r_ti16_config() -> ml_collections.ConfigDict:
  """ResNet root + ViT-Ti/16 (8x8 patches after the 4x root: /32 overall, as published)."""
  return _config('R+ViT-Ti_16')


def get_r50_b16_config() -> ml_collections.ConfigDict:
  """ResNet-50 (3, 4, 9) + ViT-B/16."""
  return _config('R50+ViT-B_16')


def get_r26_b32_config() -> ml_collections.ConfigDict:
  """ResNet-26 + ViT-B/32."""
  return _config('R26+ViT-B_32')


def get_r26_s32_config() -> ml_collections.ConfigDict:
  """ResNet-26 + ViT-S/32."""
  return _config('R26+ViT-S_32')


def get_r50_l32_config() -> ml_collections.ConfigDict:
  """ResNet-50 + ViT-L/32."""
  return _config('R50+ViT-L_32')


def __getattr__(name: str) -> NoReturn:
  if name.startswith(('get_mixer_', 'get_lit_')):
    raise AttributeError(f'vit_jax.configs.models has no {name}: vit_jax has no MLP-Mixer or LiT models, only ViTs '
                         'and hybrids; use google-research/vision_transformer for those.')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


_FUNCTIONS = (get_testing_config, get_testing_unpooled_config, get_ti16_config, get_s16_config, get_b16_config,
              get_l16_config, get_h14_config, get_s16_gap_norep_config, get_b16_gap_norep_config, get_b8_config,
              get_s32_config, get_b32_config, get_l32_config, get_s32_gap_norep_config, get_b32_gap_norep_config,
              get_r_ti16_config, get_r50_b16_config, get_r26_b32_config, get_r26_s32_config, get_r50_l32_config)
# The reference's names only (its models_test wants each in its parameter table); ViT-g_14 and the variant
# strings are `vit_jax.models.get_model`'s.
MODEL_CONFIGS = {cfg.model_name: cfg.lock() for cfg in (f() for f in _FUNCTIONS)}
# AugReg file names drop 'ViT-' and use '_' for '+', e.g. 'R26_S_32'.
AUGREG_CONFIGS = {name.replace('ViT-', '').replace('+', '_'): cfg for name, cfg in MODEL_CONFIGS.items()
                  if not name.startswith('testing') and name not in ('ViT-L_32', 'R50+ViT-B_16', 'ViT-H_14')}
