"""The pure training core: train state, one jit-able train step (with gradient accumulation and EMA), eval step.

No I/O and no host syncs: the loop jits these with `NamedSharding`s (see `vit_jax.training.sharding` and
`train_state_shardings`) and donates the state. With `mesh`/`rules` (as the loop passes them) the model's
logical activation constraints follow the rule table; without them XLA propagates the param and batch shardings.
A step's randomness (dropout, stochastic depth) is `fold_in(fold_in(state.rng, state.step), micro)`, and its
mixing (`batch_ops`: the batch arrives as uint8 images and integer labels, `vit_jax.data.mixing`) is drawn from
`fold_in(fold_in(state.rng, state.step), MIX_STREAM)`, so a run is a function of (seed, step) and resumes exactly.
"""
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vit_jax import models
from vit_jax.data import mixing
from vit_jax.training import losses
from vit_jax.training import objectives
from vit_jax.training import sharding as sharding_lib

Array = jax.Array
Batch = Dict[str, Array]
Metrics = Dict[str, Array]
# fold_in data of the mixing key; the micro-batches' dropout keys take 0, 1, ..., accum_steps - 1.
MIX_STREAM = 2**31 - 1


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpointed as a whole."""
  step: Array                 # int32 scalar: number of updates applied
  params: Any                 # float32 params (unboxed)
  opt_state: optax.OptState
  ema_params: Optional[Any]   # EMA of params, or None when EMA is off
  rng: Array                  # uint32[2] base key (raw, checkpoint-friendly); never advanced, folded with step


def init_params(model: nn.Module, rng: Array, input_shape: Sequence[int], *, unbox: bool = True) -> Any:
  """Params of `model` for inputs of `input_shape` (batch dim included): plain arrays, or with `unbox=False` each
  in its logical-axis box (`models.init_with_axes`)."""
  dummy = jnp.zeros(tuple(input_shape), jnp.float32)
  if unbox:  # a no-op for our models, whose init is plain already; other linen modules may box
    return nn.meta.unbox(model.init({'params': rng}, dummy, train=False)['params'])
  return models.init_with_axes(model, {'params': rng}, dummy, train=False)['params']


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: Array,
                       input_shape: Sequence[int], *, ema: bool = False, unbox: bool = True) -> TrainState:
  """Fresh state: params from `fold_in(rng, 0)`, optimizer state, EMA copy, base key `fold_in(rng, 1)`.

  Jit it with `out_shardings=train_state_shardings(...)`, which evaluates this with `unbox=False` (params and
  optimizer state in flax's logical-axis boxes, from `models.init_with_axes`) and maps the boxes through the rules.
  """
  rng = jnp.asarray(rng)
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)  # keep a raw uint32 key: plain arrays checkpoint anywhere
  params = init_params(model, jax.random.fold_in(rng, 0), input_shape, unbox=unbox)
  opt_state = tx.init(params)
  # `x + 0` rather than `x`: two outputs must not share a buffer when the state is donated.
  ema_params = jax.tree.map(lambda x: x + 0., params) if ema else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    ema_params=ema_params, rng=jax.random.fold_in(rng, 1))


def train_state_shardings(model: nn.Module, tx: optax.GradientTransformation, input_shape: Sequence[int],
                          mesh: jax.sharding.Mesh, rules: Any, *, ema: bool = False) -> TrainState:
  """NamedShardings of `create_train_state`'s result under `mesh` and the logical-axis `rules` (no compute)."""
  init = functools.partial(create_train_state, model, tx, input_shape=input_shape, ema=ema, unbox=False)
  return sharding_lib.param_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh, rules)


