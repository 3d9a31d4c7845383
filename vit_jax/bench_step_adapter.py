"""TEMPORARY stand-in for branch `step` (vit_jax.train_step / optim / sharding / losses) until it lands.

`vit_jax.benchmarking` uses the real modules whenever they import; this adapter implements only the subset of
their API that the benchmark calls, with the same signatures and the same update (clip -> adam -> decoupled
weight decay on kernels -> -lr), so the numbers it gives are those of the real step to within the metrics it
skips (param_norm, lr). Delete this file once `git merge step` has happened.
"""
import contextlib
import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
RULES = {'dp': (('batch', BATCH_AXES),), 'fsdp': (('batch', BATCH_AXES), ('embed', 'fsdp'))}


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy."""
  return -jnp.sum(labels * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


@flax.struct.dataclass
class TrainState:
  """step, params, optimizer state (no EMA, no rng: the benchmark trains without dropout)."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Optional[Any]
  rng: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: Sequence[int], *, ema: bool = False, unbox: bool = True) -> TrainState:
  """Fresh state (same signature as vit_jax.train_step.create_train_state)."""
  del ema
  params = model.init({'params': rng}, jnp.zeros(tuple(input_shape), jnp.float32), train=False)['params']
  if unbox:
    params = nn.meta.unbox(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=None,
                    rng=jax.random.fold_in(rng, 1))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, loss_fn: Callable = softmax_xent, *,
                    mesh: Optional[Mesh] = None, rules: Any = None, **unused: Any) -> Callable:
  """step(state, batch) -> (state, metrics): forward, backward, optimizer update."""
  del unused

  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def mean_loss(p):
      logits = model.apply({'params': p}, batch['image'], train=True, rngs={'dropout': rng})
      return jnp.mean(loss_fn(logits, batch['label']))
    with axis_rules(mesh, rules):
      loss, grads = jax.value_and_grad(mean_loss)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return step


def make_optimizer(section: Mapping[str, Any]) -> Tuple[optax.GradientTransformation, Callable]:
  """AdamW chain of the pretraining presets: clip -> adam -> decayed weights on kernels -> -lr(step)."""
  schedule = optax.warmup_cosine_decay_schedule(0., section['base_lr'], section['warmup_steps'],
                                                section['total_steps'])
  mu_dtype = section.get('mu_dtype')
  is_kernel = lambda path: [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1] == 'kernel'
  mask = lambda params: jax.tree_util.tree_map_with_path(lambda p, _: is_kernel(p), params)
  tx = optax.chain(
      optax.clip_by_global_norm(section['grad_norm_clip']),
      optax.scale_by_adam(b1=section['b1'], b2=section['b2'], mu_dtype=jnp.dtype(mu_dtype) if mu_dtype else None),
      optax.add_decayed_weights(section['weight_decay'], mask=mask),
      optax.scale_by_schedule(lambda count: -schedule(count + 1)))
  return tx, schedule


def get_rules(name: Any) -> Tuple:
  """Rule table by name."""
  if isinstance(name, str):
    if name not in RULES:
      raise ValueError(f'Unknown sharding rules {name!r}; use one of {", ".join(RULES)}.')
    return RULES[name]
  return tuple(name)


def make_mesh(shape: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Mesh ('data', 'fsdp', 'tensor'); one axis may be -1 (the rest of the devices)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  known = math.prod(s for s in sizes.values() if s != -1)
  for a, s in sizes.items():
    if s == -1:
      sizes[a] = len(devices) // known
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f'mesh {dict(shape)} does not match the {len(devices)} devices.')
  return Mesh(np.asarray(devices, dtype=object).reshape(tuple(sizes.values())), MESH_AXES)


def param_shardings(boxed_tree: Any, mesh: Mesh, rules: Any) -> Any:
  """NamedShardings of a boxed abstract tree; dims the mesh axes do not divide stay replicated."""
  rules = get_rules(rules)
  specs = nn.get_partition_spec(boxed_tree)
  shapes = nn.meta.unbox(boxed_tree)

  def fit(spec, x):
    axes = nn.logical_to_mesh_axes(tuple(spec), rules)
    size = lambda a: 1 if a is None else math.prod(mesh.shape[n] for n in ((a,) if isinstance(a, str) else a))
    entries = list(axes) + [None] * (len(np.shape(x)) - len(axes))
    return NamedSharding(mesh, P(*[a if d % size(a) == 0 else None for a, d in zip(entries, np.shape(x))]))
  return jax.tree.map(fit, specs, shapes, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading dimension over ('data', 'fsdp')."""
  return NamedSharding(mesh, P(BATCH_AXES))


@contextlib.contextmanager
def axis_rules(mesh: Optional[Mesh], rules: Any) -> Iterator[None]:
  """Activation constraints follow `rules` on `mesh`."""
  if mesh is None or rules is None:
    yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(get_rules(rules)):
    yield

