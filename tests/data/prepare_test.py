"""vit_jax.prepare_data on Beam's DirectRunner: folder and ImageNet-21k tar inputs, and training on the output."""
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

import loop_testlib as lib
from vit_jax.data import pipeline as ip
from vit_jax.data import prepare
from vit_jax.data import sources as data_sources
from vit_jax.training import loop

CLASSES = {'n0002': 9, 'n0001': 7, 'n0003': 8}  # Not in sorted order: the tar lists them as written.
IN_MEMORY = ['--direct_running_mode=in_memory', '--direct_num_workers=1']


def _jpeg(rng) -> bytes:
  low = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
  img = Image.fromarray(low).resize((40, 30), Image.Resampling.BICUBIC)
  buf = io.BytesIO()
  img.save(buf, 'JPEG', quality=90)
  return buf.getvalue()


def _members() -> dict[str, dict[str, bytes]]:
  """class -> file name -> bytes: the good JPEGs plus, in n0002, a truncated JPEG and a text file."""
  rng = np.random.default_rng(0)
  out = {c: {f'{c}_{i}.JPEG': _jpeg(rng) for i in range(n)} for c, n in CLASSES.items()}
  out['n0002']['n0002_99.JPEG'] = _jpeg(rng)[:300]
  out['n0002']['n0002_notes.txt'] = b'not an image'
  return out


BAD = {('n0002', 'n0002_99.JPEG'), ('n0002', 'n0002_notes.txt')}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """An image folder with the bad files, the same folder without them, and the tar of per-class tars."""
  root = tmp_path_factory.mktemp('inputs')
  members = _members()
  outer = tarfile.open(root / 'i21k.tar', 'w')
  for cls, files in members.items():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as inner:
      for name, data in reversed(list(files.items())):  # Tar order is not name order.
        info = tarfile.TarInfo(name)
        info.size = len(data)
        inner.addfile(info, io.BytesIO(data))
      for which in ('dirty', 'clean'):
        for name, data in files.items():
          if which == 'dirty' or (cls, name) not in BAD:
            os.makedirs(root / which / 'train' / cls, exist_ok=True)
            (root / which / 'train' / cls / name).write_bytes(data)
    info = tarfile.TarInfo(f'{cls}.tar')
    info.size = buf.tell()
    buf.seek(0)
    outer.addfile(info, buf)
  outer.close()
  prepare.run(str(root / 'dirty'), str(root / 'from_folder'), IN_MEMORY, examples_per_shard=5)
  prepare.run(str(root / 'i21k.tar'), str(root / 'from_tar'), IN_MEMORY, examples_per_shard=5)
  return root, members


