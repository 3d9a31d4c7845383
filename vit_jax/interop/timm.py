"""timm's VisionTransformer state dicts <-> our params, and the model description read from one.

The mapping is by key and shape, so one table covers the families timm writes with its `VisionTransformer` (ViT /
AugReg, DeiT, DeiT III, DINOv2 with and without registers, SigLIP towers, CLIP towers, GAP models with fc_norm).
What a state dict cannot tell (the number of heads of a non-standard width, the activation, LayerNorm's epsilon,
whether position embeddings cover the class token) comes from the architecture name and timm's `model_args`.
timm's names are also the common vocabulary of `vit_jax.interop.hf`, which renames HF keys onto them.
"""
import math
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from flax import traverse_util

Arrays = Dict[str, np.ndarray]

# Width -> heads of the published sizes (Ti, S, M, B, L, H, g, DINOv2-g, So400m, betwixt).
HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1536: 24,
                  1664: 16}
# Key fragment -> what we cannot represent (refused in one line).
UNSUPPORTED = (
    ('relative_position', 'relative position bias'), ('rel_pos', 'relative position bias'),
    ('rope', 'rotary position embeddings (RoPE)'), ('freqs', 'rotary position embeddings (RoPE)'),
    ('dist_token', "DeiT's distillation token"), ('head_dist', "DeiT's distillation head"),
    ('q_bias', 'separate q/v biases (BEiT)'), ('in_proj', 'parallel blocks in timm layout'),
    ('mlp.norm', 'a normalised MLP hidden layer'), ('attn.norm', 'a normalised attention output'),
    ('patch_embed.norm', 'a normalised patch embedding'), ('attn_pool.q_norm', 'a normalised attention pool'),
)
UNSUPPORTED_ARCHS = (('eva', 'rotary position embeddings (RoPE)'), ('beit', 'relative position bias'),
                     ('rope', 'rotary position embeddings (RoPE)'), ('naflex', 'NaFlex variable patches'))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class UnsupportedError(ValueError):
  """An architecture or key we have no model option for."""


def _t(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x).T)


def _square(n: int) -> Optional[int]:
  side = math.isqrt(n)
  return side if side * side == n else None


def check_supported(sd: Mapping[str, Any], arch: str = '') -> None:
  """Raises UnsupportedError naming what we lack, for archs or keys outside our model."""
  for frag, what in UNSUPPORTED_ARCHS:
    if frag in arch.lower():
      raise UnsupportedError(f'{arch}: {what} is not a vit_jax model option; it cannot be loaded.')
  for key in sd:
    for frag, what in UNSUPPORTED:
      if frag in key:
        raise UnsupportedError(f'{arch or "checkpoint"}: {key} needs {what}, which is not a vit_jax model '
                               'option; it cannot be loaded.')


def default_preprocess(arch: str) -> Dict[str, Any]:
  """Eval preprocessing of a family when the checkpoint does not record it (timm's pretrained_cfg defaults)."""
  a = arch.lower()
  if 'clip' in a and 'siglip' not in a:
    mean_std, crop = OPENAI_CLIP, 1.0
  elif 'siglip' in a:
    mean_std, crop = HALF, 1.0
  elif 'dinov2' in a or 'deit3' in a:
    mean_std, crop = IMAGENET, 1.0
  elif 'deit' in a:
    mean_std, crop = IMAGENET, 0.875
  else:  # original ViT, AugReg
    mean_std, crop = HALF, 0.9
  return {'mean': mean_std[0], 'std': mean_std[1], 'crop_pct': crop, 'interpolation': 'bicubic'}


