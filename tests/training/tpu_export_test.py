"""The real train step of a pod preset, exported for TPU on CPU, so that a TPU-only lowering failure shows here.

configs/vit_b16_i21k.py's mesh, sharding rules, dtypes, loss and optimizer, with a small model (the layer count
and widths do not change which ops are lowered), on the 8 fake CPU devices; `jax.export` with
`platforms=('tpu',)` lowers the loop's jitted, donated step (`loop.jit_step`) as a TPU would compile it.
"""
import functools

import jax
import jax.numpy as jnp
from jax import export

import loop_testlib as lib
from vit_jax.models import build
from vit_jax.training import losses
from vit_jax.training import loop
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training import train_step

SMALL = {'model.num_layers': 1, 'model.hidden_size': 64, 'model.mlp_dim': 128, 'model.num_heads': 2,
         'model.representation_size': 64, 'batch': 16}
IMAGE, CLASSES = 32, 100


def test_vit_b16_i21k_train_step_exports_for_tpu():
  config = lib.apply(lib.load_config('vit_b16_i21k'), SMALL)
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.get_rules(config.sharding_rules)
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  model = build.build_model(config.model_name, config.model, CLASSES)
  tx, schedule = optim.make_optimizer(loop.optim_section(config))
  rng = jax.random.PRNGKey(0)
  init = functools.partial(train_step.create_train_state, model, tx, input_shape=(1, IMAGE, IMAGE, 3),
                           ema=config.ema_decay > 0)
  state_shardings = sharding.param_shardings(jax.eval_shape(functools.partial(init, unbox=False), rng), mesh, rules)
  abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                jax.eval_shape(init, rng), state_shardings)
  abstract_batch = {
      'image': jax.ShapeDtypeStruct((config.batch, IMAGE, IMAGE, 3), jnp.float32, sharding=batch_sharding),
      'label': jax.ShapeDtypeStruct((config.batch, CLASSES), jnp.float32, sharding=batch_sharding)}
  scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  sums = {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated) for k in loop.AVERAGED_METRICS}
  step = loop.jit_step(
      train_step.make_train_step(model, tx, losses.get_loss_fn(config.loss), lr_schedule=schedule,
                                 accum_steps=config.accum_steps, ema_decay=config.ema_decay or None, mesh=mesh,
                                 rules=rules),
      state_shardings, batch_sharding, replicated)

  exported = export.export(step, platforms=('tpu',))(abstract_state, abstract_batch, scalar, sums)

  assert exported.platforms == ('tpu',) and exported.nr_devices == 8
  text = exported.mlir_module()
  assert 'bf16' in text  # the preset's bfloat16 compute survived the TPU lowering
  # Every leaf of (state, batch, first_bad, sums) is an input of the TPU program, with its sharding.
  assert len(exported.in_avals) == len(jax.tree.leaves(abstract_state)) + 2 + 1 + len(sums)
  assert len(exported.in_shardings_hlo) == len(exported.in_avals)
