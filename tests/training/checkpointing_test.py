"""Orbax checkpoints: round trip of sharded state + data state, keep policy, corrupt and half-written steps."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax.training import checkpointing


def _state(value: float, mesh):
  """A small state: one array sharded over 8 devices, one replicated, a step scalar."""
  sharded = NamedSharding(mesh, P('x'))
  replicated = NamedSharding(mesh, P())
  return {'w': jax.device_put(jnp.full((8, 3), value, jnp.float32), sharded),
          'b': jax.device_put(jnp.full((3,), value, jnp.float32), replicated),
          'step': jax.device_put(jnp.asarray(int(value), jnp.int32), replicated)}


@pytest.fixture
def mesh():
  return jax.sharding.Mesh(np.asarray(jax.devices()), ('x',))


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_round_trip_restores_sharded_state_and_data_position(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  ckpt.save(1, _state(1., mesh), {'step': 1, 'epoch': 0})
  ckpt.save(2, _state(2., mesh), {'step': 2, 'epoch': 0})
  ckpt.wait()
  step, state, data = ckpt.restore(_abstract(_state(0., mesh)))
  ckpt.close()
  assert step == 2 and data == {'step': 2, 'epoch': 0}
  np.testing.assert_array_equal(np.asarray(state['w']), np.full((8, 3), 2.))
  assert state['w'].sharding == NamedSharding(mesh, P('x'))
  assert os.path.exists(tmp_path / '2' / 'data' / 'process_0-of-1.json')


def test_keeps_the_last_k_plus_every_mth(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1, keep=2, keep_every=4)
  for step in range(1, 10):
    ckpt.save(step, _state(float(step), mesh), {'step': step})
  ckpt.close()
  assert ckpt.all_steps() == [4, 8, 9]


def _corrupt(step_dir):
  """Overwrites every array data file of a checkpoint with garbage of half its length."""
  n = 0
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, 'wb') as f:
        f.write(b'\x00garbage' * max(1, size // 16))
      n += 1
  assert n


def test_corrupt_latest_falls_back_to_the_previous_one_with_a_message(tmp_path, mesh, capsys):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  for step in (1, 2):
    ckpt.save(step, _state(float(step), mesh), {'step': step})
  ckpt.close()
  _corrupt(str(tmp_path / '2'))

  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  step, state, data = ckpt.restore(_abstract(_state(0., mesh)))
  out = capsys.readouterr().out
  assert step == 1 and data == {'step': 1}
  np.testing.assert_array_equal(np.asarray(state['b']), np.ones(3))
  lines = [l for l in out.splitlines() if 'unreadable' in l]
  assert len(lines) == 1 and str(tmp_path / '2') in lines[0] and 'falling back' in lines[0]
  assert os.path.isdir(tmp_path / '2.corrupt')  # Set aside for inspection, never overwritten.
  ckpt.save(2, _state(5., mesh), {'step': 2})   # The step can be saved again.
  ckpt.close()
  assert ckpt.all_steps() == [1, 2]


def test_a_half_written_save_is_ignored(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  ckpt.save(1, _state(1., mesh), {'step': 1})
  ckpt.close()
  # What a crash in the middle of writing step 2 leaves behind: Orbax's temporary directory.
  partial = tmp_path / '2.orbax-checkpoint-tmp-1234'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'junk').write_bytes(b'\x00' * 10)
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  assert ckpt.all_steps() == [1]
  step, _, _ = ckpt.restore(_abstract(_state(0., mesh)))
  ckpt.close()
  assert step == 1


def test_no_checkpoint_restores_none(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'empty'), save_every=1)
  assert ckpt.restore(_abstract(_state(0., mesh))) is None
  ckpt.close()


def test_checkpoint_dir_accepts_a_workdir_or_the_checkpoints_folder(tmp_path):
  (tmp_path / 'checkpoints').mkdir()
  assert str(checkpointing.checkpoint_dir(str(tmp_path))) == str(tmp_path / 'checkpoints')
  assert str(checkpointing.checkpoint_dir(str(tmp_path / 'checkpoints'))) == str(tmp_path / 'checkpoints')


def test_a_checkpoint_of_other_shapes_stops_naming_the_parameter_and_renames_nothing(tmp_path, mesh):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  ckpt.save(1, _state(1., mesh), {'step': 1})
  ckpt.close()
  wanted = _abstract(_state(0., mesh))
  wanted['b'] = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=wanted['b'].sharding)
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_every=1)
  with pytest.raises(checkpointing.CheckpointMismatch, match=r"b: shape \(3,\) on disk, \(4,\) now.*config\.resume"):
    ckpt.restore(wanted)
  del wanted['b']  # Another tree: a parameter on disk that the state no longer has.
  with pytest.raises(checkpointing.CheckpointMismatch, match=r'b: on disk, not in the state now'):
    ckpt.restore(wanted)
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ['1']
