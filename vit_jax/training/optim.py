"""Optimizers and learning-rate schedules: one optax chain built from a few config keys.

`make_optimizer(section)` reads the keys of `DEFAULTS` from a dict or ConfigDict (`section[key]` /
`section.get(key)`), so the training loop can pass its whole config or an optimizer section.

The chain, per trainable parameter, in order:
  clip_by_global_norm(grad_norm_clip)                      # over the trainable grads only
  -> adam / sgd-momentum / adafactor direction              # first-moment state in `mu_dtype`
  -> + weight_decay * param on kernels only (decoupled)     # see `weight_decay_mask`
  -> * -lr(step)                                            # `make_schedule`, update s uses lr(s), s = 1, 2, ...
  -> * lr multiplier (first matching `lr_mults` regex)
Frozen parameters (`freeze` regexes) get updates of -0.0 (bitwise no-ops) and carry no optimizer state.
A `freeze` or `lr_mults` regex that matches no parameter is an error at `tx.init`, not a silent no-op.
Then, over all parameters (frozen ones stay -0.0):
  -> * layer-wise lr decay (`layer_decay`; see `layer_decay_scales`)
  -> * muP's per-layer Adam lr (`mup_base_width`; see `mup_lr_scales`)

Parameter paths are the '/'-joined dict keys, e.g. 'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel';
regexes must match the whole path (`re.fullmatch`).
"""
import re
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Schedule = Callable[[Any], jax.Array]

REQUIRED = object()  # marks a key without a default
# Every key `make_optimizer` reads, with its default. The loop's config validation can use this table to reject
# unknown keys and wrong types.
DEFAULTS = {
    'optimizer': 'adam',         # 'adam' | 'adamw' (the same chain) | 'sgd' | 'adafactor'
    'base_lr': REQUIRED,            # peak learning rate
    'total_steps': REQUIRED,        # number of updates; the decay ends here
    'warmup_steps': 0,           # linear warmup from 0 to base_lr over these updates
    'decay_type': 'cosine',      # 'cosine' | 'linear' (to linear_end) | 'rsqrt' | 'constant'
    'linear_end': 1e-5,          # final lr of 'linear'
    'rsqrt_timescale': 10_000,   # 'rsqrt': lr = base_lr * sqrt(timescale / (step - warmup + timescale))
    'grad_norm_clip': None,      # global-norm clip of the gradients (None or 0: off)
    'weight_decay': 0.,          # decoupled, multiplied by lr(step) like optax.adamw, kernels only
    'b1': 0.9,                   # adam beta1; adafactor momentum (None: no momentum)
    'b2': 0.999,                 # adam beta2
    'eps': 1e-8,                 # adam epsilon
    'momentum': 0.9,             # sgd momentum (None or 0: plain sgd)
    'nesterov': False,           # sgd
    'mu_dtype': None,            # dtype of the first-moment/momentum state, e.g. 'bfloat16' (None: param dtype)
    'adafactor_decay_rate': 0.8,       # adafactor second-moment decay exponent
    'adafactor_b2_cap': 0.999,         # adafactor second-moment decay cap (big_vision's beta2_cap)
    'adafactor_min_dim_to_factor': 32,  # adafactor factors dims at least this large
    'lr_mults': (),              # ((regex, multiplier), ...): first match wins
    'freeze': (),                # (regex, ...): matching params get zero updates
    'layer_decay': None,         # BEiT/MAE layer-wise lr decay, e.g. 0.75 (None: off); see layer_decay_scales
    'mup_base_width': None,      # muP: the base width (config.model.mup_base_width; None: off); see mup_lr_scales
}
OPTIMIZERS = ('adam', 'adamw', 'sgd', 'adafactor')
DECAY_TYPES = ('cosine', 'linear', 'rsqrt', 'constant')


def _get(section: Mapping[str, Any], key: str) -> Any:
  value = section.get(key, DEFAULTS[key])
  if value is REQUIRED or (value is None and DEFAULTS[key] is REQUIRED):
    raise ValueError(f'config.{key} is required by the optimizer; set it in the config.')
  return value


