"""`MODEL_CONFIGS` as ml_collections ConfigDicts, for code written against google-research/vision_transformer.

A thin view over `vit_jax.models.registry` (the single source of truth); experiment configs live in `configs/`.
"""
import ml_collections

from vit_jax.models import registry

MODEL_CONFIGS = {name: ml_collections.ConfigDict(cfg).lock() for name, cfg in registry.MODEL_CONFIGS.items()}
# AugReg file names drop 'ViT-' and use '_' for '+', e.g. 'R26_S_32'.
AUGREG_CONFIGS = {name.replace('ViT-', '').replace('+', '_'): cfg for name, cfg in MODEL_CONFIGS.items()
                  if name not in ('testing', 'ViT-L_32', 'R50+ViT-B_16', 'ViT-H_14', 'ViT-g_14')}
