"""Tests for vit_jax.data.sources through the pipeline: image folders (with a corrupt file) and TFDS."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import pipeline as ip
from vit_jax.data import preprocess
from vit_jax.data import sources as data_sources


def _write_folder(root, split, per_class, corrupt=None, size=(40, 30)):
  """root/split/<class>/<i>.{jpg,png,JPEG}; pixel value 40 + 80 * (sorted class index) encodes the label."""
  for name, n in per_class.items():
    c = sorted(per_class).index(name)
    os.makedirs(root / split / name, exist_ok=True)
    for i in range(n):
      arr = np.full(size[::-1] + (3,), 40 + 80 * c, np.uint8)
      ext = ('jpg', 'png', 'JPEG')[i % 3]
      Image.fromarray(arr).save(root / split / name / f'{i}.{ext}', 'PNG' if ext == 'png' else 'JPEG')
  (root / split / next(iter(per_class)) / 'notes.txt').write_text('ignored')
  if corrupt:
    (root / split / corrupt).write_bytes(b'\xff\xd8\xff\xe0 truncated garbage')


@pytest.fixture(name='folder')
def _folder(tmp_path):
  _write_folder(tmp_path, 'train', {'cat': 9, 'ant': 7, 'bee': 8}, corrupt='cat/broken.jpg')
  _write_folder(tmp_path, 'test', {'cat': 3, 'ant': 2, 'bee': 4})
  return tmp_path


@pytest.mark.parametrize('permute_below', [1 << 20, 1])  # numpy permutation / grain index_shuffle.
def test_epoch_shuffle_is_a_permutation_per_epoch_and_pure(permute_below, monkeypatch):
  monkeypatch.setattr(data_sources.EpochShuffle, '_PERMUTE_BELOW', permute_below)
  recs = list(range(50))
  a = data_sources.EpochShuffle(recs, seed=3)
  epochs = [[a[e * 50 + i] for i in range(50)] for e in range(3)]
  assert all(sorted(e) == recs for e in epochs)
  assert epochs[0] != epochs[1] != epochs[2]
  b = data_sources.EpochShuffle(recs, seed=3)
  assert [b[i] for i in (120, 7, 99)] == [epochs[2][20], epochs[0][7], epochs[1][49]]  # Any order.
  assert [data_sources.EpochShuffle(recs, seed=4)[i] for i in range(50)] != epochs[0]


def test_folder_classes_sorted_and_sizes(folder):
  info = ip.get_dataset_info(str(folder), {'crop': 16})
  assert (info.num_classes, info.num_train, info.num_eval, info.image_size) == (3, 25, 9, 16)
  src = data_sources.image_folder(str(folder), 'test')
  for r in src.records:
    assert os.path.basename(os.path.dirname(r['path'])) == ['ant', 'bee', 'cat'][r['label']]


def test_folder_percent_slices_are_disjoint_random_subsets(folder):
  a = {r['path'] for r in data_sources.image_folder(str(folder), 'train[:60%]').records}
  b = {r['path'] for r in data_sources.image_folder(str(folder), 'train[60%:]').records}
  assert len(a) == 15 and len(b) == 10 and not a & b
  assert len({os.path.dirname(p) for p in b}) > 1  # Not one class cut off.


def test_folder_listing_is_cached_until_a_class_folder_changes(folder, monkeypatch):
  listed = []
  real_listdir = os.listdir
  monkeypatch.setattr(data_sources.os, 'listdir', lambda d: listed.append(d) or real_listdir(d))
  first = data_sources.image_folder(str(folder), 'test').records
  assert len(listed) == 4  # the split folder, then its 3 class folders
  listed.clear()
  assert data_sources.image_folder(str(folder), 'test[:50%]').records[0] == first[0]
  assert listed == [os.path.join(str(folder), 'test')]  # class folders not listed again
  os.remove(first[0]['path'])  # changes that class folder's modification time
  os.utime(os.path.dirname(first[0]['path']), ns=(1, 1))
  again = data_sources.image_folder(str(folder), 'test').records
  assert len(again) == len(first) - 1 and first[0]['path'] not in {r['path'] for r in again}


def test_folder_missing_split_is_one_clear_line(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ip.get_dataset_info(str(tmp_path), {})
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ip.get_dataset_info('/no/such/dir', {})


def _class_of(image):
  return int(round(((image.mean() + 1) / 2 * 255 - 40) / 80))


def test_folder_train_skips_corrupt_file_with_warning_and_loses_nothing_else(folder, caplog):
  pp = {'crop': 16, 'threads': 2}
  it = ip.make_train_iterator(str(folder), pp, global_batch=24, seed=0, with_ids=True)
  with caplog.at_level(logging.WARNING):
    b = next(it)
  assert it.corrupt_images.count == 1
  assert any('broken.jpg' in r.getMessage() for r in caplog.records)
  assert b['image'].shape == (24, 16, 16, 3)
  ids = b['id'].tolist()
  assert len(set(ids)) == 24  # All 24 good images of the epoch, none lost, the corrupt one skipped.
  for img, label in zip(b['image'], b['label']):
    assert _class_of(img) == label.argmax()  # ant=0 (value 40), bee=1 (120), cat=2 (200).


def test_folder_strict_raises_naming_the_file(folder):
  it = ip.make_train_iterator(str(folder), {'crop': 16}, global_batch=24, seed=0, strict=True)
  with pytest.raises(preprocess.CorruptImageError, match=r'broken\.jpg.*strict=True'):
    next(it)
  ev = ip.make_eval_iterator(str(folder), {'crop': 16, 'test': 'train'}, global_batch=8, strict=True)
  with pytest.raises(preprocess.CorruptImageError, match=r'broken\.jpg'):
    list(ev)


def test_folder_eval_masks_corrupt_and_counts_every_example(folder):
  batches = list(ip.make_eval_iterator(str(folder), {'crop': 16, 'test': 'train'}, global_batch=8,
                                       with_ids=True))
  assert sum(b['mask'].sum() for b in batches) == 24  # 25 files, one corrupt.
  ids = np.concatenate([b['id'][b['mask'] == 1] for b in batches])
  assert sorted(ids) == sorted(set(range(25)) - {int(np.concatenate([b['id'] for b in batches])[
      np.concatenate([b['mask'] for b in batches]) == 0][0])})
  for b in batches:
    for img, label, m in zip(b['image'], b['label'], b['mask']):
      if m:
        assert _class_of(img) == label.argmax()


def test_folder_resume_is_exact_with_corrupt_file(folder):
  pp = {'crop': 8, 'randaug': (1, 5)}
  full = [next(it) for it in [ip.make_train_iterator(str(folder), pp, global_batch=8, seed=1)]
          for _ in range(9)]
  it = ip.make_train_iterator(str(folder), pp, global_batch=8, seed=1)
  for _ in range(4):
    next(it)
  resumed = ip.make_train_iterator(str(folder), pp, global_batch=8, seed=1)
  resumed.set_state(it.get_state())
  for want in full[4:]:
    np.testing.assert_array_equal(next(resumed)['image'], want['image'])


# ----------------------------------------------------------------------------------------------- TFDS
@pytest.fixture(scope='module', name='tfds_dir')
def _tfds_dir(tmp_path_factory):
  """A tiny locally generated TFDS dataset, prepared in array_record format (nothing downloads)."""
  tfds = pytest.importorskip('tensorflow_datasets')

  class VitJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """6-class 24x20 images whose pixel value encodes the label."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(num_classes=6)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(30), 'test': self._generate_examples(11)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'image': np.full((20, 24, 3), 40 * (i % 6), np.uint8), 'label': i % 6}

  class VitJaxTinyMultiLabel(VitJaxTinyImages):
    """The same images with two labels each: i % 6 and (i + 1) % 6."""

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(None, None, 3)),
          'labels': tfds.features.Sequence(tfds.features.ClassLabel(num_classes=6))}))

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'image': np.full((20, 24, 3), 40 * (i % 6), np.uint8), 'labels': [i % 6, (i + 1) % 6]}

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  for builder in (VitJaxTinyImages, VitJaxTinyMultiLabel):
    builder(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


@pytest.mark.slow
def test_tfds_source_info_train_and_eval(tfds_dir):
  pp = {'crop': 8, 'train': 'train[:80%]', 'test': 'test'}
  info = ip.get_dataset_info('vit_jax_tiny_images', pp, data_dir=tfds_dir)
  assert (info.num_classes, info.num_train, info.num_eval, info.multi_label) == (6, 24, 11, False)
  b = next(ip.make_train_iterator('vit_jax_tiny_images', pp, global_batch=8, data_dir=tfds_dir))
  assert b['image'].shape == (8, 8, 8, 3) and b['label'].shape == (8, 6)
  for img, label in zip(b['image'], b['label']):
    assert round(((img.mean() + 1) / 2 * 255) / 40) == label.argmax()
  ev = list(ip.make_eval_iterator('vit_jax_tiny_images', pp, global_batch=8, data_dir=tfds_dir,
                                  process_index=1, process_count=2))
  assert sum(b['mask'].sum() for b in ev) == 5  # Examples 1, 3, 5, 7, 9 of 11.


def test_tfds_multi_label_gives_multi_hot(tfds_dir):
  pp = {'crop': 8, 'label_smoothing': 0.2}
  info = ip.get_dataset_info('vit_jax_tiny_multi_label', pp, data_dir=tfds_dir)
  assert info.multi_label and info.num_classes == 6
  b = next(ip.make_train_iterator('vit_jax_tiny_multi_label', pp, global_batch=8, data_dir=tfds_dir))
  for img, label in zip(b['image'], b['label']):
    k = round(((img.mean() + 1) / 2 * 255) / 40)
    want = np.full(6, 0.1, np.float32)
    want[[k, (k + 1) % 6]] = 0.9
    np.testing.assert_allclose(label, want, rtol=1e-6)
  ev = next(ip.make_eval_iterator('vit_jax_tiny_multi_label', pp, global_batch=8, data_dir=tfds_dir))
  np.testing.assert_array_equal(ev['label'].sum(1), 2)  # No smoothing at eval.


def test_tfds_not_prepared_names_dataset_dir_and_command(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(FileNotFoundError) as e:
    ip.get_dataset_info('cifar10', {}, data_dir=str(tmp_path))
  msg = str(e.value)
  assert 'cifar10' in msg and str(tmp_path) in msg and '\n' not in msg
  assert f'tfds build cifar10 --data_dir={tmp_path} --file_format=array_record' in msg
  with pytest.raises(FileNotFoundError, match='manual_dir'):
    ip.get_dataset_info('imagenet2012', {}, data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r'imagenet21k.*python -m vit_jax.prepare_data --input=<the .tar>'):
    ip.get_dataset_info('imagenet21k', {}, data_dir=str(tmp_path))


def test_a_folder_of_only_undecodable_files_stops_instead_of_skipping_forever(tmp_path):
  for i in range(3):
    (tmp_path / 'train' / 'c').mkdir(parents=True, exist_ok=True)
    (tmp_path / 'train' / 'c' / f'{i}.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated garbage')
  it = ip.make_train_iterator(str(tmp_path), {'crop': 16}, global_batch=8, seed=0)
  with pytest.raises(preprocess.CorruptImageError, match=r'1000 images in a row could not be decoded.*unreadable'):
    next(it)
