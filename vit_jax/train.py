"""google-research/vision_transformer's `vit_jax.train`, as its colabs call it, over our train step and loop.

`train_and_evaluate(config, workdir)` runs `vit_jax.training.loop` (its configs are rewritten into ours first:
`vit_jax.configs.reference_compat`) and returns the trained params. `make_update_fn(apply_fn=, accum_steps=, tx=)`
returns the reference's pmap-style update, `(params, opt_state, batch, rng)` each with a leading local-device axis
(`flax.jax_utils.replicate`d, batches from `vit_jax.input_pipeline`) -> the same plus the loss; it is computed
by our jitted `train_step.make_train_step` on the flattened batch and handed back with that axis.
"""
import functools
import types
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from vit_jax.training import losses
from vit_jax.training import train_step

UpdateFn = Callable[[Any, Any, Dict[str, jax.Array], jax.Array], Tuple[Any, Any, jax.Array, jax.Array]]


def make_update_fn(*, apply_fn: Callable[..., jax.Array], accum_steps: int,
                   tx: optax.GradientTransformation) -> UpdateFn:
  """update(params, opt_state, batch, rng) -> (params, opt_state, loss, rng), every one per local device.

  One SGD step of softmax cross-entropy on the whole batch (mean over all devices' examples, `accum_steps`
  micro-batches when > 1); dropout keys come from `rng`, which is returned advanced.
  """
  step = train_step.make_train_step(types.SimpleNamespace(apply=apply_fn), tx, losses.softmax_xent,
                                    accum_steps=max(int(accum_steps or 1), 1))

  # Outputs split over the local devices along their first axis, as `flax.jax_utils.replicate` places them, so
  # that `jax.pmap`ped functions take them back without a copy.
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('devices',))
  per_device_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('devices'))

  @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=per_device_sharding)
  def update_fn(params, opt_state, batch, rng):
    devices = jax.tree.leaves(params)[0].shape[0]
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)  # replicas are identical
    state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params=first(params),
                                  opt_state=first(opt_state), ema_params=None, rng=rng[0])
    state, metrics = step(state, jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch))
    per_device = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (devices,) + x.shape), tree)
    return (per_device(state.params), per_device(state.opt_state), per_device(metrics['loss']),
            per_device(jax.random.split(rng[0])[1]))

  return update_fn


def train_and_evaluate(config: Any, workdir: str) -> Dict[str, Any]:
  """Trains and evaluates per `config` (ours or the reference's) in `workdir`; returns the final params."""
  from vit_jax.tools import inference  # pylint: disable=g-import-not-at-top
  from vit_jax.training import loop  # pylint: disable=g-import-not-at-top
  loop.train_and_evaluate(config, workdir)
  return inference.load_params(epath.Path(workdir))