def path_str(path: Sequence[Any]) -> str:
  """'/'-joined dict keys of a pytree path; attribute keys (flax boxes' `.value`) are skipped."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
  return '/'.join(parts)


def _map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def weight_decay_mask(params: Any) -> Any:
  """True for the leaves that weight decay applies to: every array named 'kernel'.

  That is all Dense/DenseGeneral/Conv weights (the patch embedding and hybrid ResNet convs included); biases,
  LayerNorm/GroupNorm scales, `cls`, `pos_embedding` and the MAP `probe` are not decayed.
  """
  return _map_paths(lambda path, _: path.split('/')[-1] == 'kernel', params)


def _first_match(path: str, patterns: Sequence[str]) -> Optional[int]:
  for i, pattern in enumerate(patterns):
    if re.fullmatch(pattern, path):
      return i
  return None


def _check_patterns(key: str, patterns: Sequence[str]) -> Tuple[str, ...]:
  if isinstance(patterns, str):
    raise ValueError(f'config.{key} must be a list of regexes, got the string {patterns!r}; write [{patterns!r}].')
  for pattern in patterns:
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f'config.{key}: {pattern!r} is not a valid regex ({e}); fix the pattern.') from None
  return tuple(patterns)


def _check_lr_mults(lr_mults: Any) -> Tuple[Tuple[str, float], ...]:
  try:
    pairs = tuple((pattern, float(mult)) for pattern, mult in lr_mults)
  except (TypeError, ValueError):
    raise ValueError(f'config.lr_mults must be a list of (regex, multiplier) pairs, got {lr_mults!r}.') from None
  _check_patterns('lr_mults', [p for p, _ in pairs])
  return pairs


def _check_all_match(key: str, patterns: Sequence[str], params: Any) -> None:
  """One-line error naming a pattern that matches no parameter (a typo would silently do nothing)."""
  paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  for pattern in patterns:
    if not any(re.fullmatch(pattern, path) for path in paths):
      example = f', e.g. {paths[-1]!r}' if paths else ''
      raise ValueError(f'config.{key}: {pattern!r} matches no (trainable) parameter; the regex must match a whole '
                       f'parameter path{example}.')


def freeze_labels(params: Any, freeze: Sequence[str]) -> Any:
  """'frozen' for leaves whose path fully matches one of the `freeze` regexes, else 'trainable'."""
  freeze = tuple(freeze or ())
  return _map_paths(lambda path, _: 'trainable' if _first_match(path, freeze) is None else 'frozen', params)


def lr_multipliers(params: Any, lr_mults: Sequence[Tuple[str, float]]) -> Any:
  """Per-leaf learning-rate multiplier: the first `(regex, mult)` whose regex fully matches the path, else 1."""
  lr_mults = tuple((p, float(m)) for p, m in (lr_mults or ()))
  patterns = [p for p, _ in lr_mults]

  def mult(path, _):
    i = _first_match(path, patterns)
    return 1. if i is None else lr_mults[i][1]
  return _map_paths(mult, params)


def scale_by_lr_mults(lr_mults: Sequence[Tuple[str, float]]) -> optax.GradientTransformation:
  """Stateless transform multiplying each update by its path's multiplier (see `lr_multipliers`)."""

  def init_fn(params):
    _check_all_match('lr_mults', [p for p, _ in lr_mults], params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    mults = lr_multipliers(updates, lr_mults)
    updates = jax.tree.map(lambda u, m: u if m == 1. else u * jnp.asarray(m, u.dtype), updates, mults)
    return updates, state
  return optax.GradientTransformation(init_fn, update_fn)


def freeze_transform() -> optax.GradientTransformation:
  """Updates of -0.0, which leave every float bitwise unchanged (p + -0.0 == p, even for p == -0.0)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: jnp.full_like(u, -0.), updates), state
  return optax.GradientTransformation(init_fn, update_fn)


def _num_layers(tree: Any) -> int:
  """Encoder blocks of a ViT param tree: looped `encoderblock_{i}` keys or the scanned leading axis."""
  enc = tree['Transformer'] if hasattr(tree, 'keys') and 'Transformer' in tree else {}
  looped = [k for k in enc if re.fullmatch(r'encoderblock_\d+', k)]
  if looped:
    return len(looped)
  stacked = jax.tree.leaves(enc.get('encoderblock', {}))
  return stacked[0].shape[0] if stacked else 0


# Parameters at the head end (base lr under layer decay); everything outside the blocks and these is an embedding.
_HEAD_SIDE = ('head/', 'pre_logits/', 'MAPHead_0/', 'Transformer/encoder_norm/')


def layer_decay_scales(params: Any, decay: float) -> Any:
  """Per-leaf lr factors of layer-wise lr decay (BEiT, MAE fine-tuning), for a looped or scanned ViT.

  The head, pre-logits, MAP head and final norm: 1; block i (0-based) of `depth`: decay^(depth - i); the embeddings
  (patch embedding and any ResNet root, class token, registers, position embedding): decay^(depth + 1). Scanned
  blocks get a (depth, 1, ...) array, one factor per layer along the stacked axis.
  """
  depth = _num_layers(params)
  if not depth:
    raise ValueError('config.optim.layer_decay needs a ViT with encoder blocks (Transformer/encoderblock*); '
                     'unset it for this model.')

  def scale(path, x):
    m = re.match(r'Transformer/encoderblock_(\d+)/', path)
    if m:
      return decay ** (depth - int(m.group(1)))
    if path.startswith('Transformer/encoderblock/'):
      factors = decay ** (depth - np.arange(depth, dtype=np.float64))
      return factors.reshape((depth,) + (1,) * (np.ndim(x) - 1)).astype(np.float32)
    if path.startswith(_HEAD_SIDE):
      return 1.
    return decay ** (depth + 1)
  return _map_paths(scale, params)


def mup_lr_scales(params: Any, base_width: int) -> Any:
  """Per-leaf Adam lr factors of muP ("Tensor Programs V", Table 3, in the multiplier form of its Table 8).

  With width = hidden_size and m = width / base_width (1 at the base width, where muP is the standard model):

    parameter                                       init                   multiplier    Adam lr
    input-like: patch embedding, cls, registers,    as standard (var       1             lr
      posemb, all biases, LayerNorm scales           1/fan_in; fan_in
                                                     is fixed: 3 p^2)
    hidden: q/k/v/out, MLP, MAP head and pre-logits  var ~ 1/fan_in          1             lr / m
      kernels                                        (Xavier)
    output: head kernel                              zero (head_zeroinit)   1 / m         lr
                                                     or var 1/fan_in
    attention logits                                 -                      q.k / d (x sqrt(d_base)) instead of
                                                                            q.k / sqrt(d)

  The model side (output multiplier, attention scale) is `VisionTransformer(mup_base_width=...)`; this is the
  optimizer side: `lr / m` on the hidden kernels, 1 on the rest.
  """
  widths = {x.shape[-1] for p, x in jax.tree_util.tree_leaves_with_path(params)
            if path_str(p) in ('embedding/bias', 'Transformer/encoder_norm/scale')}
  if len(widths) != 1:
    raise ValueError('config.model.mup_base_width needs a ViT param tree (embedding/bias, '
                     'Transformer/encoder_norm/scale); unset it for this model.')
  m = widths.pop() / float(base_width)

  def scale(path, x):
    hidden = path.endswith('/kernel') and path.startswith(('Transformer/', 'MAPHead_0/', 'pre_logits/'))
    return 1. / m if hidden and np.ndim(x) >= 2 else 1.
  return _map_paths(scale, params)


def _scale_by(factors: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Multiplies each update by its leaf's factor from `factors(updates)` (floats or broadcastable arrays)."""
  def f(updates, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, factors(updates))
  return optax.stateless(f)


def make_schedule(section: Mapping[str, Any]) -> Schedule:
  """lr(step): linear warmup over `warmup_steps`, then `decay_type` until `total_steps` (vit_jax's formula).

  lr(step) = base_lr * min(1, step / warmup_steps) * decay(progress), progress = clip((step - warmup) /
  (total - warmup), 0, 1); decay: cosine 0.5 (1 + cos(pi progress)), linear from base_lr to linear_end,
  rsqrt sqrt(timescale / (step - warmup + timescale)), constant 1.
  """
  base_lr = float(_get(section, 'base_lr'))
  total_steps = int(_get(section, 'total_steps'))
  warmup_steps = int(_get(section, 'warmup_steps') or 0)
  decay_type = _get(section, 'decay_type')
  linear_end = float(_get(section, 'linear_end'))
  timescale = float(_get(section, 'rsqrt_timescale'))
  if decay_type not in DECAY_TYPES:
    raise ValueError(f'Unknown config.decay_type={decay_type!r}; choose one of {", ".join(DECAY_TYPES)}.')
  if total_steps <= warmup_steps and decay_type in ('cosine', 'linear'):
    raise ValueError(f'config.total_steps ({total_steps}) must exceed config.warmup_steps ({warmup_steps}); '
                     'lower warmup_steps.')

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0., 1.)
    if decay_type == 'cosine':
      lr = base_lr * 0.5 * (1. + jnp.cos(jnp.pi * progress))
    elif decay_type == 'linear':
      lr = linear_end + (base_lr - linear_end) * (1. - progress)
    elif decay_type == 'rsqrt':
      lr = base_lr * jnp.sqrt(timescale / (jnp.maximum(step - warmup_steps, 0.) + timescale))
    else:
      lr = base_lr * jnp.ones_like(step)
    if warmup_steps:
      lr = lr * jnp.minimum(1., step / warmup_steps)
    return lr.astype(jnp.float32)
  return schedule


