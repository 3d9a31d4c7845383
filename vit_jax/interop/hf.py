"""Hugging Face `transformers` image towers (ViT, DINOv2 with and without registers, SigLIP, CLIP) <-> timm names.

An HF folder's `config.json` names the family (`model_type`) and the numbers a state dict does not hold (heads,
activation, LayerNorm epsilon); its keys are renamed onto timm's (`vit_jax.interop.timm`), which map onto our params.
Export writes the `vit` model type (`ViTModel` / `ViTForImageClassification`), and `dinov2` for LayerScale models.
"""
import logging
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from vit_jax.interop import timm as timm_map

Arrays = Dict[str, np.ndarray]

# model_type -> (family tag for timm's name hints, default eval mean/std).
FAMILIES = {
    'vit': ('vit', timm_map.HALF), 'dinov2': ('dinov2', timm_map.IMAGENET),
    'dinov2_with_registers': ('dinov2', timm_map.IMAGENET), 'siglip_vision_model': ('siglip', timm_map.HALF),
    'siglip': ('siglip', timm_map.HALF), 'siglip2_vision_model': ('siglip', timm_map.HALF),
    'clip_vision_model': ('clip', timm_map.OPENAI_CLIP), 'clip': ('clip', timm_map.OPENAI_CLIP),
}
ACTIVATIONS = {'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu_new': 'gelu_tanh', 'gelu_fast': 'gelu_tanh',
               'quick_gelu': 'quick_gelu', 'silu': 'swiglu', 'swiglu': 'swiglu'}
