"""Tests for vit_jax.data.pipeline: sources, sharding across processes, exact resume, eval counting."""
import json
import os
import sys

import jax
import numpy as np
import pytest

from vit_jax.data import pipeline as ip
from vit_jax.data import sources as data_sources
from vit_jax.training import sharding

PP = {'crop': 16}


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_digits_sizes_and_classes():
  info = ip.get_dataset_info('digits', {})
  assert (info.num_classes, info.num_train, info.num_eval, info.image_size) == (10, 1500, 297, 8)
  assert info.num_train + info.num_eval == data_sources.DIGITS_NUM_TOTAL == 1797
  assert ip.get_dataset_info('digits', {'crop': 32}).image_size == 32
  labels = [r['label'] for r in data_sources.digits('train').records]
  assert sorted(set(labels)) == list(range(10))
  assert len(data_sources.digits('train[:10%]').records) == 150
  assert len(data_sources.digits('test[-97:]').records) == 97


def test_digits_batches_are_real_images_in_range():
  it = ip.make_train_iterator('digits', {'crop': 32}, global_batch=16, seed=0)
  b = next(it)
  assert b['image'].shape == (16, 32, 32, 3) and b['image'].dtype == np.float32
  assert b['image'].min() == -1 and b['image'].max() == 1  # Digits have black background, white strokes.
  np.testing.assert_array_equal(b['image'][..., 0], b['image'][..., 2])  # Gray -> 3 equal channels.
  np.testing.assert_allclose(b['label'].sum(1), 1)
  assert set(np.unique(b['label'])) == {0., 1.}


def test_digits_train_matches_sklearn_pixels():
  from sklearn import datasets
  raw = datasets.load_digits()
  it = ip.make_train_iterator('digits', {}, global_batch=8, seed=3, with_ids=True)
  b = next(it)
  train_indices = data_sources.digits_split_indices()['train']
  for img, label, i in zip(b['image'], b['label'], train_indices[b['id']]):
    np.testing.assert_allclose(img[..., 0], raw.images[i] / 16 * 2 - 1, atol=1 / 255 + 1e-6)
    assert label.argmax() == raw.target[i]


@pytest.mark.slow
def test_synthetic_does_not_import_tensorflow_or_grain():
  code = ('import sys; from vit_jax.data import pipeline as ip; '
          'it = ip.make_train_iterator("synthetic", {"crop": 8, "num_classes": 5}, global_batch=8); '
          'b = next(it); assert b["image"].shape == (8, 8, 8, 3) and b["label"].shape == (8, 5); '
          'e = list(ip.make_eval_iterator("synthetic", {"crop": 8, "num_classes": 5, "num_eval": 10}, '
          'global_batch=8)); assert sum(x["mask"].sum() for x in e) == 10; '
          'assert "tensorflow" not in sys.modules and "grain" not in sys.modules, sorted(sys.modules)')
  import subprocess
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]


def test_synthetic_is_function_of_seed_and_step():
  pp = {'crop': 8, 'num_classes': 7}
  a = _take(ip.make_train_iterator('synthetic', pp, global_batch=8, seed=1), 3)
  it = ip.make_train_iterator('synthetic', pp, global_batch=8, seed=1)
  it.set_state({'step': 2})
  np.testing.assert_array_equal(next(it)['image'], a[2]['image'])
  other = next(ip.make_train_iterator('synthetic', pp, global_batch=8, seed=2))
  assert not np.array_equal(other['image'], a[0]['image'])
  assert a[0]['image'].min() >= -1 and a[0]['image'].max() <= 1


@pytest.mark.parametrize('dataset,pp', [
    ('digits', {'crop': 12, 'flip': True, 'train_crop': 'inception', 'mixup': 0.2, 'cutmix': 1.0,
                'label_smoothing': 0.1, 'randaug': (2, 5)}),
    ('synthetic', {'crop': 8, 'num_classes': 3, 'mixup': 0.5}),
])
def test_resume_at_step_n_equals_uninterrupted_stream(dataset, pp):
  full = _take(ip.make_train_iterator(dataset, pp, global_batch=32, seed=7, uint8=True), 60)  # > 1 digits epoch.
  it = ip.make_train_iterator(dataset, pp, global_batch=32, seed=7, uint8=True)
  _take(it, 25)
  state = json.loads(json.dumps(it.get_state()))  # Survives a JSON round trip (checkpoint).
  resumed = ip.make_train_iterator(dataset, pp, global_batch=32, seed=7, uint8=True)
  resumed.set_state(state)
  for want in full[25:]:
    got = next(resumed)
    for k in want:
      assert np.array_equal(got[k], want[k]), k