def _records(path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  meta = json.loads((path / prepare.METADATA).read_text())
  out = []
  for shard in meta['splits']['train']['shards']:
    reader = array_record_module.ArrayRecordReader(str(path / shard))
    out += [prepare.decode_record(r) for r in reader.read_all()]
    reader.close()
  return meta, out


def test_the_output_holds_exactly_the_good_images_in_class_and_name_order(data):
  root, members = data
  meta, records = _records(root / 'from_folder')
  good = [(c, n) for c in sorted(members) for n in sorted(members[c]) if (c, n) not in BAD]
  assert len(good) == 24
  assert [name for _, name, _ in records] == [f'{c}/{n}' for c, n in good]
  assert [label for label, _, _ in records] == [sorted(CLASSES).index(c) for c, _ in good]
  assert all(img == members[c][n] for (c, n), (_, _, img) in zip(good, records))
  assert meta['classes'] == ['n0001', 'n0002', 'n0003'] and meta['num_skipped'] == 2
  assert meta['splits']['train']['num_examples'] == 24
  assert meta['splits']['train']['shards'] == [f'train.array_record-0000{k}-of-00005' for k in range(5)]
  report = json.loads((root / 'from_folder' / prepare.REPORT).read_text())
  assert {(s['class'], s['name']) for s in report['skipped']} == BAD
  assert any('n0002/n0002_99.JPEG' in s['reason'] for s in report['skipped'])


def test_the_tar_of_tars_gives_byte_identical_shards(data):
  root, _ = data
  meta = json.loads((root / 'from_folder' / prepare.METADATA).read_text())
  for shard in meta['splits']['train']['shards']:
    assert (root / 'from_tar' / shard).read_bytes() == (root / 'from_folder' / shard).read_bytes(), shard
  skipped = json.loads((root / 'from_tar' / prepare.REPORT).read_text())['skipped']
  assert {(s['class'], s['name']) for s in skipped} == BAD


@pytest.mark.slow
def test_the_command_on_all_cores_rewrites_the_same_shards_over_a_half_finished_build(data, tmp_path):
  root, _ = data
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'train.array_record-00002-of-00005').write_bytes(b'left by a killed build')
  cmd = [sys.executable, '-m', 'vit_jax.prepare_data', f'--input={root / "i21k.tar"}', f'--output={out}',
         '--examples_per_shard=5', '--direct_num_workers=2']  # A Beam option, passed through.
  proc = subprocess.run(cmd, cwd=lib.REPO, env=lib.env(), capture_output=True, text=True, timeout=240, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'train: 24 images in 5 shards' in proc.stdout and 'skipped: 2' in proc.stdout
  for f in sorted(os.listdir(root / 'from_tar')):
    assert (out / f).read_bytes() == (root / 'from_tar' / f).read_bytes(), f


def test_the_gzipped_release_is_streamed_into_byte_identical_shards(data, tmp_path):
  """winter21_whole.tar.gz's layout: read once as a stream (nothing extracted), the same shards as the tar."""
  root, _ = data
  (tmp_path / 'w.tar.gz').write_bytes(gzip.compress((root / 'i21k.tar').read_bytes()))
  out = tmp_path / 'from_gz'
  meta = prepare.run(str(tmp_path / 'w.tar.gz'), str(out), IN_MEMORY, examples_per_shard=5)
  assert meta['splits']['train']['num_examples'] == 24
  assert sorted(os.listdir(tmp_path)) == ['from_gz', 'w.tar.gz']  # No extracted copy beside the input.
  for f in sorted(os.listdir(root / 'from_tar')):
    if f != prepare.METADATA and f != prepare.REPORT:
      assert (out / f).read_bytes() == (root / 'from_tar' / f).read_bytes(), f
  skipped = json.loads((out / prepare.REPORT).read_text())['skipped']
  assert {(s['class'], s['name']) for s in skipped} == BAD


def test_bad_gzip_and_missing_inputs_are_one_line_errors(tmp_path):
  (tmp_path / 'notatar.gz').write_bytes(gzip.compress(b'plain text, not a tar'))
  with pytest.raises(ValueError, match='notatar.gz is gzip-compressed but not a readable tar'):
    prepare.run(str(tmp_path / 'notatar.gz'), str(tmp_path / 'out'), IN_MEMORY)
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w') as t:
    info = tarfile.TarInfo('readme.txt')
    info.size = 2
    t.addfile(info, io.BytesIO(b'hi'))
  (tmp_path / 'other.tar.gz').write_bytes(gzip.compress(buf.getvalue()))
  with pytest.raises(ValueError, match='other.tar.gz holds no per-class tars'):
    prepare.run(str(tmp_path / 'other.tar.gz'), str(tmp_path / 'out'), IN_MEMORY)
  with pytest.raises(FileNotFoundError, match='does not exist'):
    prepare.list_units(str(tmp_path / 'nope'))


@pytest.mark.parametrize('split', ['train[:75%]', 'train[75%:]'])
def test_training_and_eval_batches_equal_the_extracted_folder(data, split):
  root, _ = data
  pp = {'crop': 16, 'train': split, 'test': split, 'threads': 2}
  folder, prepared = str(root / 'clean'), str(root / 'from_tar')
  assert ip.get_dataset_info(prepared, pp) == ip.get_dataset_info(folder, pp)
  its = [ip.make_train_iterator(d, pp, global_batch=8, seed=3, process_index=1, process_count=2, with_ids=True)
         for d in (folder, prepared)]
  for _ in range(4):  # More than one epoch of the 18- or 6-image slice.
    a, b = next(its[0]), next(its[1])
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  evals = [list(ip.make_eval_iterator(d, pp, global_batch=8, process_index=0, process_count=1))
           for d in (folder, prepared)]
  for a, b in zip(*evals, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_grain_worker_processes_read_the_shards_as_the_main_process_does(data):
  """pp.workers > 0 pickles the source into grain's worker processes: the same batches as threads."""
  root, _ = data
  pp = {'crop': 16}
  threads = ip.make_train_iterator(str(root / 'from_tar'), pp, global_batch=8, seed=2)
  workers = ip.make_train_iterator(str(root / 'from_tar'), {**pp, 'workers': 1}, global_batch=8, seed=2)
  for _ in range(4):
    np.testing.assert_array_equal(next(threads)['image'], next(workers)['image'])


def test_a_damaged_prepared_dataset_is_named(data, tmp_path):
  root, _ = data
  meta = json.loads((root / 'from_tar' / prepare.METADATA).read_text())
  meta['format'] = 'something/0'
  (tmp_path / prepare.METADATA).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match='prepare the dataset again'):
    data_sources.get_source(str(tmp_path), 'train')


def _checkpoint_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_exact_resume_after_sigkill_on_the_prepared_dataset(data, tmp_path):
  root, _ = data
  overrides = {'dataset': str(root / 'from_tar'), 'pp.train': 'train[:75%]', 'pp.test': 'train[75%:]',
               'batch': 8, 'batch_eval': 8, 'total_steps': 40, 'checkpoint_every': 4}
  ref_dir = str(tmp_path / 'reference')
  loop.train_and_evaluate(lib.tiny_config(**{k.replace('.', '__'): v for k, v in overrides.items()}), ref_dir)
  workdir = str(tmp_path / 'killed')
  proc = subprocess.Popen(lib.main_command(workdir, overrides), cwd=lib.REPO, env=lib.env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not _checkpoint_steps(workdir):
      time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # From outside, as a preemption would.
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL, err[-2000:]
  assert _checkpoint_steps(workdir) and max(_checkpoint_steps(workdir)) < 40
  resumed = lib.run_main(workdir, overrides)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 3 <= int(re.search(r'Resumed from step (\d+)', resumed.stdout).group(1)) < 40
  expected, got = lib.train_losses(ref_dir), lib.train_losses(workdir)
  assert sorted(got) == list(range(1, 41))
  assert got == expected  # Bit-identical on CPU.
