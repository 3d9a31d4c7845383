"""Our models out: a folder that timm (`create_model('local-dir:FOLDER', pretrained=True)`) or transformers
(`AutoModel.from_pretrained(FOLDER)`) loads as it is, computing our logits on their usual normalised pixels."""
import json
import math
import os
from typing import Any, Dict, Mapping

import numpy as np
from etils import epath

from vit_jax.interop import hf
from vit_jax.interop import timm as timm_map
from vit_jax.models import vit

FORMATS = ('timm', 'hf')
# The timm architecture whose factory takes every kwarg we write (all are overridden by model_args).
TIMM_ARCH = 'vit_base_patch16_224'


def describe(model: vit.VisionTransformer, params: Mapping[str, Any]) -> Dict[str, Any]:
  """Our spec (as `timm.describe` gives it) of a model and its params; refuses what timm / HF cannot compute."""
  missing = [what for what, bad in (
      ('a ResNet stem (hybrid)', model.resnet is not None), ('fixed sin-cos position embeddings',
                                                              model.posemb != 'learn'),
      ('parallel blocks', model.parallel_block), ("muP's forward multipliers", bool(model.mup_base_width)),
      (f'classifier={model.classifier!r}', model.classifier not in ('token', 'gap', 'map')),
      ('non-square patches', model.patches['size'][0] != model.patches['size'][1])) if bad]
  if missing:
    raise ValueError(f'This model has {", ".join(missing)}, which timm and transformers models lack; export it with '
                     '--format=npz.')
  prefix = int(model.classifier == 'token') + model.num_registers
  tokens = np.shape(params['Transformer']['posembed_input']['pos_embedding'])[1] - prefix
  side, patch = math.isqrt(tokens), int(model.patches['size'][0])
  if side * side != tokens:
    raise ValueError(f'{tokens} position embeddings are not a square grid; timm and transformers take square ones.')
  spec = {
      'patches': {'size': (patch, patch)}, 'hidden_size': model.hidden_size, 'transformer': dict(model.transformer),
      'classifier': model.classifier, 'representation_size': model.representation_size,
      'num_classes': int(np.shape(params['head']['kernel'])[-1]) if 'head' in params else 0,
      'num_registers': model.num_registers, 'layer_scale_init': model.layer_scale_init, 'qk_norm': model.qk_norm,
      'use_bias': model.use_bias, 'mlp_activation': model.mlp_activation, 'norm_eps': model.norm_eps,
      'pre_norm': model.pre_norm, 'fc_norm': model.fc_norm, 'image_size': (side * patch, side * patch),
      'no_embed_class': False,
  }
  if model.projection_dim:
    spec['projection_dim'] = model.projection_dim
  return spec


def _stats(model: vit.VisionTransformer) -> Dict[str, Any]:
  mean = tuple(model.pixel_mean) if model.pixel_mean is not None else (0.5,) * 3
  std = tuple(model.pixel_std) if model.pixel_std is not None else (0.5,) * 3
  return {'mean': list(mean), 'std': list(std)}


def _write_safetensors(arrays: Mapping[str, np.ndarray], path: epath.Path) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}, os.fspath(path))


def save(model: vit.VisionTransformer, params: Mapping[str, Any], folder: epath.PathLike, fmt: str) -> epath.Path:
  """Writes `model.safetensors` and `config.json` (plus `preprocessor_config.json` for hf) into `folder`."""
  if fmt not in FORMATS:
    raise ValueError(f'Unknown format {fmt!r}; choose one of {", ".join(FORMATS)} (or npz).')
  folder = epath.Path(folder)
  spec = describe(model, params)
  stats = _stats(model)
  h, w = spec['image_size']
  if fmt == 'timm':
    sd, kwargs = timm_map.from_params(params, spec)
    config = {
        'architecture': TIMM_ARCH, 'num_classes': kwargs['num_classes'], 'num_features': spec['hidden_size'],
        'global_pool': kwargs['global_pool'], 'model_args': kwargs,
        'pretrained_cfg': {'input_size': [3, h, w], 'fixed_input_size': True, 'interpolation': 'bicubic',
                           'crop_pct': 1.0, 'crop_mode': 'center', **stats, 'num_classes': kwargs['num_classes'],
                           'pool_size': None, 'first_conv': 'patch_embed.proj', 'classifier': 'head'},
    }
    files = {'config.json': config}
  else:
    # HF's DINOv2 has no position embeddings for registers: fold theirs into the tokens (a constant each).
    spec = {**spec, 'no_embed_class': bool(spec['num_registers'])}
    sd, _ = timm_map.from_params(params, spec)
    sd, config = hf.from_timm(sd, spec)
    processor = {'do_resize': True, 'size': {'height': h, 'width': w}, 'do_normalize': True, 'do_rescale': True,
                 'rescale_factor': 1 / 255, 'resample': 3, 'image_mean': stats['mean'], 'image_std': stats['std'],
                 'image_processor_type': 'ViTImageProcessor'}
    files = {'config.json': config, 'preprocessor_config.json': processor}
  folder.mkdir(parents=True, exist_ok=True)
  _write_safetensors(sd, folder / 'model.safetensors')
  for name, content in files.items():
    (folder / name).write_text(json.dumps(content, indent=2))
  return folder
