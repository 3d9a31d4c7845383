"""A `VisionTransformer` from an experiment's model section: the registered name plus the `config.model` overrides.

Upstream of both the training loop and the research tools, so a tool rebuilds a workdir's model without importing
the loop. Takes plain arguments (a name and a mapping), no experiment config.
"""
from typing import Any, Mapping, Optional

import jax.numpy as jnp

from vit_jax.models import registry
from vit_jax.models import vit

# `config.model` keys that override the transformer section of the registered config.
_TRANSFORMER_KEYS = ('num_layers', 'num_heads', 'mlp_dim', 'dropout_rate', 'attention_dropout_rate')
# `config.model` keys passed to `VisionTransformer` as they are.
_OPTION_KEYS = ('posemb', 'head_bias_init', 'head_zeroinit', 'stochastic_depth', 'attention_impl', 'scan',
                'remat_policy', 'num_registers', 'layer_scale_init', 'qk_norm', 'parallel_block', 'use_bias',
                'patch_dropout', 'mup_base_width', 'mlp_activation', 'norm_eps', 'pre_norm', 'fc_norm',
                'projection_dim', 'pixel_mean', 'pixel_std', 'distill_token')


def resnet_override(model: Mapping[str, Any]) -> Optional[tuple]:
  """`model['resnet_num_layers']` as a tuple, or None when unset (`--config.model.resnet_num_layers=None` parses
  as `(None,)`)."""
  stages = model.get('resnet_num_layers')
  if stages is None or all(s is None for s in stages):
    return None
  return tuple(int(s) for s in stages)


def build_model(model_name: str, model: Mapping[str, Any], num_classes: int) -> vit.VisionTransformer:
  """The registered `model_name` with the overrides of `model` (the `config.model` section) applied."""
  cfg = registry.get_config(model_name)
  if model.get('patch_size'):
    cfg['patches'] = {'size': (model['patch_size'], model['patch_size'])}
  if model.get('hidden_size'):
    cfg['hidden_size'] = model['hidden_size']
  for key in _TRANSFORMER_KEYS:
    if model.get(key) is not None:
      cfg['transformer'][key] = model[key]
  if model.get('classifier'):
    cfg['classifier'] = model['classifier']
  if model.get('representation_size') is not None:
    cfg['representation_size'] = model['representation_size'] or None
  stages = resnet_override(model)
  if stages is not None:
    cfg['resnet'] = {**cfg.get('resnet', {'width_factor': 1}), 'num_layers': stages}
  # Options absent from `model` (a workdir written by an older version) keep the module's defaults.
  options = {k: model[k] for k in _OPTION_KEYS if k in model}
  for key in ('pixel_mean', 'pixel_std'):  # JSON gives lists; the module's fields are tuples
    if options.get(key) is not None:
      options[key] = tuple(float(v) for v in options[key])
  if 'dtype' in model:
    options['dtype'] = jnp.dtype(model['dtype'])
  return vit.VisionTransformer(num_classes=num_classes, **cfg, **options)