def _direction(section: Mapping[str, Any]) -> optax.GradientTransformation:
  """The optimizer's update direction before weight decay and learning rate."""
  name = _get(section, 'optimizer')
  mu_dtype = _get(section, 'mu_dtype')
  mu_dtype = jnp.dtype(mu_dtype) if mu_dtype else None
  if name in ('adam', 'adamw'):
    return optax.scale_by_adam(b1=float(_get(section, 'b1')), b2=float(_get(section, 'b2')),
                               eps=float(_get(section, 'eps')), mu_dtype=mu_dtype)
  if name == 'sgd':
    momentum = _get(section, 'momentum')
    if not momentum:
      return optax.identity()
    return optax.trace(decay=float(momentum), nesterov=bool(_get(section, 'nesterov')),
                       accumulator_dtype=mu_dtype)
  if name == 'adafactor':
    # big_vision's Adafactor ("Scaling Vision Transformers"): factored second moment with decay
    # min(b2_cap, 1 - t^-decay_rate), no update clipping, no parameter scaling, momentum b1.
    cap = float(_get(section, 'adafactor_b2_cap'))
    rate = float(_get(section, 'adafactor_decay_rate'))
    parts = [optax.scale_by_factored_rms(
        decay_rate=rate, min_dim_size_to_factor=int(_get(section, 'adafactor_min_dim_to_factor')),
        decay_rate_fn=lambda t, r: jnp.minimum(cap, 1. - jnp.power(t + 1., -r)))]
    b1 = _get(section, 'b1')
    if b1:
      parts.append(optax.trace(decay=float(b1), accumulator_dtype=mu_dtype))
    return optax.chain(*parts)
  raise ValueError(f'Unknown config.optimizer={name!r}; choose one of {", ".join(OPTIMIZERS)}.')


