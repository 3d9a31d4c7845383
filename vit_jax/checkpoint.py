"""Published ViT checkpoints (`.npz`): load them into our models, write them back, adapt them for fine-tuning.

File layouts read (detected from the keys; every key is a '/'-joined path):
- published (ViT and AugReg papers, google-research/vision_transformer): pre-Linen numbering inside encoder
  blocks (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`),
  `Transformer/posembed_input/pos_embedding` with a class-token slot, hybrids' GroupNorm params (1, 1, 1, C)
  (written by flax < 0.3.6; (C,) as the reference's own `save` writes them today is read too);
- big_vision: Linen numbering, top-level `pos_embedding` without a class-token slot, optionally scanned blocks
  (`Transformer/encoderblock/...` with a leading layer axis), `MAPHead_0`, keys possibly under `params/`.
`load` returns our model's tree (Linen numbering, looped blocks); `save_npz` writes the published layout, which
google-research/vision_transformer, big_vision and timm all read. No TensorFlow needed.
"""
import collections
import contextlib
import logging
import math
import os
import re
import uuid
import zipfile
from typing import Any, BinaryIO, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import scipy.ndimage
from etils import epath
from flax import traverse_util

PathLike = Union[str, os.PathLike, BinaryIO]
Grid = Union[int, Sequence[int]]

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'
# Sub-modules of an encoder block: published (pre-Linen) name -> our (Linen) name.
PRE_LINEN_TO_LINEN = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
    'LayerNorm_2': 'LayerNorm_1',
    'MlpBlock_3': 'MlpBlock_0',
}
LINEN_TO_PRE_LINEN = {v: k for k, v in PRE_LINEN_TO_LINEN.items()}
# Prefixes under which some files keep the image model (flax optimizer targets, big_vision, SigLIP's image tower).
_PREFIXES = ('opt/target/', 'params/img/', 'params/')
_BLOCK_RE = re.compile(r'^Transformer/encoderblock(?:_(\d+))?/([^/]+)/(.*)$')
_SCANNED_RE = re.compile(r'^Transformer/encoderblock/(.*)$')
_LOOPED_RE = re.compile(r'^Transformer/encoderblock_(\d+)/(.*)$')
_GROUPNORM_RE = re.compile(r'(?:^|/)(?:gn_root|gn\d+|gn_proj)/(?:scale|bias)$')


# --------------------------------------------------------------------------------------------------- reading


def _read_npz(path: PathLike) -> Dict[str, np.ndarray]:
  """All arrays of an `.npz` (a local path, a URL such as gs://..., or an open binary file), as float32."""
  try:
    with contextlib.nullcontext(path) if hasattr(path, 'read') else epath.Path(path).open('rb') as f:
      data = np.load(f, allow_pickle=False)
      if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f'Checkpoint {path} is a single array, not an .npz archive of named params; '
                         'pass a published ViT .npz.')
      with data:
        return {k: _as_float32(data[k]) for k in data.files}
  except FileNotFoundError:
    raise FileNotFoundError(f'Checkpoint {path} not found; check the path (published files are e.g. '
                            'ViT-B_16.npz from the ViT/AugReg releases).') from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if str(e).startswith(f'Checkpoint {path} '):
      raise
    reason = ' '.join(str(e).split())  # one line
    raise ValueError(f'Cannot read checkpoint {path} as an .npz archive ({reason}); '
                     'pass a published ViT .npz.') from None


def _as_float32(x: np.ndarray) -> np.ndarray:
  """Params are float32; bfloat16 (stored by numpy as 2-byte void) and other floats are converted."""
  if x.dtype.kind == 'V' and x.dtype.itemsize == 2:
    x = x.view(ml_dtypes.bfloat16)
  if x.dtype != np.float32 and (x.dtype.kind == 'f' or x.dtype == ml_dtypes.bfloat16):
    x = x.astype(np.float32)
  return x


def _strip_prefix(flat: Dict[str, np.ndarray], path: PathLike) -> Dict[str, np.ndarray]:
  if 'embedding/kernel' in flat:
    return flat
  for prefix in _PREFIXES:
    if prefix + 'embedding/kernel' in flat:
      return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  raise ValueError(f'Checkpoint {path} has no embedding/kernel (first keys: {sorted(flat)[:5]}); it is not a ViT '
                   'checkpoint in the published or big_vision layout.')


