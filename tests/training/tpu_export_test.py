"""The real train step of a pod preset, exported for TPU on CPU, so that a TPU-only lowering failure shows here.

configs/vit_b16_i21k.py's mesh, sharding rules, dtypes, loss and optimizer, with a small model (the layer count
and widths do not change which ops are lowered), on the 8 fake CPU devices; `jax.export` with
`platforms=('tpu',)` lowers the loop's jitted, donated step (`lowering.config_program`: `loop.step_program`) as a TPU would compile it.
"""
import jax
from jax import export

import loop_testlib as lib
from vit_jax.perf import tpu_compile

SMALL = {'model.num_layers': 1, 'model.hidden_size': 64, 'model.mlp_dim': 128, 'model.num_heads': 2,
         'model.representation_size': 64, 'batch': 16}
IMAGE, CLASSES = 32, 100


def test_vit_b16_i21k_train_step_exports_for_tpu():
  config = lib.apply(lib.load_config('vit_b16_i21k'), SMALL)
  # The loop's jitted, donated step and its abstract (state, batch, first_bad, sums), as vit_jax.compile_check builds it.
  step, (abstract_state, abstract_batch, scalar, sums), _, _ = tpu_compile.build_step(config, jax.devices(), IMAGE,
                                                                                     CLASSES)
  exported = export.export(step, platforms=('tpu',))(abstract_state, abstract_batch, scalar, sums)

  assert exported.platforms == ('tpu',) and exported.nr_devices == 8
  text = exported.mlir_module()
  assert 'bf16' in text  # the preset's bfloat16 compute survived the TPU lowering
  # Every leaf of (state, batch, first_bad, sums) is an input of the TPU program, with its sharding.
  assert len(exported.in_avals) == len(jax.tree.leaves(abstract_state)) + 2 + 1 + len(sums)
  assert len(exported.in_shardings_hlo) == len(exported.in_avals)