# (pattern, replacement) over HF keys (prefixes already stripped), in order; None drops the key.
_RENAMES = [
    (r'^embeddings\.cls_token$', 'cls_token'), (r'^embeddings\.register_tokens$', 'reg_token'),
    (r'^embeddings\.mask_token$', None), (r'^embeddings\.position_ids$', None),
    (r'^embeddings\.position_embeddings$', 'pos_embed'), (r'^embeddings\.position_embedding\.weight$', 'pos_embed'),
    (r'^embeddings\.class_embedding$', 'cls_token'),
    (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
    (r'^embeddings\.patch_embedding\.', 'patch_embed.proj.'),
    (r'^pre_layrnorm\.', 'norm_pre.'),
    (r'^encoder\.layers?\.(\d+)\.attention\.attention\.(query|key|value)\.', r'blocks.\1.attn.\2.'),
    (r'^encoder\.layers?\.(\d+)\.self_attn\.(q|k|v)_proj\.', r'blocks.\1.attn.\2.'),
    (r'^encoder\.layers?\.(\d+)\.attention\.output\.dense\.', r'blocks.\1.attn.proj.'),
    (r'^encoder\.layers?\.(\d+)\.self_attn\.out_proj\.', r'blocks.\1.attn.proj.'),
    (r'^encoder\.layers?\.(\d+)\.intermediate\.dense\.', r'blocks.\1.mlp.fc1.'),
    (r'^encoder\.layers?\.(\d+)\.output\.dense\.', r'blocks.\1.mlp.fc2.'),
    (r'^encoder\.layers?\.(\d+)\.mlp\.weights_in\.', r'blocks.\1.mlp.fc1.'),
    (r'^encoder\.layers?\.(\d+)\.mlp\.weights_out\.', r'blocks.\1.mlp.fc2.'),
    (r'^encoder\.layers?\.(\d+)\.mlp\.(fc1|fc2)\.', r'blocks.\1.mlp.\2.'),
    (r'^encoder\.layers?\.(\d+)\.(layernorm_before|layer_norm1|norm1)\.', r'blocks.\1.norm1.'),
    (r'^encoder\.layers?\.(\d+)\.(layernorm_after|layer_norm2|norm2)\.', r'blocks.\1.norm2.'),
    (r'^encoder\.layers?\.(\d+)\.layer_scale(1|2)\.lambda1$', r'blocks.\1.ls\2.gamma'),
    (r'^(layernorm|post_layernorm)\.', 'norm.'),
    (r'^pooler\.dense\.', 'pre_logits.fc.'),
    (r'^head\.probe$', 'attn_pool.latent'), (r'^head\.attention\.out_proj\.', 'attn_pool.proj.'),
    (r'^head\.layernorm\.', 'attn_pool.norm.'), (r'^head\.mlp\.', 'attn_pool.mlp.'),
    (r'^head\.attention\.in_proj_(weight|bias)$', r'attn_pool.in_proj.\1'),
    (r'^visual_projection\.weight$', 'projection.weight'), (r'^classifier\.', 'head.'),
]
_PREFIXES = ('vit.', 'dinov2.', 'dinov2_with_registers.', 'vision_model.', 'model.vision_model.')


def vision_config(config: Mapping[str, Any]) -> Dict[str, Any]:
  """The image tower's config (a full SigLIP / CLIP config nests it under vision_config)."""
  if config.get('model_type') in ('siglip', 'clip', 'siglip2'):
    return {**config['vision_config'], 'model_type': config['model_type'] + '_vision_model'}
  return dict(config)


def family(config: Mapping[str, Any]) -> str:
  model_type = config.get('model_type')
  if model_type not in FAMILIES:
    raise timm_map.UnsupportedError(f'transformers model_type={model_type!r} is not a family vit_jax reads '
                                    f'({", ".join(sorted(FAMILIES))}).')
  return FAMILIES[model_type][0]


def to_timm(sd: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> Tuple[Arrays, Dict[str, Any]]:
  """(timm-named state dict, model_args for `timm.describe`) from an HF state dict and its (vision) config."""
  cfg = vision_config(config)
  fam = family(cfg)
  out: Arrays = {}
  for key, value in sd.items():
    if key.startswith(('text_model.', 'text_projection', 'logit_scale', 'logit_bias')):
      continue  # the text tower of a full CLIP / SigLIP model
    for p in _PREFIXES:
      if key.startswith(p):
        key = key[len(p):]
        break
    new = key
    for pattern, repl in _RENAMES:
      if re.search(pattern, key):
        new = None if repl is None else re.sub(pattern, repl, key)
        break
    else:
      raise timm_map.UnsupportedError(f'{fam}: the key {key} is not one vit_jax knows for transformers '
                                      f'{cfg.get("model_type")}; it cannot be loaded.')
    if new is not None:
      out[new] = np.asarray(value, np.float32)
  if fam == 'dinov2' and 'head.weight' in out and out['head.weight'].shape[1] == 2 * out['cls_token'].shape[-1]:
    logging.warning('Dinov2ForImageClassification: its head reads [class token, mean patch token]; the backbone '
                    'is loaded, without the head.')
    out.pop('head.weight'), out.pop('head.bias', None)
  if 'head.weight' in out and fam == 'siglip':
    raise timm_map.UnsupportedError('SiglipForImageClassification pools by a plain mean beside its MAP head; load '
                                    'the SiglipVisionModel tower instead.')
  for b in sorted({m.group(1) for k in out if (m := re.match(r'(blocks\.\d+\.attn\.)query\.weight', k))}):
    for part in ('weight', 'bias'):
      names = [f'{b}{n}.{part}' for n in ('query', 'key', 'value')]
      if names[0] in out:
        out[f'{b}qkv.{part}'] = np.concatenate([out.pop(n) for n in names])
  for b in sorted({m.group(1) for k in out if (m := re.match(r'(blocks\.\d+\.attn\.)q\.weight', k))}):
    for part in ('weight', 'bias'):
      names = [f'{b}{n}.{part}' for n in 'qkv']
      if names[0] in out:
        out[f'{b}qkv.{part}'] = np.concatenate([out.pop(n) for n in names])
  for part in ('weight', 'bias'):
    if f'attn_pool.in_proj.{part}' in out:
      q, k, v = np.split(out.pop(f'attn_pool.in_proj.{part}'), 3)
      out[f'attn_pool.q.{part}'], out[f'attn_pool.kv.{part}'] = q, np.concatenate([k, v])
  if out['pos_embed'].ndim == 2:
    out['pos_embed'] = out['pos_embed'][None]
  if out['cls_token'].ndim == 1 if 'cls_token' in out else False:
    out['cls_token'] = out['cls_token'].reshape(1, 1, -1)
  if 'reg_token' in out:  # HF adds no position embedding to the registers: zero slots after the class token
    pe = out['pos_embed']
    out['pos_embed'] = np.concatenate([pe[:, :1], np.zeros_like(out['reg_token']), pe[:, 1:]], axis=1)
  act = cfg.get('hidden_act', 'gelu')
  if cfg.get('use_swiglu_ffn'):
    act = 'swiglu'
  if act not in ACTIVATIONS:
    raise timm_map.UnsupportedError(f'{fam}: hidden_act={act!r} is not a vit_jax mlp_activation.')
  args = {'num_heads': cfg['num_attention_heads'], 'act_layer': ACTIVATIONS[act],
          'norm_eps': float(cfg.get('layer_norm_eps', 1e-6)), 'no_embed_class': False}
  return out, args


def default_preprocess(config: Mapping[str, Any], processor: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """Eval preprocessing from `preprocessor_config.json` when present, else the family's statistics."""
  mean, std = FAMILIES[vision_config(config)['model_type']][1]
  out = {'mean': mean, 'std': std, 'crop_pct': 1.0, 'interpolation': 'bicubic'}
  if processor:
    out['mean'] = tuple(processor.get('image_mean', mean))
    out['std'] = tuple(processor.get('image_std', std))
    out['interpolation'] = {2: 'bilinear', 3: 'bicubic'}.get(processor.get('resample'), 'bicubic')
    size, crop = processor.get('size') or {}, processor.get('crop_size') or {}
    if processor.get('do_center_crop') and isinstance(size, dict) and 'shortest_edge' in size and crop:
      out['crop_pct'] = crop.get('height', size['shortest_edge']) / size['shortest_edge']
  return out


def antialias(config: Mapping[str, Any]) -> bool:
  """Whether the model resamples its position embeddings with antialiasing (DINOv2 with registers does)."""
  return vision_config(config)['model_type'] == 'dinov2_with_registers'


def from_timm(sd: Mapping[str, np.ndarray], spec: Mapping[str, Any]) -> Tuple[Arrays, Dict[str, Any]]:
  """(HF state dict, HF config.json) of a timm-named state dict: `vit` (plain ViT) or `dinov2` (LayerScale,
  registers, SwiGLU), both with a class token; other layouts are refused in one line."""
  if spec['classifier'] != 'token' or spec.get('pre_norm') or spec.get('fc_norm') or spec.get('qk_norm'):
    raise ValueError('transformers\' ViT and DINOv2 take class-token models without pre_norm, fc_norm or qk_norm; '
                     'export this one with --format=timm or npz.')
  if not spec.get('use_bias', True):
    raise ValueError('transformers\' ViT and DINOv2 keep the projection biases; export with --format=timm or npz.')
  dinov2 = spec.get('layer_scale_init') is not None or spec.get('num_registers')
  if dinov2 and ('pre_logits.fc.weight' in sd or 'head.weight' in sd):
    raise ValueError('transformers\' DINOv2 classifier reads [class token, mean patch]; export the backbone (a model '
                     'without head) or use --format=timm.')
  if spec['mlp_activation'] == 'swiglu' or (dinov2 and spec['mlp_activation'] != 'gelu'):
    raise ValueError(f'vit_jax exports mlp_activation={spec["mlp_activation"]!r} to transformers\' ViT (any but '
                     'swiglu) and DINOv2 (gelu) only; use --format=timm or npz.')
  tr = spec['transformer']
  pre = '' if dinov2 else 'vit.'
  out: Arrays = {}
  for key, v in sd.items():
    if m := re.match(r'blocks\.(\d+)\.(.*)$', key):
      i, rest = m.groups()
      layer = f'{pre}encoder.layer.{i}.'
      if rest.startswith('attn.qkv.'):
        for name, part in zip(('query', 'key', 'value'), np.split(v, 3)):
          out[f'{layer}attention.attention.{name}.{rest.split(".")[-1]}'] = part
        continue
      renames = [('attn.proj.', 'attention.output.dense.'), ('ls1.gamma', 'layer_scale1.lambda1'),
                 ('ls2.gamma', 'layer_scale2.lambda1')]
      if not dinov2:  # DINOv2 keeps timm's norm1 / norm2 / mlp.fc1 / mlp.fc2
        renames += [('norm1.', 'layernorm_before.'), ('norm2.', 'layernorm_after.'),
                    ('mlp.fc1.', 'intermediate.dense.'), ('mlp.fc2.', 'output.dense.')]
      for a, b in renames:
        if rest.startswith(a):
          rest = b + rest[len(a):]
          break
      out[layer + rest] = v
      continue
    if key == 'pos_embed' and spec.get('no_embed_class'):  # HF keeps a class-token slot (zero: it is folded)
      v = np.concatenate([np.zeros_like(v[:, :1]), v], axis=1)
    name = {'cls_token': 'embeddings.cls_token', 'reg_token': 'embeddings.register_tokens',
            'pos_embed': 'embeddings.position_embeddings', 'patch_embed.proj.weight':
            'embeddings.patch_embeddings.projection.weight', 'patch_embed.proj.bias':
            'embeddings.patch_embeddings.projection.bias', 'norm.weight': 'layernorm.weight',
            'norm.bias': 'layernorm.bias', 'pre_logits.fc.weight': 'pooler.dense.weight',
            'pre_logits.fc.bias': 'pooler.dense.bias'}.get(key)
    if name is not None:
      out[pre + name] = v
    elif key.startswith('head.'):
      out['classifier.' + key[5:]] = v
    else:
      raise ValueError(f'{key} has no place in a transformers ViT / DINOv2; export with --format=timm or npz.')
  if dinov2:
    out['embeddings.mask_token'] = np.zeros((1, spec['hidden_size']), np.float32)
  h, w = spec['image_size']
  act = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh', 'quick_gelu': 'quick_gelu', 'swiglu': 'silu'}
  num_classes = int(spec.get('num_classes') or 0)
  config = {
      'model_type': 'dinov2_with_registers' if spec.get('num_registers') else 'dinov2' if dinov2 else 'vit',
      'hidden_size': spec['hidden_size'], 'num_hidden_layers': tr['num_layers'],
      'num_attention_heads': tr['num_heads'], 'image_size': h, 'patch_size': spec['patches']['size'][0],
      'num_channels': 3, 'qkv_bias': True, 'layer_norm_eps': spec.get('norm_eps', 1e-6),
      'hidden_act': act[spec['mlp_activation']], 'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0,
  }
  if h != w:
    raise ValueError(f'transformers\' ViT configs are square; the model is {h}x{w}.')
  if dinov2:
    if tr['mlp_dim'] % spec['hidden_size']:  # transformers' Dinov2Config types mlp_ratio as an int
      raise ValueError(f'transformers\' DINOv2 takes an integer mlp_dim / hidden_size, not {tr["mlp_dim"]} / '
                       f'{spec["hidden_size"]}; export with --format=timm or npz.')
    config.update(mlp_ratio=tr['mlp_dim'] // spec['hidden_size'], layerscale_value=1.0,
                  use_swiglu_ffn=spec['mlp_activation'] == 'swiglu', drop_path_rate=0.0)
    config['architectures'] = ['Dinov2WithRegistersModel' if spec.get('num_registers') else 'Dinov2Model']
    if spec.get('num_registers'):
      config['num_register_tokens'] = spec['num_registers']
  else:
    config['intermediate_size'] = tr['mlp_dim']
    if 'pre_logits.fc.weight' in sd:
      if num_classes:
        raise ValueError('transformers\' ViTForImageClassification has no pre-logits layer; export a model with '
                         'representation_size=None or --format=npz.')
      config.update(architectures=['ViTModel'], pooler_output_size=spec['representation_size'], pooler_act='tanh')
    else:
      config['architectures'] = ['ViTForImageClassification' if num_classes else 'ViTModel']
    if num_classes:
      config['id2label'] = {str(i): f'LABEL_{i}' for i in range(num_classes)}
      config['label2id'] = {f'LABEL_{i}': i for i in range(num_classes)}
  return out, config
