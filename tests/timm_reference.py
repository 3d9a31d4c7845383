"""Runs timm's VisionTransformer on a published-layout .npz, in its own process (see checkpoint_test).

PyTorch and TensorFlow loaded into one process can crash it, and the test suite imports TensorFlow for TFDS, so
the independent implementation runs here: `python tests/timm_reference.py SPEC.json` reads the spec (npz path,
images .npy, timm kwargs, optional hybrid ResNet layers) and writes the logits to the spec's `out` path.

A spec may also be a list of specs (one process for many models). With `"direct": true` the weights are mapped
from the published layout onto timm's state dict here (`direct_state_dict`, loaded strictly: every timm parameter
must be given), for the options timm's npz reader does not know (registers, LayerScale, QK-norm, parallel blocks,
bias-free projections); `"block": "parallel"` builds timm's `ParallelScalingBlock`; `"count_only": true` writes
the parameter count instead of logits (no weights, no forward pass).
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


def _t(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x, np.float32))


def direct_state_dict(w: dict, depth: int, parallel: bool) -> dict:
  """timm's VisionTransformer state dict from our published-layout arrays `w`, written out key by key."""
  sd = {'patch_embed.proj.weight': _t(w['embedding/kernel'].transpose(3, 2, 0, 1)),
        'patch_embed.proj.bias': _t(w['embedding/bias']),
        'pos_embed': _t(w['Transformer/posembed_input/pos_embedding']),
        'norm.weight': _t(w['Transformer/encoder_norm/scale']), 'norm.bias': _t(w['Transformer/encoder_norm/bias'])}
  for ours, theirs in (('cls', 'cls_token'), ('reg', 'reg_token')):
    if ours in w:
      sd[theirs] = _t(w[ours])
  if 'head/kernel' in w:
    sd['head.weight'], sd['head.bias'] = _t(w['head/kernel'].T), _t(w['head/bias'])
  for i in range(depth):
    b = f'Transformer/encoderblock_{i}/'
    att, mlp = b + 'MultiHeadDotProductAttention_1/', b + 'MlpBlock_3/'
    d = w[att + 'query/kernel'].shape[0]
    get = lambda k: w.get(k)  # absent for bias-free projections
    qkv_w = [w[att + f'{n}/kernel'].reshape(d, -1).T for n in ('query', 'key', 'value')]
    qkv_b = [get(att + f'{n}/bias') for n in ('query', 'key', 'value')]
    out_w, out_b = w[att + 'out/kernel'].reshape(-1, d).T, get(att + 'out/bias')
    fc1_w, fc1_b = w[mlp + 'Dense_0/kernel'].T, get(mlp + 'Dense_0/bias')
    fc2_w, fc2_b = w[mlp + 'Dense_1/kernel'].T, get(mlp + 'Dense_1/bias')
    t = f'blocks.{i}.'
    if parallel:
      sd[t + 'in_norm.weight'], sd[t + 'in_norm.bias'] = _t(w[b + 'LayerNorm_0/scale']), _t(w[b + 'LayerNorm_0/bias'])
      sd[t + 'in_proj.weight'] = _t(np.concatenate([fc1_w] + qkv_w, axis=0))
      if qkv_b[0] is not None:
        sd[t + 'in_proj.bias'] = _t(np.concatenate([fc1_b] + [x.reshape(-1) for x in qkv_b]))
      else:  # timm keeps the MLP's first bias when qkv_bias=False; ours has none then: zero computes our function
        sd[t + 'mlp_bias'] = _t(np.zeros(fc1_w.shape[0]) if fc1_b is None else fc1_b)
      sd[t + 'attn_out_proj.weight'], sd[t + 'mlp_out_proj.weight'] = _t(out_w), _t(fc2_w)
      if out_b is not None:
        sd[t + 'attn_out_proj.bias'], sd[t + 'mlp_out_proj.bias'] = _t(out_b), _t(fc2_b)
      prefix_attn, prefix_ls = t, {t + 'ls.gamma': b + 'LayerScale_0/scale'}
    else:
      for n, ln in (('norm1', 'LayerNorm_0'), ('norm2', 'LayerNorm_2')):
        sd[t + f'{n}.weight'], sd[t + f'{n}.bias'] = _t(w[b + f'{ln}/scale']), _t(w[b + f'{ln}/bias'])
      sd[t + 'attn.qkv.weight'] = _t(np.concatenate(qkv_w, axis=0))
      if qkv_b[0] is not None:
        sd[t + 'attn.qkv.bias'] = _t(np.concatenate([x.reshape(-1) for x in qkv_b]))
      sd[t + 'attn.proj.weight'], sd[t + 'mlp.fc1.weight'], sd[t + 'mlp.fc2.weight'] = _t(out_w), _t(fc1_w), _t(fc2_w)
      for k, v in (('attn.proj.bias', out_b), ('mlp.fc1.bias', fc1_b), ('mlp.fc2.bias', fc2_b)):
        if v is not None:
          sd[t + k] = _t(v)
      prefix_attn = t + 'attn.'
      prefix_ls = {t + 'ls1.gamma': b + 'LayerScale_0/scale', t + 'ls2.gamma': b + 'LayerScale_1/scale'}
    for theirs, ours in prefix_ls.items():
      if ours in w:
        sd[theirs] = _t(w[ours])
    for n in ('query', 'key'):
      if att + f'{n}_norm/scale' in w:
        sd[prefix_attn + f'{n[0]}_norm.weight'] = _t(w[att + f'{n}_norm/scale'])
        sd[prefix_attn + f'{n[0]}_norm.bias'] = _t(w[att + f'{n}_norm/bias'])
  return sd


def main(spec_path: str) -> None:
  with open(spec_path) as f:
    spec = json.load(f)
  for one in (spec if isinstance(spec, list) else [spec]):
    run(one)


def run(spec: dict) -> None:
  """One model: logits (or the parameter count) written to `spec['out']`."""
  kwargs = dict(spec['kwargs'])
  if spec.get('block') == 'parallel':
    kwargs['block_fn'] = timm_vit.ParallelScalingBlock
  if spec.get('count_only'):
    model = timm_vit.VisionTransformer(img_size=spec['img_size'], **kwargs)
    np.save(spec['out'], np.int64(sum(p.numel() for p in model.parameters())))
    return
  images = np.load(spec['images'])
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
  if spec.get('direct'):
    with np.load(spec['npz']) as f:
      w = {k: f[k] for k in f.files}
    model.load_state_dict(direct_state_dict(w, kwargs['depth'], spec.get('block') == 'parallel'), strict=True)
  else:
    model.load_pretrained(spec['npz'])  # timm's reader of the published / big_vision .npz layouts
  with torch.no_grad():
    logits = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  np.save(spec['out'], logits)


if __name__ == '__main__':
  main(sys.argv[1])