def describe(sd: Mapping[str, np.ndarray], arch: str = '', model_args: Optional[Mapping[str, Any]] = None
             ) -> Dict[str, Any]:
  """Our model description from a timm state dict: `VisionTransformer` kwargs plus 'image_size' and
  'no_embed_class' (position embeddings without the prefix tokens' slots)."""
  check_supported(sd, arch)
  args = dict(model_args or {})
  a = arch.lower()
  if 'patch_embed.proj.weight' not in sd or 'blocks.0.attn.qkv.weight' not in sd:
    raise UnsupportedError(f'{arch or "checkpoint"}: not a timm VisionTransformer state dict (no '
                           'patch_embed.proj.weight / blocks.0.attn.qkv.weight; first keys: '
                           f'{sorted(sd)[:4]}).')
  width, _, ph, pw = sd['patch_embed.proj.weight'].shape
  depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r'blocks\.(\d+)\.', k)))
  heads = int(args.get('num_heads') or HEADS_BY_WIDTH.get(width) or max(1, width // 64))
  fc1, fc2 = sd.get('blocks.0.mlp.fc1.weight'), sd['blocks.0.mlp.fc2.weight']
  mlp_dim = fc2.shape[1]
  act = {'gelu_tanh': 'gelu_tanh', 'gelu': 'gelu', 'quick_gelu': 'quick_gelu'}.get(
      str(args.get('act_layer')), 'quick_gelu' if 'quickgelu' in a else 'gelu')  # timm's SigLIP too: exact GELU
  if 'blocks.0.mlp.fc1_g.weight' in sd or (fc1 is not None and fc1.shape[0] == 2 * mlp_dim):
    act = 'swiglu'
  num_cls = int('cls_token' in sd)
  num_reg = sd['reg_token'].shape[1] if 'reg_token' in sd else 0
  prefix = num_cls + num_reg
  if 'pos_embed' not in sd:
    raise UnsupportedError(f'{arch or "checkpoint"}: no pos_embed (absolute position embeddings) in the state '
                           'dict; other position encodings are not a vit_jax model option.')
  n_pos = sd['pos_embed'].shape[1]
  if 'no_embed_class' in args:
    no_embed_class = bool(args['no_embed_class'])
  elif prefix and _square(n_pos) and _square(n_pos - prefix):
    no_embed_class = 'deit3' in a or bool(num_reg and ('dinov2' in a or 'gap' in a))
  else:
    no_embed_class = bool(prefix and _square(n_pos))
  grid = _square(n_pos if no_embed_class else n_pos - prefix)
  img = args.get('img_size')
  if img is not None:
    img = (img, img) if isinstance(img, int) else tuple(img)
    grid_hw = (img[0] // ph, img[1] // pw)
  elif grid is None:
    raise UnsupportedError(f'{arch or "checkpoint"}: {n_pos} position embeddings are not a square grid; pass '
                           "model_args={'img_size': (h, w)}.")
  else:
    grid_hw = (grid, grid)
  if 'attn_pool.latent' in sd:
    if sd['attn_pool.latent'].shape[1] != 1:
      raise UnsupportedError(f'{arch}: an attention pool with {sd["attn_pool.latent"].shape[1]} latents is not a '
                             'vit_jax model option (one probe).')
    classifier = 'map'
  elif num_cls and args.get('global_pool', 'token') == 'token':
    classifier = 'token'
  elif num_cls:
    raise UnsupportedError(f'{arch}: global_pool={args.get("global_pool")!r} beside a class token is not a vit_jax '
                           'model option (gap models have no class token).')
  else:
    classifier = 'gap'
  spec = {
      'patches': {'size': (ph, pw)}, 'hidden_size': width,
      'transformer': {'num_layers': depth, 'num_heads': heads, 'mlp_dim': mlp_dim, 'dropout_rate': 0.,
                      'attention_dropout_rate': 0.},
      'classifier': classifier, 'representation_size': None,
      'num_classes': sd['head.weight'].shape[0] if 'head.weight' in sd else 0,
      'num_registers': num_reg,
      'layer_scale_init': 1e-5 if 'blocks.0.ls1.gamma' in sd else None,
      'qk_norm': 'blocks.0.attn.q_norm.weight' in sd,
      'use_bias': 'blocks.0.attn.qkv.bias' in sd,
      'mlp_activation': act,
      'norm_eps': float(args.get('norm_eps', 1e-5 if 'clip' in a and 'siglip' not in a else 1e-6)),
      'pre_norm': 'norm_pre.weight' in sd,
      'fc_norm': 'fc_norm.weight' in sd,
      'image_size': (grid_hw[0] * ph, grid_hw[1] * pw),
      'no_embed_class': no_embed_class,
  }
  if not spec['use_bias'] and 'blocks.0.mlp.fc2.bias' in sd:
    raise UnsupportedError(f'{arch}: qkv without bias but MLP with bias is not a vit_jax model option (use_bias '
                           'covers both).')
  if 'pre_logits.fc.weight' in sd:
    spec['representation_size'] = sd['pre_logits.fc.weight'].shape[0]
  if 'projection.weight' in sd:
    spec['projection_dim'] = sd['projection.weight'].shape[0]
  return spec


def _split_heads_in(w: np.ndarray, heads: int) -> np.ndarray:
  """torch Linear (out, in) -> our (in, heads, head_dim) kernel."""
  return _t(w).reshape(w.shape[1], heads, -1)


def _attention(get, prefix: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, qkv_b: Optional[np.ndarray],
               heads: int) -> Arrays:
  out = {}
  d = q.shape[1]
  for name, w, i in (('query', q, 0), ('key', k, 1), ('value', v, 2)):
    out[f'{name}/kernel'] = _split_heads_in(w, heads)
    if qkv_b is not None:
      out[f'{name}/bias'] = qkv_b[i * d:(i + 1) * d].reshape(heads, -1)
  proj = get(prefix + 'proj.weight')
  out['out/kernel'] = _t(proj).reshape(heads, -1, proj.shape[0])
  if (b := get(prefix + 'proj.bias', None)) is not None:
    out['out/bias'] = b
  return out


def _mlp(get, prefix: str) -> Arrays:
  out = {}
  if (g := get(prefix + 'fc1_g.weight', None)) is not None:  # timm's unpacked SwiGLU: act(fc1_g x) * fc1_x x
    out['Dense_0/kernel'] = _t(np.concatenate([g, get(prefix + 'fc1_x.weight')]))
    if (bg := get(prefix + 'fc1_g.bias', None)) is not None:
      out['Dense_0/bias'] = np.concatenate([bg, get(prefix + 'fc1_x.bias')])
  else:
    out['Dense_0/kernel'] = _t(get(prefix + 'fc1.weight'))
    if (b := get(prefix + 'fc1.bias', None)) is not None:
      out['Dense_0/bias'] = b
  out['Dense_1/kernel'] = _t(get(prefix + 'fc2.weight'))
  if (b := get(prefix + 'fc2.bias', None)) is not None:
    out['Dense_1/bias'] = b
  return out


def _ln(get, prefix: str) -> Arrays:
  return {'scale': get(prefix + '.weight'), 'bias': get(prefix + '.bias')}


def to_params(sd: Mapping[str, np.ndarray], spec: Mapping[str, Any]) -> Dict[str, Any]:
  """Our param tree (looped blocks) from a timm state dict described by `spec` (see `describe`)."""
  used = set()
  sentinel = object()

  def get(key: str, default: Any = sentinel) -> np.ndarray:
    if key not in sd:
      if default is sentinel:
        raise KeyError(f'the state dict lacks {key}')
      return default
    used.add(key)
    return np.asarray(sd[key], np.float32)

  heads = spec['transformer']['num_heads']
  flat: Arrays = {}
  w = get('patch_embed.proj.weight')
  flat['embedding/kernel'] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
  flat['embedding/bias'] = get('patch_embed.proj.bias', np.zeros(w.shape[0], np.float32))
  prefix = 0
  if 'cls_token' in sd:
    flat['cls'] = get('cls_token')
    prefix += 1
  if 'reg_token' in sd:
    flat['reg'] = get('reg_token')
    prefix += flat['reg'].shape[1]
  pe = get('pos_embed')
  if spec.get('no_embed_class') and prefix:  # zero slots for the prefix tokens compute timm's function
    pe = np.concatenate([np.zeros((1, prefix, pe.shape[2]), pe.dtype), pe], axis=1)
  flat['Transformer/posembed_input/pos_embedding'] = pe
  if spec.get('pre_norm'):
    flat.update({f'Transformer/pre_norm/{k}': v for k, v in _ln(get, 'norm_pre').items()})
  for i in range(spec['transformer']['num_layers']):
    t, ours = f'blocks.{i}.', f'Transformer/encoderblock_{i}/'
    qkv = get(t + 'attn.qkv.weight')
    q, k, v = np.split(qkv, 3)
    att = _attention(get, t + 'attn.', q, k, v, get(t + 'attn.qkv.bias', None), heads)
    for n in ('q', 'k'):
      if t + f'attn.{n}_norm.weight' in sd:
        name = {'q': 'query', 'k': 'key'}[n]
        att.update({f'{name}_norm/{kk}': vv for kk, vv in _ln(get, t + f'attn.{n}_norm').items()})
    flat.update({ours + 'MultiHeadDotProductAttention_0/' + kk: vv for kk, vv in att.items()})
    flat.update({ours + 'LayerNorm_0/' + kk: vv for kk, vv in _ln(get, t + 'norm1').items()})
    flat.update({ours + 'LayerNorm_1/' + kk: vv for kk, vv in _ln(get, t + 'norm2').items()})
    flat.update({ours + 'MlpBlock_0/' + kk: vv for kk, vv in _mlp(get, t + 'mlp.').items()})
    for n in (1, 2):
      if t + f'ls{n}.gamma' in sd:
        flat[ours + f'LayerScale_{n - 1}/scale'] = get(t + f'ls{n}.gamma')
  if 'norm.weight' in sd:
    flat.update({f'Transformer/encoder_norm/{k}': v for k, v in _ln(get, 'norm').items()})
  if 'fc_norm.weight' in sd:
    flat.update({f'fc_norm/{k}': v for k, v in _ln(get, 'fc_norm').items()})
  if 'attn_pool.latent' in sd:
    kv = get('attn_pool.kv.weight')
    kb = get('attn_pool.kv.bias', None)
    qb = get('attn_pool.q.bias', None)
    att = _attention(get, 'attn_pool.', get('attn_pool.q.weight'), *np.split(kv, 2),
                     None if qb is None else np.concatenate([qb, kb]), heads)
    flat['MAPHead_0/probe'] = get('attn_pool.latent')
    flat.update({'MAPHead_0/MultiHeadDotProductAttention_0/' + k: v for k, v in att.items()})
    flat.update({'MAPHead_0/LayerNorm_0/' + k: v for k, v in _ln(get, 'attn_pool.norm').items()})
    flat.update({'MAPHead_0/MlpBlock_0/' + k: v for k, v in _mlp(get, 'attn_pool.mlp.').items()})
  if 'pre_logits.fc.weight' in sd:
    flat['pre_logits/kernel'], flat['pre_logits/bias'] = _t(get('pre_logits.fc.weight')), get('pre_logits.fc.bias')
  if 'projection.weight' in sd:
    flat['projection/kernel'] = _t(get('projection.weight'))
  if 'head.weight' in sd:
    flat['head/kernel'] = _t(get('head.weight'))
    flat['head/bias'] = get('head.bias', np.zeros(sd['head.weight'].shape[0], np.float32))
  left = sorted(set(sd) - used - {'mask_token'})
  if left:
    raise UnsupportedError(f'the state dict has keys no vit_jax model option reads: {left[:6]}')
  return traverse_util.unflatten_dict(flat, sep='/')


def from_params(params: Mapping[str, Any], spec: Mapping[str, Any]) -> Tuple[Arrays, Dict[str, Any]]:
  """(timm state dict, timm VisionTransformer kwargs) of our params; prefix position embeddings go into the
  tokens when timm's model has none for them (`spec['no_embed_class']`)."""
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  if any(k.startswith('Transformer/encoderblock/') for k in flat):
    raise ValueError('scanned params: unstack the encoder blocks first (models.unstack_encoder_blocks).')
  sd: Arrays = {}
  k = flat['embedding/kernel']
  sd['patch_embed.proj.weight'] = np.ascontiguousarray(k.transpose(3, 2, 0, 1))
  sd['patch_embed.proj.bias'] = flat['embedding/bias']
  pe = flat['Transformer/posembed_input/pos_embedding']
  prefix = 0
  for ours, theirs in (('cls', 'cls_token'), ('reg', 'reg_token')):
    if ours in flat:
      n = flat[ours].shape[1]
      sd[theirs] = flat[ours] + (pe[:, prefix:prefix + n] if spec.get('no_embed_class') else 0)
      prefix += n
  sd['pos_embed'] = pe[:, prefix:] if spec.get('no_embed_class') else pe
  if spec.get('pre_norm'):  # timm's pre-norm patch embedding has no bias: the patch positions take it (exact)
    bias = sd.pop('patch_embed.proj.bias')
    sd['pos_embed'] = sd['pos_embed'].copy()
    sd['pos_embed'][:, 0 if spec.get('no_embed_class') else prefix:] += bias
  if 'Transformer/pre_norm/scale' in flat:
    sd['norm_pre.weight'], sd['norm_pre.bias'] = flat['Transformer/pre_norm/scale'], flat['Transformer/pre_norm/bias']

  def put_attention(src: str, dst: str, packed: str) -> None:
    qkv = [flat[src + f'{n}/kernel'].reshape(flat[src + f'{n}/kernel'].shape[0], -1).T
           for n in ('query', 'key', 'value')]
    if packed == 'qkv':
      sd[dst + 'qkv.weight'] = np.concatenate(qkv)
    else:
      sd[dst + 'q.weight'], sd[dst + 'kv.weight'] = qkv[0], np.concatenate(qkv[1:])
    if src + 'query/bias' in flat:
      b = [flat[src + f'{n}/bias'].reshape(-1) for n in ('query', 'key', 'value')]
      if packed == 'qkv':
        sd[dst + 'qkv.bias'] = np.concatenate(b)
      else:
        sd[dst + 'q.bias'], sd[dst + 'kv.bias'] = b[0], np.concatenate(b[1:])
    out = flat[src + 'out/kernel']
    sd[dst + 'proj.weight'] = out.reshape(-1, out.shape[-1]).T
    if src + 'out/bias' in flat:
      sd[dst + 'proj.bias'] = flat[src + 'out/bias']
    for n in ('query', 'key'):
      if src + f'{n}_norm/scale' in flat:
        sd[dst + f'{n[0]}_norm.weight'] = flat[src + f'{n}_norm/scale']
        sd[dst + f'{n[0]}_norm.bias'] = flat[src + f'{n}_norm/bias']

  def put(src: str, dst: str, kernel: bool = False) -> None:
    if kernel:
      sd[dst + '.weight'] = flat[src + '/kernel'].T
      if src + '/bias' in flat:
        sd[dst + '.bias'] = flat[src + '/bias']
    else:
      sd[dst + '.weight'], sd[dst + '.bias'] = flat[src + '/scale'], flat[src + '/bias']

  for i in range(spec['transformer']['num_layers']):
    b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    put(b + 'LayerNorm_0', t + 'norm1')
    put_attention(b + 'MultiHeadDotProductAttention_0/', t + 'attn.', 'qkv')
    put(b + 'LayerNorm_1', t + 'norm2')
    put(b + 'MlpBlock_0/Dense_0', t + 'mlp.fc1', kernel=True)
    put(b + 'MlpBlock_0/Dense_1', t + 'mlp.fc2', kernel=True)
    for n in (0, 1):
      if b + f'LayerScale_{n}/scale' in flat:
        sd[t + f'ls{n + 1}.gamma'] = flat[b + f'LayerScale_{n}/scale']
  if 'Transformer/encoder_norm/scale' in flat:
    put('Transformer/encoder_norm', 'norm')
  if 'fc_norm/scale' in flat:
    put('fc_norm', 'fc_norm')
  if 'MAPHead_0/probe' in flat:
    sd['attn_pool.latent'] = flat['MAPHead_0/probe']
    put_attention('MAPHead_0/MultiHeadDotProductAttention_0/', 'attn_pool.', 'q_kv')
    put('MAPHead_0/LayerNorm_0', 'attn_pool.norm')
    put('MAPHead_0/MlpBlock_0/Dense_0', 'attn_pool.mlp.fc1', kernel=True)
    put('MAPHead_0/MlpBlock_0/Dense_1', 'attn_pool.mlp.fc2', kernel=True)
  if 'pre_logits/kernel' in flat:
    raise ValueError('timm\'s VisionTransformer has no pre-logits layer; export a model with '
                     'representation_size=None (or --format=npz).')
  if 'projection/kernel' in flat:
    raise ValueError('timm\'s VisionTransformer has no projection separate from the head; export with --format=hf '
                     'or npz.')
  if 'head/kernel' in flat:
    put('head', 'head', kernel=True)
  sd = {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}
  tr = spec['transformer']
  if spec['mlp_activation'] == 'swiglu' or spec.get('norm_eps', 1e-6) != 1e-6:
    raise ValueError('timm\'s VisionTransformer takes neither SwiGLU nor a LayerNorm epsilon other than 1e-6 as '
                     'JSON model_args; export with --format=hf or npz.')
  ratio = tr['mlp_dim'] / spec['hidden_size']
  if int(spec['hidden_size'] * ratio) != tr['mlp_dim']:  # timm takes int(embed_dim * mlp_ratio)
    ratio = (tr['mlp_dim'] + 0.5) / spec['hidden_size']
  kwargs = {
      'img_size': list(spec['image_size']), 'patch_size': int(spec['patches']['size'][0]),
      'embed_dim': int(spec['hidden_size']), 'depth': int(tr['num_layers']), 'num_heads': int(tr['num_heads']),
      'mlp_ratio': ratio, 'num_classes': int(spec.get('num_classes') or 0),
      'class_token': 'cls' in flat, 'reg_tokens': int(flat['reg'].shape[1]) if 'reg' in flat else 0,
      'no_embed_class': bool(spec.get('no_embed_class')),
      'global_pool': {'token': 'token', 'gap': 'avg', 'map': 'map'}[spec['classifier']],
      'fc_norm': bool(spec.get('fc_norm')), 'pre_norm': bool(spec.get('pre_norm')),
      'qkv_bias': any(k.endswith('/query/bias') for k in flat), 'qk_norm': bool(spec.get('qk_norm')),
      'act_layer': {'gelu_tanh': 'gelu_tanh', 'gelu': 'gelu', 'quick_gelu': 'quick_gelu'}[spec['mlp_activation']],
  }
  if not kwargs['qkv_bias']:
    kwargs['proj_bias'] = False
  if spec.get('layer_scale_init') is not None:
    kwargs['init_values'] = float(spec['layer_scale_init'])
  return sd, kwargs