def test_two_processes_read_disjoint_shards_covering_the_split():
  seen = []
  for p in range(2):
    it = ip.make_train_iterator('digits', {}, global_batch=16, seed=0, process_index=p, process_count=2,
                                with_ids=True)
    ids = np.concatenate([b['id'] for b in _take(it, 94)])[:750]  # Half an epoch each.
    assert len(set(ids)) == len(ids) == 750
    seen.append(set(ids.tolist()))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(1500))


def test_epochs_are_reshuffled_and_complete():
  it = ip.make_train_iterator('digits', {}, global_batch=120, seed=0, with_ids=True)
  ids = np.concatenate([b['id'] for b in _take(it, 25)])  # 25 * 120 = 2 epochs.
  e1, e2 = ids[:1500], ids[1500:]
  assert sorted(e1) == sorted(e2) == list(range(1500))
  assert not np.array_equal(e1, e2)


@pytest.mark.parametrize('n_proc', [1, 2, 3])
def test_eval_counts_every_example_exactly_once(n_proc):
  ids, nbatches = [], set()
  for p in range(n_proc):
    batches = list(ip.make_eval_iterator('digits', {}, global_batch=48, process_index=p,
                                         process_count=n_proc, with_ids=True))
    nbatches.add(len(batches))
    for b in batches:
      assert b['image'].shape[0] == 48 // n_proc
      assert np.all(b['image'][b['mask'] == 0] == 0)
      ids += b['id'][b['mask'] == 1].tolist()
  assert len(nbatches) == 1  # Every process runs the same number of eval steps.
  assert sum(1 for _ in ids) == 297 and sorted(ids) == list(range(297))


def test_eval_mask_sums_to_split_size_and_labels_match():
  from sklearn import datasets
  raw = datasets.load_digits()
  total = 0
  for b in ip.make_eval_iterator('digits', {}, global_batch=64, with_ids=True):
    total += b['mask'].sum()
    real = b['mask'] == 1
    test_indices = data_sources.digits_split_indices()['test']
    np.testing.assert_array_equal(b['label'][real].argmax(1), raw.target[test_indices[b['id'][real]]])
  assert total == 297


def test_digits_split_is_fixed_stratified_and_disjoint():
  from sklearn import datasets
  labels = datasets.load_digits().target
  split = data_sources.digits_split_indices()
  train, test = split['train'], split['test']
  assert (len(train), len(test)) == (1500, 297)
  assert not set(train) & set(test) and set(train) | set(test) == set(range(1797))
  # Stratified: every class holds its share of the test set to within one image.
  np.testing.assert_allclose(np.bincount(labels[test]), np.bincount(labels) * 297 / 1797, atol=1)
  # A random draw, not scikit-learn's writer-ordered tail.
  assert 0 < np.mean(test < 1500) < 1


def test_batch_size_errors_are_one_line():
  with pytest.raises(ValueError, match='process count 3'):
    ip.make_train_iterator('digits', {}, global_batch=16, process_index=0, process_count=3)
  with pytest.raises(ValueError, match='not divisible by the 8 devices'):
    ip.make_train_iterator('digits', {}, global_batch=12)
  with pytest.raises(ValueError, match="Unknown pp key"):
    ip.make_train_iterator('digits', {'crpo': 3}, global_batch=8)


def test_prefetch_to_mesh_builds_sharded_global_arrays_and_tracks_state():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  local = ip.make_train_iterator('digits', {}, global_batch=16, seed=0)
  reference = _take(ip.make_train_iterator('digits', {}, global_batch=16, seed=0), 5)
  g = ip.prefetch_to_mesh(local, sharding.batch_sharding(mesh), size=3)
  first = next(g)
  assert isinstance(first['image'], jax.Array) and first['image'].shape == (16, 8, 8, 3)
  assert first['image'].sharding.spec == jax.sharding.PartitionSpec(('data', 'fsdp'))
  assert {s.data.shape for s in first['image'].addressable_shards} == {(4, 8, 8, 3)}
  np.testing.assert_array_equal(np.asarray(first['image']), reference[0]['image'])
  next(g)
  state = g.get_state()  # After 2 batches handed out, even though more were prefetched.
  fresh = ip.make_train_iterator('digits', {}, global_batch=16, seed=0)
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)['image'], reference[2]['image'])
  g.set_state(state)
  np.testing.assert_array_equal(np.asarray(next(g)['image']), reference[2]['image'])
  g.close()


