"""A gs:// workdir end to end, against a local GCS emulator started here (tests/gcs_emulator.py).

The main job runs in a subprocess with STORAGE_EMULATOR_HOST as its only storage setting, as a user runs it.
"""
import json
import functools
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import gcs_emulator
import loop_testlib as lib
from vit_jax import storage
from etils import epath


@pytest.fixture(scope='module')
def emulator():
  with gcs_emulator.running('bucket') as host:
    saved = dict(os.environ)
    os.environ.update(gcs_emulator.emulator_env(host))
    storage.configure()  # This process reads the bucket through epath too.
    yield host
    os.environ.clear()
    os.environ.update(saved)


def _objects(host: str, prefix: str) -> set:
  """Object names under `prefix`, listed with the real google-cloud-storage client."""
  return {b.name[len(prefix):] for b in gcs_emulator.client(host).list_blobs('bucket', prefix=prefix)}


@pytest.fixture(scope='module')
def local_run(tmp_path_factory):
  """The reference: the same tiny run on local disk (its wall time is printed beside the bucket's)."""
  workdir = str(tmp_path_factory.mktemp('local') / 'run')
  start = time.time()
  result = lib.run_main(workdir, {}, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, time.time() - start


@pytest.fixture(scope='module')
def bucket_run(emulator, local_run):
  workdir = 'gs://bucket/run'
  start = time.time()
  result = lib.run_main(workdir, {}, extra_env=gcs_emulator.emulator_env(emulator), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  seconds = time.time() - start
  print(f'main job wall time (tiny default, {lib.TINY["total_steps"]} steps): local disk {local_run[1]:.1f} s, '
        f'GCS emulator {seconds:.1f} s')
  for name, where in (('local disk', local_run[0]), ('GCS emulator', workdir)):
    print(f'{name}: {_step_times(where)}')
  return workdir


def _step_times(workdir: str) -> str:
  """Step times (ms, from progress/steps_per_sec with progress_every=1) right after each checkpoint save vs the
  median of the others: the async write of a save overlaps the steps after it."""
  ms = {r['step']: 1e3 / r['progress/steps_per_sec'] for r in lib.read_metrics(workdir)
        if 'progress/steps_per_sec' in r}
  every = lib.TINY['checkpoint_every']
  after = {s: ms[s] for s in ms if s > 1 and (s - 1) % every == 0}
  others = [v for s, v in ms.items() if s not in after and s > 2]
  return (f'step ms after a save {", ".join(f"{s}: {v:.0f}" for s, v in sorted(after.items()))}; '
          f'median of the other steps {np.median(others):.0f}')


@pytest.mark.slow
def test_trains_into_the_bucket_and_writes_nothing_local(emulator, bucket_run, local_run):
  names = _objects(emulator, 'run/')
  assert {'config.json', 'metrics.jsonl', 'final_metrics.json'} <= names
  steps = {n.split('/')[1] for n in names if n.startswith('checkpoints/')}
  assert steps == {'6', '9', '12'}  # keep_checkpoints=3 of every 3rd step; no temporary names left
  assert 'checkpoints/12/commit_success.txt' in names
  assert not os.path.exists(os.path.join(lib.REPO, 'gs:'))
  local_losses = lib.train_losses(local_run[0])
  assert lib.train_losses(bucket_run) == local_losses and len(local_losses) == lib.TINY['total_steps']


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_restart_matches_the_uninterrupted_run(emulator, local_run):
  workdir = 'gs://bucket/killed'
  env = gcs_emulator.emulator_env(emulator)
  lib.run_main_killed(workdir, {}, after_checkpoint=3, extra_env=env, timeout=400)
  result = lib.run_main(workdir, {}, extra_env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from step' in result.stdout
  assert lib.train_losses(workdir) == lib.train_losses(local_run[0])


@pytest.mark.slow
def test_export_to_the_bucket_then_model_init_from_it_equals_a_local_copy(emulator, bucket_run, tmp_path):
  env = gcs_emulator.emulator_env(emulator)
  npz = 'gs://bucket/published/ViT-testing.npz'
  exported = subprocess.run(
      [sys.executable, '-m', 'vit_jax.export', f'--workdir={bucket_run}', f'--out={npz}'], cwd=lib.REPO,
      env=lib.env(**env), capture_output=True, text=True, timeout=300, check=False)
  assert exported.returncode == 0, exported.stderr[-2000:]
  local_npz = str(tmp_path / 'ViT-testing.npz')
  gcs_emulator.client(emulator).bucket('bucket').blob('published/ViT-testing.npz').download_to_filename(local_npz)
  overrides = {'total_steps': 1, 'warmup_steps': 0, 'eval_every': 1, 'checkpoint_every': 1000}
  results = {}
  for name, path in (('bucket', npz), ('local', local_npz)):
    workdir = str(tmp_path / name)
    result = lib.run_main(workdir, {**overrides, 'model_init': path}, extra_env=env, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Initialised the params from {path}.' in result.stdout
    results[name] = json.loads((epath.Path(workdir) / 'final_metrics.json').read_text())
  # Identical params give identical logits: the eval loss and accuracy agree to the bit.
  for key in ('val/loss', 'val/top1'):
    assert results['bucket'][key] == results['local'][key]
  np.testing.assert_array_less(results['local']['val/loss'], 10.)


@pytest.mark.slow
def test_a_checkpoint_of_another_model_stops_with_one_line_and_renames_nothing(emulator, bucket_run):
  before = _objects(emulator, 'run/checkpoints/')
  result = lib.run_main(bucket_run, {'model.num_layers': 3}, extra_env=gcs_emulator.emulator_env(emulator))
  assert result.returncode == 2, result.stderr[-3000:]
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith('Config error: Checkpoint gs://bucket/run/checkpoints/12 does not match'), line
  assert 'Transformer/encoderblock' in line and 'on disk' in line and 'config.resume' in line, line
  assert _objects(emulator, 'run/checkpoints/') == before  # nothing set aside


def _state(value: float):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('x',))
  return {'w': jax.device_put(jnp.full((8, 3), value, jnp.float32), NamedSharding(mesh, P('x'))),
          'b': jax.device_put(jnp.full((3,), value, jnp.float32), NamedSharding(mesh, P()))}


def _abstract(state):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


@pytest.mark.slow
def test_corrupt_latest_in_the_bucket_is_set_aside_and_the_previous_restored(emulator, capsys):
  from vit_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  directory = 'gs://bucket/corrupt/checkpoints'
  ckpt = checkpointing.Checkpointer(directory, save_every=1)
  for step in (1, 2):
    ckpt.save(step, _state(float(step)), {'step': step})
  ckpt.close()
  bucket = gcs_emulator.client(emulator).bucket('bucket')
  garbled = [b for b in bucket.list_blobs(prefix='corrupt/checkpoints/2/state/') if '/d/' in b.name]
  assert garbled
  for blob in garbled:  # Truncated array chunks, as an interrupted copy leaves them.
    blob.upload_from_string(b'\x00garbage')
  step, state, data = checkpointing.Checkpointer(directory, save_every=1).restore(_abstract(_state(0.)))
  assert step == 1 and data == {'step': 1}
  np.testing.assert_array_equal(np.asarray(state['b']), np.ones(3))
  lines = [l for l in capsys.readouterr().out.splitlines() if 'unreadable' in l]
  assert len(lines) == 1 and f'{directory}/2 ' in lines[0]
  names = _objects(emulator, 'corrupt/checkpoints/')
  assert any(n.startswith('2.corrupt/') for n in names) and not any(n.startswith('2/') for n in names)


@pytest.mark.slow
def test_a_dead_storage_endpoint_is_retried_then_stops_naming_the_error(emulator):
  # Saved with the emulator up, read with STORAGE_EMULATOR_HOST at a port where nothing listens: connection
  # refused, which gcsfs retries itself (6 times, ~30 s) and the Checkpointer once more before stopping.
  from vit_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer('gs://bucket/dead/checkpoints', save_every=1)
  ckpt.save(1, _state(1.), {'step': 1})
  ckpt.close()
  code = ('from vit_jax import storage; storage.configure()\n'
          'from vit_jax.training import checkpointing as c\n'
          'try:\n'
          '  c.Checkpointer("gs://bucket/dead/checkpoints", save_every=1, retries=1, backoff_s=0.1).restore(None)\n'
          'except c.CheckpointUnavailable as e:\n'
          '  print("STOPPED:", e)\n')
  dead = f'http://127.0.0.1:{gcs_emulator.free_port()}'
  result = subprocess.run([sys.executable, '-c', code], cwd=lib.REPO, env=lib.env(STORAGE_EMULATOR_HOST=dead),
                          capture_output=True, text=True, timeout=240, check=False)
  line = [l for l in result.stdout.splitlines() if l.startswith('STOPPED:')]
  assert line, result.stderr[-3000:]
  assert 'Cannot open gs://bucket/dead/checkpoints' in line[0] and 'after 2 attempts' in line[0], line[0]
  assert 'retrying' in result.stderr
  assert _objects(emulator, 'dead/checkpoints/') == {n for n in _objects(emulator, 'dead/checkpoints/')
                                                      if n.startswith('1/')}  # nothing renamed


@pytest.mark.slow
def test_two_processes_share_a_bucket_workdir_like_one_process_and_both_resume_the_same_step(emulator, tmp_path):
  import re  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import multihost_test as mh  # pylint: disable=g-import-not-at-top
  from vit_jax.training import loop  # pylint: disable=g-import-not-at-top
  ref_dir = str(tmp_path / 'one_process')
  loop.train_and_evaluate(lib.tiny_config(total_steps=mh.STEPS, **mh.OVERRIDES), ref_dir)
  expected = lib.train_losses(ref_dir)

  workdir = 'gs://bucket/two_processes'
  env = lib.env(4, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo', **gcs_emulator.emulator_env(emulator))

  def start(total_steps):
    port = gcs_emulator.free_port()
    return [subprocess.Popen(
        lib.main_command(workdir, {**mh.OVERRIDES, 'total_steps': total_steps},
                         extra=[f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}']),
        cwd=lib.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]

  finish = functools.partial(lib.communicate_all, timeout=240)

  procs = start(100_000)
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if (epath.Path(workdir) / 'metrics.jsonl').exists() and len(lib.train_losses(workdir)) >= mh.STEPS:
      break
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)  # Only one process gets the notice.
  outputs = finish(procs)
  saved = [int(re.search(r'Preempted \(SIGTERM\): saved step (\d+)', out).group(1)) for out in outputs]
  assert saved[0] == saved[1] and saved[0] >= mh.STEPS
  names = _objects(emulator, 'two_processes/checkpoints/')
  assert {f'{saved[0]}/data/process_0-of-2.json', f'{saved[0]}/data/process_1-of-2.json'} <= names
  got = lib.train_losses(workdir)
  np.testing.assert_allclose([got[s] for s in range(1, mh.STEPS + 1)],
                             [expected[s] for s in range(1, mh.STEPS + 1)], rtol=1e-5, atol=1e-6)

  outputs = finish(start(saved[0] + 1))  # Both hosts restart on the bucket and continue from the same step.
  for out in outputs:
    assert f'Resumed from step {saved[0]} of {workdir}' in out


def test_prepare_data_into_the_bucket_then_training_batches_read_in_place_equal_the_folder(emulator, tmp_path):
  """prepare_data writes its shards to gs://; array_record reads them there (no mount); same batches as the folder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vit_jax.data import pipeline as ip  # pylint: disable=g-import-not-at-top
  from vit_jax.data import prepare  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i in range(24):
    d = tmp_path / 'folder' / 'train' / f'c{i % 3}'
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f'{i}.jpg', quality=90)
  meta = prepare.run(str(tmp_path / 'folder'), 'gs://bucket/prepared',
                     ['--direct_running_mode=in_memory', '--direct_num_workers=1'], examples_per_shard=5)
  assert meta['splits']['train']['num_examples'] == 24
  assert {prepare.METADATA, 'train.array_record-00004-of-00005'} <= _objects(emulator, 'prepared/')
  pp = {'crop': 16}
  from_bucket = ip.make_train_iterator('gs://bucket/prepared', pp, global_batch=8, seed=4, with_ids=True)
  from_folder = ip.make_train_iterator(str(tmp_path / 'folder'), pp, global_batch=8, seed=4, with_ids=True)
  for _ in range(4):  # > 1 epoch.
    a, b = next(from_bucket), next(from_folder)
    np.testing.assert_array_equal(a['id'], b['id'])
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