def _split_micro(x: Array, accum_steps: int) -> Array:
  """[B, ...] -> [accum_steps, B // accum_steps, ...], micro-batch i = rows i, i + accum_steps, ...

  Strided rather than contiguous so that every device keeps its own rows of a batch sharded over examples.
  """
  b = x.shape[0]
  x = x.reshape((b // accum_steps, accum_steps) + x.shape[1:])
  return jnp.swapaxes(x, 0, 1)


def _tree_norm(tree: Any) -> Array:
  return optax.global_norm(tree).astype(jnp.float32)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    loss_fn: losses.LossFn = losses.softmax_xent, *,
                    lr_schedule: Optional[Callable[[Array], Array]] = None,
                    accum_steps: int = 1, ema_decay: Optional[float] = None,
                    mesh: Optional[jax.sharding.Mesh] = None, rules: Any = None,
                    batch_ops: Optional[mixing.BatchOps] = None,
                    objective: Optional[objectives.Objective] = None,
                    ) -> Callable[..., Tuple[TrainState, Metrics]]:
  """step(state, {'image': [B,H,W,3], 'label': [B,C] float}, frozen=None) -> (state, metrics); pure, jit-able.

  With `batch_ops` the batch is uint8 images and integer labels (`pipeline.make_train_iterator(uint8=True)`),
  turned into float images and (smoothed, mixed) targets here, on the devices (`mixing.train_batch`).

  The loss is `objective` (`vit_jax.training.objectives`; default: the batch mean of the per-example `loss_fn` of
  the model's logits), handed `frozen` (e.g. a teacher's params, never differentiated) as it is. With
  `accum_steps` > 1 the batch is split into that many micro-batches scanned one after another and their
  gradients averaged: the same update as one step on the whole batch (without dropout), with a fraction of the activation memory. `ema_decay`: EMA of the params,
  e <- ema_decay * e + (1 - ema_decay) * params after each update (needs a state made with `ema=True`).
  `mesh`/`rules`: trace the model under `sharding.axis_rules`, so its activation constraints follow the rule
  table (None: no constraints, XLA's propagation decides).

  metrics: 'loss', 'grad_norm' (global norm before clipping), 'param_norm' (after the update), 'lr' (of this
  update, when `lr_schedule` is given); NaN/inf show up in them, and the loop stops on them.
  """
  if accum_steps < 1:
    raise ValueError(f'accum_steps must be >= 1, got {accum_steps}.')

  if objective is None:
    objective = objectives.classification(model, loss_fn)

  def step(state: TrainState, batch: Batch, frozen: Optional[Any] = None) -> Tuple[TrainState, Metrics]:
    def loss_and_grad(params, images, labels, rng):
      return jax.value_and_grad(objective)(params, images, labels, rng, frozen)

    images, labels = batch['image'], batch['label']
    if images.shape[0] % accum_steps:
      raise ValueError(f'Batch size {images.shape[0]} is not divisible by accum_steps={accum_steps}; '
                       'change config.batch or config.accum_steps.')
    rng = jax.random.fold_in(state.rng, state.step)
    if batch_ops is not None:
      finished = mixing.train_batch(batch, jax.random.fold_in(rng, MIX_STREAM), batch_ops)
      images, labels = finished['image'], finished['label']
    with sharding_lib.axis_rules(mesh, rules):
      if accum_steps == 1:
        loss, grads = loss_and_grad(state.params, images, labels, jax.random.fold_in(rng, 0))
      else:
        def body(carry, micro):
          i, loss_sum, grad_sum = carry
          loss_i, grads_i = loss_and_grad(state.params, micro[0], micro[1], jax.random.fold_in(rng, i))
          return (i + 1, loss_sum + loss_i, jax.tree.map(jnp.add, grad_sum, grads_i)), None
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        init = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), zeros)
        (_, loss, grads), _ = jax.lax.scan(
            body, init, (_split_micro(images, accum_steps), _split_micro(labels, accum_steps)))
        loss = loss / accum_steps
        grads = jax.tree.map(lambda g: g / accum_steps, grads)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_decay is not None:
      if ema_params is None:
        raise ValueError('ema_decay is set but the state has no ema_params; create it with ema=True.')
      ema_params = jax.tree.map(lambda e, p: ema_decay * e + (1. - ema_decay) * p, ema_params, params)
    metrics = {'loss': loss.astype(jnp.float32), 'grad_norm': _tree_norm(grads), 'param_norm': _tree_norm(params)}
    if lr_schedule is not None:
      metrics['lr'] = jnp.asarray(lr_schedule(state.step + 1), jnp.float32)  # the optimizer's lr of this update
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
    return new_state, metrics

  return step


def make_eval_step(model: nn.Module, loss_fn: losses.LossFn = losses.softmax_xent, *,
                   mesh: Optional[jax.sharding.Mesh] = None, rules: Any = None,
                   batch_ops: Optional[mixing.BatchOps] = None) -> Callable[[Any, Batch], Metrics]:
  """eval_step(params, {'image', 'label', 'mask'}) -> sums over the real (mask 1) examples.

  With `batch_ops` the batch is uint8 images and integer labels (`pipeline.make_eval_iterator(uint8=True)`),
  finished here on the devices (`mixing.eval_batch`: value range and one-/multi-hot targets).

  Returns {'loss_sum', 'top1', 'top5', 'count'}: summed loss, top-1 and top-5 correct counts and the number of
  examples, so the loop adds them over batches and divides once: padded examples never count. `mesh`/`rules`
  as in `make_train_step`.
  """

  def eval_step(params: Any, batch: Batch) -> Metrics:
    if batch_ops is not None:
      batch = mixing.eval_batch(batch, batch_ops)
    with sharding_lib.axis_rules(mesh, rules):
      logits = model.apply({'params': params}, batch['image'], train=False)
    labels = batch['label']
    mask = batch['mask'].astype(jnp.float32) if 'mask' in batch else jnp.ones(labels.shape[:1], jnp.float32)
    return {
        'loss_sum': jnp.sum(loss_fn(logits, labels) * mask),
        'top1': jnp.sum(losses.topk_correct(logits, labels, 1) * mask),
        'top5': jnp.sum(losses.topk_correct(logits, labels, 5) * mask),
        'count': jnp.sum(mask),
    }

  return eval_step