@pytest.mark.parametrize('dataset', ['digits', 'synthetic'])
def test_uint8_batches_scaled_on_the_devices_equal_the_host_floats(dataset):
  """The loop's path (uint8 over the wire, value_range on the devices) gives the host path's batches."""
  mesh = sharding.make_mesh({'data': 4, 'fsdp': 2})
  pp = {'value_range': (0., 1.)} if dataset == 'digits' else {'crop': 8, 'num_classes': 5, 'value_range': (0., 1.)}
  host = _take(ip.make_train_iterator(dataset, pp, global_batch=16, seed=3), 3)
  local = ip.make_train_iterator(dataset, pp, global_batch=16, seed=3, uint8=True)
  assert next(local)['image'].dtype == np.uint8
  local.set_state(ip.make_train_iterator(dataset, pp, global_batch=16, seed=3, uint8=True).get_state())
  g = ip.prefetch_to_mesh(local, sharding.batch_sharding(mesh), value_range=(0., 1.))
  for want in host:
    got = next(g)
    assert got['image'].dtype == np.float32 and got['image'].sharding == sharding.batch_sharding(mesh)
    np.testing.assert_allclose(np.asarray(got['image']), want['image'], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.eye(want['label'].shape[1])[np.asarray(got['label'])], want['label'])
  g.close()


@pytest.mark.parametrize('dataset', ['digits', 'synthetic'])
def test_uint8_batches_are_uint8_images_and_int32_labels_with_mixing_on(dataset):
  pp = {'mixup': 0.5, 'cutmix': 1., 'label_smoothing': 0.1}
  if dataset == 'synthetic':
    pp.update(crop=8, num_classes=21_843)
  train = next(ip.make_train_iterator(dataset, pp, global_batch=16, seed=0, uint8=True))
  ev = next(ip.make_eval_iterator(dataset, {**pp, 'num_eval': 20} if dataset == 'synthetic' else pp,
                                  global_batch=16, uint8=True))
  for b in (train, ev):
    assert b['image'].dtype == np.uint8 and b['label'].dtype == np.int32 and b['label'].shape == (16,)
  host = next(ip.make_eval_iterator(dataset, {**pp, 'num_eval': 20} if dataset == 'synthetic' else pp,
                                    global_batch=16))
  np.testing.assert_array_equal(host['label'].argmax(1), ev['label'])
  with pytest.raises(ValueError, match='applied by the train step'):
    ip.make_train_iterator(dataset, pp, global_batch=16, seed=0)


def test_synthetic_batches_cost_the_host_nothing_and_vary_by_step():
  pp = {'crop': 224, 'num_classes': 1000}
  it = ip.make_train_iterator('synthetic', pp, global_batch=64, seed=0, uint8=True)
  a, b = next(it), next(it)
  assert np.shares_memory(a['image'], b['image'])  # windows of one pool: no per-step image bytes made
  assert not np.array_equal(a['image'], b['image']) and not np.array_equal(a['label'], b['label'])


def test_prefetch_to_mesh_ends_with_eval_stream():
  mesh = sharding.make_mesh({'data': 8})
  g = ip.prefetch_to_mesh(ip.make_eval_iterator('digits', {}, global_batch=128), sharding.batch_sharding(mesh))
  masks = [np.asarray(b['mask']) for b in g]
  assert len(masks) == 3 and sum(m.sum() for m in masks) == 297


def test_prefetch_to_mesh_rejects_indivisible_batch():
  mesh = sharding.make_mesh({'data': 8})
  g = ip.prefetch_to_mesh(ip.make_eval_iterator('synthetic', {'crop': 4, 'num_classes': 2, 'num_eval': 4},
                                                global_batch=8, process_index=0, process_count=2),
                          sharding.batch_sharding(mesh))
  with pytest.raises(ValueError, match='not divisible by the 8 batch shards'):
    next(g)


def test_grain_orbax_handler_saves_and_restores_the_data_position(tmp_path):
  import grain
  import orbax.checkpoint as ocp
  full = _take(ip.make_train_iterator('digits', PP, global_batch=16, seed=5), 6)
  it = ip.make_train_iterator('digits', PP, global_batch=16, seed=5)
  _take(it, 4)
  ckptr = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  ckptr.save(tmp_path / 'data', args=grain.checkpoint.CheckpointSave(it))
  fresh = ip.make_train_iterator('digits', PP, global_batch=16, seed=5)
  restored = ckptr.restore(tmp_path / 'data', args=grain.checkpoint.CheckpointRestore(fresh))
  for want in full[4:]:
    np.testing.assert_array_equal(next(restored)['image'], want['image'])


@pytest.mark.slow
def test_worker_processes_give_the_same_stream_and_resume():
  pp = {'crop': 8, 'randaug': (1, 5)}
  want = _take(ip.make_train_iterator('digits', pp, global_batch=16, seed=2), 4)
  it = ip.make_train_iterator('digits', {**pp, 'workers': 1}, global_batch=16, seed=2)
  got = _take(it, 2)
  state = it.get_state()
  got.append(next(it))
  resumed = ip.make_train_iterator('digits', {**pp, 'workers': 1}, global_batch=16, seed=2)
  resumed.set_state(state)
  got.append(next(resumed))
  for g, w in zip(got, want[:3] + want[2:3]):
    np.testing.assert_array_equal(g['image'], w['image'])