def _block_layout(flat: Mapping[str, np.ndarray], path: PathLike) -> str:
  """'pre_linen' (published), 'linen' (ours, big_vision) or 'none', from the encoder-block sub-module names."""
  subs = {m.group(2) for k in flat if (m := _BLOCK_RE.match(k))}
  pre_linen = subs & {'MultiHeadDotProductAttention_1', 'LayerNorm_2', 'MlpBlock_3'}
  linen = subs & {'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0'}
  if pre_linen and linen:
    raise ValueError(f'Checkpoint {path} mixes pre-Linen ({sorted(pre_linen)}) and Linen ({sorted(linen)}) '
                     'encoder-block names; it is not a published or big_vision file.')
  return 'pre_linen' if pre_linen else 'linen' if linen else 'none'


def unstack_blocks_flat(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """Scanned `Transformer/encoderblock/...` (leading layer axis) -> looped `encoderblock_{i}`, on flat keys."""
  out = {}
  for k, v in flat.items():
    m = _SCANNED_RE.match(k)
    if not m:
      out[k] = v
      continue
    for i in range(v.shape[0]):
      out[f'Transformer/encoderblock_{i}/{m.group(1)}'] = v[i]
  return out


def stack_blocks_flat(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """Looped `encoderblock_{i}` -> scanned `encoderblock` with a leading layer axis, on flat keys.

  Like `models.stack_encoder_blocks`, but with numpy on the host: no device transfer (so it works under
  `jax_transfer_guard`) and no device memory for a copy of the weights.
  """
  out, layers = {}, collections.defaultdict(dict)
  for k, v in flat.items():
    m = _LOOPED_RE.match(k)
    if m:
      layers[m.group(2)][int(m.group(1))] = v
    else:
      out[k] = v
  for sub, by_layer in layers.items():
    out[f'Transformer/encoderblock/{sub}'] = np.stack([np.asarray(by_layer[i]) for i in sorted(by_layer)])
  return out


def _to_our_layout(flat: Dict[str, np.ndarray], path: PathLike) -> Dict[str, np.ndarray]:
  """Published / big_vision flat params -> our flat params (Linen numbering, looped blocks, flat GroupNorm)."""
  if any(_SCANNED_RE.match(k) for k in flat):
    if any(_LOOPED_RE.match(k) for k in flat):
      raise ValueError(f'Checkpoint {path} has both scanned (encoderblock/) and looped (encoderblock_i/) blocks.')
    flat = unstack_blocks_flat(flat)
  if _block_layout(flat, path) == 'pre_linen':
    renamed = {}
    for k, v in flat.items():
      m = _LOOPED_RE.match(k)
      if m:
        sub, _, rest = m.group(2).partition('/')
        k = f'Transformer/encoderblock_{m.group(1)}/{PRE_LINEN_TO_LINEN.get(sub, sub)}/{rest}'
      renamed[k] = v
    flat = renamed
  if 'pos_embedding' in flat:
    # big_vision adds its position embeddings before prepending the class token; a zero class-token slot in ours
    # computes the same function.
    if POSEMB_KEY in flat:
      raise ValueError(f'Checkpoint {path} has both pos_embedding and {POSEMB_KEY}.')
    pe = flat.pop('pos_embedding')
    if 'cls' in flat:
      pe = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
    flat[POSEMB_KEY] = pe
  for k, v in flat.items():
    if _GROUPNORM_RE.search(k) and v.ndim > 1 and all(d == 1 for d in v.shape[:-1]):
      flat[k] = v.reshape(v.shape[-1])  # old flax GroupNorm stored (1, 1, 1, C)
  return flat


def load(path: PathLike) -> Dict[str, Any]:
  """Reads a published or big_vision ViT `.npz` into our param tree (nested dicts of numpy arrays).

  The blocks come back looped (`encoderblock_{i}`); a `scan=True` model wants `load_pretrained` (or
  `models.stack_encoder_blocks`). `path` is a local path, a URL (gs://...) or an open binary file.
  """
  flat = _to_our_layout(_strip_prefix(_read_npz(path), path), path)
  return traverse_util.unflatten_dict(flat, sep='/')


# --------------------------------------------------------------------------------------------------- writing


def _plain_flat(params: Any) -> Dict[str, np.ndarray]:
  """Flat '/'-keyed numpy params from a (possibly boxed, frozen, on-device, scanned) param tree."""
  params = jax.device_get(nn.meta.unbox(flax.core.unfreeze(params)))
  flat = traverse_util.flatten_dict(params, sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def _to_published_key(key: str) -> str:
  m = _LOOPED_RE.match(key)
  if not m:
    return key
  sub, _, rest = m.group(2).partition('/')
  return f'Transformer/encoderblock_{m.group(1)}/{LINEN_TO_PRE_LINEN.get(sub, sub)}/{rest}'


def _to_published_value(key: str, value: np.ndarray) -> np.ndarray:
  if value.dtype == ml_dtypes.bfloat16:
    value = value.astype(np.float32)
  if _GROUPNORM_RE.search(key) and value.ndim == 1:
    value = value.reshape(1, 1, 1, -1)  # the published hybrids' GroupNorm params (flax < 0.3.6)
  return value


def save_npz(params: Any, path: epath.PathLike) -> None:
  """Writes params (looped or scanned, boxed or not) as a published-layout `.npz` (local or a URL), atomically
  (temp + rename).

  Arrays must be addressable from this process (on multi-host meshes gather them first); bfloat16 is written as
  float32, which every reader of the format expects; GroupNorm scales and biases as (1, 1, 1, C), as published.
  """
  flat = unstack_blocks_flat(_plain_flat(params))
  flat = {_to_published_key(k): _to_published_value(k, v) for k, v in flat.items()}
  path = epath.Path(path)
  tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
  try:
    with tmp.open('wb') as f:  # a file object, so that np.savez does not append '.npz' to the name
      np.savez(f, **flat)
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


# ------------------------------------------------------------------------------------------ fine-tuning


def _grid(grid: Grid) -> Tuple[int, int]:
  return (int(grid), int(grid)) if np.ndim(grid) == 0 else (int(grid[0]), int(grid[1]))


def _square_grid(num_tokens: int) -> Optional[Tuple[int, int]]:
  side = math.isqrt(num_tokens)
  return (side, side) if side * side == num_tokens else None


def resample_posemb(posemb: Any, new_grid: Grid, num_prefix_tokens: int,
                    old_grid: Optional[Grid] = None) -> np.ndarray:
  """Resizes (1, prefix + gh*gw, D) position embeddings to `new_grid`, as the ViT paper does for fine-tuning.

  Exactly the reference's: the prefix (class-token) rows are kept, the (gh, gw, D) grid goes through
  `scipy.ndimage.zoom(order=1)` with zoom (new_h / gh, new_w / gw, 1). The old grid is taken as square unless
  `old_grid` is given.
  """
  posemb = np.asarray(jax.device_get(posemb))
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise ValueError(f'Position embeddings must have shape (1, tokens, dim), got {posemb.shape}.')
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  n_old = grid.shape[0]
  if old_grid is None:
    old_grid = _square_grid(n_old)
    if old_grid is None:
      raise ValueError(f'The checkpoint has {n_old} position embeddings (after {num_prefix_tokens} prefix tokens), '
                       'not a square grid; pass old_grid=(h, w).')
  gh, gw = _grid(old_grid)
  nh, nw = _grid(new_grid)
  if gh * gw != n_old:
    raise ValueError(f'old_grid {(gh, gw)} has {gh * gw} positions but the embeddings have {n_old}; '
                     'pass the grid the checkpoint was trained on.')
  if (gh, gw) == (nh, nw):
    return posemb
  grid = scipy.ndimage.zoom(grid.reshape(gh, gw, -1), (nh / gh, nw / gw, 1), order=1)
  assert grid.shape[:2] == (nh, nw), (grid.shape, nh, nw)
  return np.concatenate([prefix, grid.reshape(1, nh * nw, -1)], axis=1)


def resample_patchemb(kernel: Any, new_hw: Sequence[int]) -> np.ndarray:
  """FlexiViT's pseudo-inverse resize (PI-resize) of a (h, w, in, out) patch-embedding kernel to (new_h, new_w).

  As big_vision's `resample_patchemb` (models/proj/flexi/vit.py): with B the bilinear resize matrix from h x w to
  new_h x new_w patches (no antialiasing), the new kernel is pinv(B^T) w per (in, out) channel pair, so that
  <w_new, B x> = <w, x> for every patch x when upsampling (and the least-squares best fit when downsampling).
  """
  kernel = np.asarray(jax.device_get(kernel), np.float32)
  if kernel.ndim != 4:
    raise ValueError(f'The patch embedding kernel must be (h, w, in, out), got shape {kernel.shape}.')
  (h, w), (nh, nw) = kernel.shape[:2], (int(new_hw[0]), int(new_hw[1]))
  if (h, w) == (nh, nw):
    return kernel
  basis = np.eye(h * w, dtype=np.float32).reshape(h * w, h, w)  # one old-patch pixel each
  resized = jax.image.resize(basis, (h * w, nh, nw), method='bilinear', antialias=False)
  resize_mat = np.asarray(resized, np.float64).reshape(h * w, nh * nw).T  # B: old pixels -> new pixels
  flat = kernel.reshape(h * w, -1).astype(np.float64)
  out = np.linalg.pinv(resize_mat.T) @ flat
  return out.reshape(nh, nw, *kernel.shape[2:]).astype(np.float32)


def interpolate_posembed(posemb: Any, num_tokens: int, has_class_token: bool) -> np.ndarray:
  """google-research/vision_transformer's name: `resample_posemb` to a square grid of `num_tokens` positions."""
  prefix = int(has_class_token)
  grid = _square_grid(num_tokens - prefix)
  if grid is None:
    raise ValueError(f'{num_tokens - prefix} positions are not a square grid; use resample_posemb(new_grid=(h, w)).')
  return resample_posemb(posemb, grid, prefix)


def _shape(x: Any) -> Tuple[int, ...]:
  return tuple(x.shape)


def _num_blocks(flat: Mapping[str, Any]) -> int:
  looped = {int(m.group(1)) for k in flat if (m := _LOOPED_RE.match(k))}
  if looped:
    return len(looped)
  scanned = [v for k, v in flat.items() if _SCANNED_RE.match(k)]
  return _shape(scanned[0])[0] if scanned else 0


def _shapes(flat: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
  return {k: _shape(v) for k, v in sorted(flat.items())}


def _short(keys: Sequence[str], limit: int = 8) -> str:
  shown = ', '.join(keys[:limit])
  return shown + (f', ... (+{len(keys) - limit} more)' if len(keys) > limit else '')


def _mismatch_error(path: PathLike, restored: Mapping[str, Any], target: Mapping[str, Any],
                    ckpt_blocks: int, target_blocks: int) -> Optional[ValueError]:
  """One ValueError listing missing, unexpected and mis-shaped keys and the likely fix, or None if they fit."""
  missing = sorted(set(target) - set(restored))
  unexpected = sorted(set(restored) - set(target))
  misshaped = [f'{k} {_shape(restored[k])} vs model {_shape(target[k])}'
               for k in sorted(set(target) & set(restored)) if _shape(restored[k]) != _shape(target[k])]
  if not (missing or unexpected or misshaped):
    return None
  parts = [f'{name} {len(keys)}: [{_short(keys)}]' for name, keys in
           (('missing', missing), ('unexpected', unexpected), ('mis-shaped', misshaped)) if keys]
  hints = []
  if ckpt_blocks != target_blocks:
    hints.append(f'the checkpoint has {ckpt_blocks} encoder blocks, the model {target_blocks}')
  patch_ckpt, patch_model = (_shape(t.get('embedding/kernel', np.zeros((0, 0, 0, 0)))) for t in (restored, target))
  if patch_ckpt[-1] != patch_model[-1]:
    hints.append(f'hidden size {patch_ckpt[-1]} in the checkpoint, {patch_model[-1]} in the model')
  if patch_ckpt[:2] != patch_model[:2]:
    hints.append(f'patch size {patch_ckpt[:2]} in the checkpoint, {patch_model[:2]} in the model')
  if ('cls' in restored) != ('cls' in target):
    hints.append(f'the checkpoint {"has" if "cls" in restored else "has no"} class token, the model '
                 f'{"has" if "cls" in target else "has none"} (classifier token vs gap/map)')
  if not hints and POSEMB_KEY in restored and POSEMB_KEY in target and (
      _shape(restored[POSEMB_KEY]) != _shape(target[POSEMB_KEY])):
    hints.append('the position embeddings were not resampled: pass new_grid=(h, w) for a non-square grid')
  hint = f' ({"; ".join(hints)})' if hints else ''
  return ValueError(f'Checkpoint {path} does not fit the model: {"; ".join(parts)}{hint}. Likely fix: wrong model '
                    'name (use the one the checkpoint was trained as, e.g. ViT-B_16 for ViT-B_16.npz) or wrong '
                    'image size / grid for the position embeddings.')


def _check_config(model_config: Any, target: Mapping[str, Any]) -> None:
  get = model_config.get
  rep = get('representation_size')
  if (rep is None) == ('pre_logits/kernel' in target):
    raise ValueError(f'model_config.representation_size={rep} but init_params '
                     f'{"have" if rep is None else "lack"} pre_logits; pass the config init_params were built with.')
  classifier = get('classifier')
  if classifier is not None and get('transformer') is not None:
    token = classifier in ('token', 'token_unpooled')
    if token != ('cls' in target):
      raise ValueError(f'model_config.classifier={classifier!r} but init_params {"lack" if token else "have"} a '
                       'class token (cls); pass the config init_params were built with.')


def load_pretrained(*, pretrained_path: PathLike, init_params: Any, model_config: Any,
                    old_grid: Optional[Grid] = None, new_grid: Optional[Grid] = None,
                    reset_head: Optional[bool] = None, restored_params: Optional[Mapping[str, Any]] = None) -> Any:
  """Loads a checkpoint for fine-tuning into params shaped exactly like `init_params`.

  As google-research/vision_transformer's: the head is taken from `init_params` when anything about it differs
  (always with `reset_head=True`, never with False); `pre_logits` is dropped when the model has none (and taken
  from `init_params` when the checkpoint has none or another size); position embeddings are resampled to the
  model's grid (`new_grid`, needed when that grid is not square; `old_grid` likewise for the checkpoint's); a
  patch embedding of another patch size is PI-resized (`resample_patchemb`, FlexiViT), for plain ViTs. Any
  other difference raises one ValueError. Scanned `init_params` get scanned params; boxed (logically partitioned)
  ones get the same boxes; abstract ones (`jax.eval_shape`) work when nothing needs re-initialising. Loaded values
  are host numpy arrays in `init_params`' dtypes: place them with `jax.device_put(params, shardings)`.
  `restored_params`: the checkpoint's params already read (`vit_jax.interop`); `pretrained_path` then names them.
  """
  init_plain = flax.core.unfreeze(init_params)
  init_flat = traverse_util.flatten_dict(init_plain, sep='/')  # boxes (nn.Partitioned...) stay leaves here
  target = {k: (v.unbox() if isinstance(v, nn.meta.AxisMetadata) else v) for k, v in init_flat.items()}
  _check_config(model_config, target)
  restored = traverse_util.flatten_dict(load(pretrained_path) if restored_params is None else restored_params,
                                        sep='/')
  ckpt_blocks, target_blocks = _num_blocks(restored), _num_blocks(target)
  if any(_SCANNED_RE.match(k) for k in target):
    restored = stack_blocks_flat(restored)

  from_init = set()  # keys whose values come from init_params
  head = {k for k in target if k.startswith('head/')}
  ckpt_head = {k: restored.pop(k) for k in list(restored) if k.startswith('head/')}
  head_fits = set(ckpt_head) == head and all(_shape(ckpt_head[k]) == _shape(target[k]) for k in head)
  if reset_head is False and not head_fits:
    raise ValueError(f'reset_head=False but the checkpoint head {_shapes(ckpt_head)} differs from the model head '
                     f'{_shapes({k: target[k] for k in head})}; use reset_head=None to re-initialise it.')
  if head and (reset_head or not head_fits):
    logging.info('load_pretrained: head %s re-initialised as %s', _shapes(ckpt_head),
                 _shapes({k: target[k] for k in head}))
    from_init |= head
  elif head:
    restored.update(ckpt_head)

  pre_logits = {k for k in target if k.startswith('pre_logits/')}
  ckpt_pre_logits = {k: restored.pop(k) for k in list(restored) if k.startswith('pre_logits/')}
  if set(ckpt_pre_logits) == pre_logits and all(
      _shape(ckpt_pre_logits[k]) == _shape(target[k]) for k in pre_logits):
    restored.update(ckpt_pre_logits)
  elif pre_logits:
    logging.info('load_pretrained: pre_logits %s re-initialised', _shapes(ckpt_pre_logits))
    from_init |= pre_logits
  elif ckpt_pre_logits:
    logging.info('load_pretrained: pre_logits dropped (the model has no representation layer)')

  patch_key = 'embedding/kernel'
  if patch_key in restored and patch_key in target and 'block1/unit1/conv1/kernel' not in target:
    old, new = _shape(restored[patch_key]), _shape(target[patch_key])
    if len(old) == len(new) == 4 and old[2:] == new[2:] and old[:2] != new[:2]:
      logging.info('load_pretrained: patch embedding PI-resized from %s to %s', old[:2], new[:2])
      restored[patch_key] = resample_patchemb(restored[patch_key], new[:2])

  if POSEMB_KEY in restored and POSEMB_KEY in target:
    old, new = _shape(restored[POSEMB_KEY]), _shape(target[POSEMB_KEY])
    prefix = int('cls' in restored) + (_shape(restored['reg'])[1] if 'reg' in restored else 0)
    grid_old = _grid(old_grid) if old_grid is not None else _square_grid(old[1] - prefix)
    grid_new = _grid(new_grid) if new_grid is not None else _square_grid(new[1] - prefix)
    target_prefix = int('cls' in target) + (_shape(target['reg'])[1] if 'reg' in target else 0)
    if (prefix == target_prefix and old[2] == new[2] and grid_new is not None
        and (old != new or grid_old != grid_new)):
      logging.info('load_pretrained: position embeddings resampled from %s to %s', old, new)
      restored[POSEMB_KEY] = resample_posemb(restored[POSEMB_KEY], grid_new, prefix, old_grid=old_grid)

  restored.update({k: target[k] for k in from_init})
  error = _mismatch_error(pretrained_path, restored, target, ckpt_blocks, target_blocks)
  if error is not None:
    raise error
  out = {}
  for k, leaf in init_flat.items():
    if k in from_init:
      value = target[k]
      if isinstance(value, jax.ShapeDtypeStruct):
        raise ValueError(f'{k} must be re-initialised but init_params are abstract (jax.eval_shape); '
                         'pass initialised params.')
    else:
      value = np.asarray(restored[k]).astype(target[k].dtype, copy=False)
    out[k] = leaf.replace_boxed(value) if isinstance(leaf, nn.meta.AxisMetadata) else value
  out = traverse_util.unflatten_dict(out, sep='/')
  return flax.core.freeze(out) if isinstance(init_params, flax.core.FrozenDict) else out


# ------------------------------------------------------------ google-research/vision_transformer's helpers


def _flat_with_empty(tree: Mapping[str, Any]) -> Dict[str, Any]:
  """'/'-joined leaves of nested dicts; an empty dict below the top is a leaf of its own (a layer without
  weights, which serialisation drops)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      flat.update({f'{key}/{k}': v for k, v in _flat_with_empty(value).items()})
    else:
      flat[key] = value
  return flat


def inspect_params(*, params: Dict[str, Any], expected: Mapping[str, Any], fail_if_extra: bool = True,
                   fail_if_missing: bool = True) -> Dict[str, Any]:
  """Compares a restored tree's keys with `expected`'s: empty layers missing from `params` are put back, other
  differences are logged, and raise (naming them) under `fail_if_missing` / `fail_if_extra`."""
  have, want = _flat_with_empty(params), _flat_with_empty(expected)
  empty = {k for k in want.keys() - have.keys() if isinstance(want[k], Mapping) and not want[k]}
  for key in empty:
    *parents, leaf = key.split('/')
    node = params
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = {}
  missing, extra = want.keys() - have.keys() - empty, have.keys() - want.keys()
  if missing or extra:
    logging.info('Checkpoint keys missing: %s; extra: %s.', sorted(missing), sorted(extra))
  if (missing and fail_if_missing) or (extra and fail_if_extra):
    raise ValueError(f'Checkpoint params do not match the model: missing {_short(sorted(missing))}, extra '
                     f'{_short(sorted(extra))}.')
  return params


def recover_tree(keys: Sequence[str], values: Sequence[Any]) -> Dict[str, Any]:
  """Nested dicts from '/'-joined names and their values (the layout of a published .npz)."""
  return traverse_util.unflatten_dict(dict(zip(keys, values)), sep='/')


def copy(src: str, dst: str, progress: bool = True, block_size: int = 1024 * 1024 * 10) -> None:
  """Copies a file between any two paths epath opens (local, gs://), block by block, with a progress bar."""
  size = epath.Path(src).stat().length
  blocks = range(math.ceil(size / block_size))
  if progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    blocks = tqdm.tqdm(blocks, unit='block')
  with epath.Path(src).open('rb') as fin, epath.Path(dst).open('wb') as fout:
    for _ in blocks:
      fout.write(fin.read(block_size))


def get_augreg_df(directory: str = 'gs://vit_models/augreg') -> Any:
  """The AugReg checkpoint index (`<directory>/index.csv`, one row per fine-tuning) as a pandas DataFrame.

  Give a local folder holding a copy of gs://vit_models/augreg/index.csv to work offline. Needs pandas.
  """
  try:
    import pandas as pd  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('get_augreg_df needs pandas: pip install pandas.') from None
  with epath.Path(directory, 'index.csv').open() as f:
    return pd.read_csv(f)