def make_optimizer(section: Mapping[str, Any]) -> Tuple[optax.GradientTransformation, Schedule]:
  """(optax transformation, lr schedule) from the keys of `DEFAULTS`; see the module docstring."""
  schedule = make_schedule(section)
  clip = _get(section, 'grad_norm_clip')
  weight_decay = float(_get(section, 'weight_decay') or 0.)
  parts = []
  if clip:
    parts.append(optax.clip_by_global_norm(float(clip)))
  parts.append(_direction(section))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
  # Update number s (1-based: the optax count is s - 1) uses lr(s), as vit_jax's loop does; lr(0), which is 0
  # under warmup, is never used.
  parts.append(optax.scale_by_schedule(lambda count: -schedule(count + 1)))
  lr_mults = _check_lr_mults(_get(section, 'lr_mults') or ())
  if lr_mults:
    parts.append(scale_by_lr_mults(lr_mults))
  tx = optax.chain(*parts)
  freeze = _check_patterns('freeze', _get(section, 'freeze') or ())
  if freeze:
    def labels(params):
      _check_all_match('freeze', freeze, params)
      return freeze_labels(params, freeze)
    tx = optax.multi_transform({'trainable': tx, 'frozen': freeze_transform()}, labels)
  # After freezing: the factors see the whole tree (block count, width); frozen updates stay -0.0.
  layer_decay = _get(section, 'layer_decay')
  mup_base_width = _get(section, 'mup_base_width')
  scales = []
  if layer_decay is not None:
    if not 0 < float(layer_decay) <= 1:
      raise ValueError(f'config.optim.layer_decay={layer_decay} must be in (0, 1], e.g. 0.75; None turns it off.')
    scales.append(_scale_by(lambda u: layer_decay_scales(u, float(layer_decay))))
  if mup_base_width:
    scales.append(_scale_by(lambda u: mup_lr_scales(u, int(mup_base_width))))
  if scales:
    tx = optax.chain(tx, *scales)
  return tx, schedule
