"""Random-access example sources: TFDS (array_record), image folders, synthetic, scikit-learn digits.

Every source is a sequence: `len(src)` examples, `src[i]` a dict with an integer `id` (its position in
the split), a `label` (int, or a list of ints for multi-label sets) and either `image` (a decoded uint8
HxWx3 array) or `image_bytes` (an encoded image) or `path` (an image file), plus `name` (what a warning
about a corrupt image names). Random access is what makes batches a function of (seed, step).

Embedded digits ('digits'): scikit-learn's copy of the UCI handwritten digits, 1,797 real 8x8 grayscale
images in 10 classes, shipped inside the scikit-learn wheel (nothing downloads). Fixed split: a stratified
random split drawn once with numpy's seed-0 generator (`digits_split_indices`): 297 test images, each class
in proportion, and the other 1,500 for training, both in scikit-learn's order. (scikit-learn's last 297
images come from writers barely seen in the first 1,500; there even an RBF SVM reaches only 95%, which
would measure writer shift rather than the training code.) Pixels 0..16 are scaled to 0..255 and repeated
to 3 channels.

Synthetic ('synthetic'): uniform random images and labels, generated from (seed, step) by
`input_pipeline`; it has no source here because it needs no loader (and must not import TensorFlow).

Image folders ('<root>/<split>/<class>/*.{jpg,jpeg,png}', extension case ignored): classes are the sorted
folder names; the files are put in a fixed pseudo-random order (seed 0), so that 'train[:99%]' and
'train[99%:]' are disjoint random subsets (a held-out set for ImageNet-21k, which has no test split).

Prepared datasets (a folder holding `vit_jax_dataset.json`, local or gs://, written by
`python -m vit_jax.prepare_data`): ArrayRecord shards of encoded images read at random by grain, in the
same fixed order as the image folder they came from, so both give the same batches for a seed.

Split strings for in-memory sources and folders follow TFDS: 'train', 'test[:100]', 'train[10%:]'.
"""
import dataclasses
import functools
import os
import re
import sys
from typing import Any, Sequence

import numpy as np
from etils import epath

from vit_jax import extras
from vit_jax import storage
from vit_jax.data import prepare

DIGITS_NUM_TRAIN = 1500
DIGITS_NUM_TOTAL = 1797
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


@dataclasses.dataclass(frozen=True)
class Source:
  """A random-access split plus what the pipeline needs to know about it."""
  records: Sequence[dict[str, Any]]
  num_classes: int
  image_size: int | None  # Native size when all images share it (digits), else None.
  multi_label: bool = False
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # Source-specific pp defaults.


def parse_split(split: str, sizes: dict[str, int]) -> tuple[str, int, int]:
  """Parses 'name[a:b]' (ints or percents) into (name, start, stop) against the known split sizes."""
  m = re.fullmatch(r'\s*(\w+)\s*(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?\s*', split)
  if not m or m.group(1) not in sizes:
    raise ValueError(f'Unknown split {split!r}: use one of {sorted(sizes)}, optionally sliced like '
                     f"'train[:90%]' or 'test[:100]'.")
  name, n = m.group(1), sizes[m.group(1)]

  def bound(s, default):
    if s is None:
      return default
    v = round(n * int(s[:-1]) / 100) if s.endswith('%') else int(s)
    return max(0, min(n, v + n if v < 0 else v))

  return name, bound(m.group(2), 0), bound(m.group(3), n)


class _Slice(Sequence):
  """A contiguous slice of a sequence of records, re-numbering `id` from 0."""

  def __init__(self, base: Sequence[dict[str, Any]], start: int, stop: int):
    self._base, self._start, self._len = base, start, max(0, stop - start)

  def __len__(self):
    return self._len

  def __getitem__(self, i):
    if not 0 <= i < self._len:
      raise IndexError(i)
    return dict(self._base[self._start + i], id=i)


class _ArrayRecords(Sequence):
  """Records backed by in-memory numpy arrays."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, prefix: str):
    self._images, self._labels, self._prefix = images, labels, prefix

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, i):
    return {'image': self._images[i], 'label': int(self._labels[i]), 'id': i, 'name': f'{self._prefix}[{i}]'}


class EpochShuffle(Sequence):
  """The records repeated forever, each epoch in its own order: a pure function of (seed, position)."""

  # Below this size a cached numpy permutation per epoch is cheapest (grain's index_shuffle costs ~1 ms
  # per lookup on tiny sets); above it, grain's stateless index_shuffle avoids holding a permutation.
  _PERMUTE_BELOW = 1 << 20

  def __init__(self, records: Sequence[dict[str, Any]], seed: int):
    self._records, self._seed, self._n = records, seed, len(records)
    self._perm: tuple[int, np.ndarray] | None = None

  def __len__(self):
    return sys.maxsize

  def _index(self, epoch: int, pos: int) -> int:
    if self._n >= self._PERMUTE_BELOW:
      import grain  # pylint: disable=g-import-not-at-top
      return grain.experimental.index_shuffle(pos, max_index=self._n - 1,
                                              seed=(self._seed + epoch) % 2**32, rounds=4)
    cached = self._perm  # One read: other reader threads may replace it concurrently.
    if cached is None or cached[0] != epoch:
      cached = (epoch, np.random.default_rng([self._seed, epoch]).permutation(self._n))
      self._perm = cached
    return int(cached[1][pos])

  def __getitem__(self, i):
    return self._records[self._index(*divmod(i, self._n))]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits as read-only uint8 (N, 8, 8, 3) images and int64 labels (parsed once per process)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  images = np.repeat(np.round(d.images * (255 / 16)).astype(np.uint8)[..., None], 3, axis=-1)
  labels = d.target.astype(np.int64)
  images.flags.writeable = labels.flags.writeable = False
  return images, labels


@functools.lru_cache(maxsize=1)
def digits_split_indices() -> dict[str, np.ndarray]:
  """Indices into scikit-learn's digits of the fixed 'train' (1,500) and 'test' (297) splits, stratified."""
  _, labels = _digits_arrays()
  num_test = DIGITS_NUM_TOTAL - DIGITS_NUM_TRAIN
  counts = np.bincount(labels)
  quota = counts * num_test / len(labels)
  take = np.floor(quota).astype(int)
  # Largest remainders get the images that flooring left over.
  take[np.argsort(-(quota - take), kind='stable')[:num_test - take.sum()]] += 1
  rng = np.random.default_rng(0)
  test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:take[c]]
                                 for c in range(len(counts))]))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return {'train': train, 'test': test}


def digits(split: str) -> Source:
  """scikit-learn's embedded handwritten digits as uint8 8x8x3 images; see the module docstring."""
  images, labels = _digits_arrays()
  parts = digits_split_indices()
  name, start, stop = parse_split(split, {k: len(v) for k, v in parts.items()})
  idx = parts[name][start:stop]
  recs = _ArrayRecords(images[idx], labels[idx], f'digits/{name}')
  # 8x8 digits: random-resized crops and mirroring destroy them; plain resizing is the sane default.
  return Source(recs, num_classes=10, image_size=8, defaults={'train_crop': 'resize', 'eval_crop': 'resize', 'flip': False})


class _FileRecords(Sequence):
  """Records naming image files."""

  def __init__(self, files: Sequence[tuple[str, int]]):
    self._files = files

  def __len__(self):
    return len(self._files)

  def __getitem__(self, i):
    path, label = self._files[i]
    return {'path': path, 'label': label, 'id': i, 'name': path}


def image_folder(root: str, split: str) -> Source:
  """Images under `root/<split>/<class>/*.{jpg,jpeg,png}`; classes are the sorted folder names."""
  m = re.fullmatch(r'\s*(\w+)', split.split('[')[0])
  name = m.group(1) if m else split
  split_dir = epath.Path(root) / name
  if not split_dir.is_dir():
    raise FileNotFoundError(f'Image folder split {split_dir!r} does not exist: expected '
                            f'{root}/<split>/<class>/*.jpg (split {name!r}).')
  classes = tuple(sorted(c.name for c in split_dir.iterdir() if c.is_dir()))
  if not classes:
    raise FileNotFoundError(f'No class folders in {split_dir!r}: expected {split_dir}/<class>/*.jpg.')
  # Class folders' modification times: a file added or removed changes its folder's, and the listing is redone.
  # (A bucket has no folder times: its listing is cached for the process.)
  stamps = () if storage.is_remote(root) else tuple((split_dir / c).stat().mtime for c in classes)
  files = list(_folder_listing(str(split_dir), classes, stamps))
  _, start, stop = parse_split(split, {name: len(files)})
  return Source(_Slice(_FileRecords(files), start, stop), num_classes=len(classes), image_size=None)


@functools.lru_cache(maxsize=16)
def _folder_listing(split_dir: str, classes: tuple, stamps: tuple) -> tuple:
  """(path, label) of every image under split_dir/<class>/, in a fixed random order; cached per process.

  The dataset info, the train iterator and evaluation each open a split, so without the cache a folder of
  millions of images (ImageNet-21k) would be listed several times per process. `stamps` only keys the cache.
  """
  del stamps
  files = []
  for label, c in enumerate(classes):
    for f in sorted(p.name for p in (epath.Path(split_dir) / c).iterdir()):
      if f.lower().endswith(IMAGE_EXTENSIONS):
        files.append((str(epath.Path(split_dir) / c / f), label))
  # A fixed permutation, so that slices such as 'train[:99%]' / 'train[99%:]' are random, disjoint subsets
  # rather than whole classes.
  return tuple(files[i] for i in np.random.default_rng(0).permutation(len(files)))


class _PreparedRecords(Sequence):
  """A prepared split's ArrayRecord shards, in the image folders' fixed random order."""

  def __init__(self, shard_paths: Sequence[str], num_examples: int):
    # array_record's own source: grain's subclass only adds per-read tracing (~5 us a record).
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    try:
      self._src = array_record_data_source.ArrayRecordDataSource(list(shard_paths))
    except RuntimeError as e:  # array_record reads local and gs:// paths itself.
      raise FileNotFoundError(f'Cannot open the prepared shards {shard_paths[0]}...: {e}. Check the path and, '
                              'for gs://, the credentials; or run prepare_data again.') from None
    if len(self._src) != num_examples:
      raise ValueError(f'Prepared shards {shard_paths[0]}... hold {len(self._src)} records, the metadata says '
                       f'{num_examples}: the dataset is damaged; run prepare_data again.')
    self._order = prepare.sorted_permutation(num_examples).astype(np.int32)

  def __len__(self):
    return len(self._order)

  def __getitem__(self, i):
    label, name, data = prepare.decode_record(memoryview(self._src[int(self._order[i])]))
    return {'image_bytes': data, 'label': label, 'id': i, 'name': name}


def prepared_source(root: str, split: str, meta: dict[str, Any]) -> Source:
  """A dataset written by `python -m vit_jax.prepare_data` (see vit_jax/data/prepare.py)."""
  if meta.get('format') != prepare.FORMAT:
    raise ValueError(f'{root}/{prepare.METADATA} has format {meta.get("format")!r}, not {prepare.FORMAT!r}: '
                     'prepare the dataset again with this version of vit_jax.prepare_data.')
  sizes = {k: v['num_examples'] for k, v in meta['splits'].items()}
  name, start, stop = parse_split(split, sizes)
  paths = [os.fspath(epath.Path(root) / s) for s in meta['splits'][name]['shards']]
  return Source(_Slice(_PreparedRecords(paths, sizes[name]), start, stop), num_classes=len(meta['classes']),
                image_size=None)


def _tfds_prepare_hint(builder, data_dir: str | None) -> str:
  d = f' --data_dir={data_dir}' if data_dir else ''
  cmd = f'tfds build {builder.name}{d} --file_format=array_record'
  if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    return (f'download its archives by hand into <manual_dir> (see the TFDS catalog page for {builder.name}), '
            f'then run `{cmd} --manual_dir=<manual_dir>`')
  return f'run `{cmd}`'


def _imagenet21k_hint(data_dir: str | None) -> str:
  return (
      "'imagenet21k' is not in the TFDS catalog: download the release tar from image-net.org by hand, run "
      '`python -m vit_jax.prepare_data --input=<the .tar> --output=<dir>` and set dataset=<dir>, '
      'pp.train="train[:99%]", pp.test="train[99%:]" (see the README, "ImageNet-21k").')


class _TfdsRecords(Sequence):
  """Records over a `tfds.data_source`, with images left encoded so that preprocess decodes them."""

  def __init__(self, src, name: str, image_key: str, label_key: str):
    self._src, self._name, self._image_key, self._label_key = src, name, image_key, label_key

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i):
    ex = self._src[i]
    label = ex[self._label_key]
    label = [int(x) for x in np.atleast_1d(label)] if np.ndim(label) else int(label)
    img = ex[self._image_key]
    key = 'image_bytes' if isinstance(img, bytes) else 'image'
    return {key: img, 'label': label, 'id': i, 'name': f'{self._name}[{i}]'}


def tfds_source(name: str, split: str, data_dir: str | None) -> Source:
  """A prepared TFDS image-classification dataset read through `tfds.data_source` (array_record)."""
  tfds = extras.require('tensorflow_datasets', 'tfds', f'Dataset {name!r} (a TFDS name)')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    if name.startswith('imagenet21k'):
      raise FileNotFoundError(f'Dataset {name!r} not found (data_dir={data_dir!r}): {_imagenet21k_hint(data_dir)}') from None
    raise ValueError(f'Unknown dataset {name!r}: not a TFDS builder, an image folder, "synthetic" or '
                     f'"digits" ({type(e).__name__}).') from None
  formats = {str(getattr(f, 'value', f)) for f in _file_formats(builder)}
  if not builder.is_prepared() or 'array_record' not in formats:
    state = 'is prepared only as ' + ','.join(sorted(formats)) if builder.is_prepared() else 'is not prepared'
    raise FileNotFoundError(f'TFDS dataset {name!r} {state} in {builder.data_dir!r} (random access needs '
                            f'array_record): {_tfds_prepare_hint(builder, data_dir)}.')
  features = builder.info.features
  image_key = 'image' if 'image' in features else next(
      k for k, f in features.items() if isinstance(f, tfds.features.Image))
  # 'real_label': imagenet2012_real's ReaL label sets (multi-label; its 'original_label' is the ImageNet one).
  label_key = next((k for k in ('label', 'real_label') if k in features), 'labels')
  label_feature = features[label_key]
  multi_label = isinstance(label_feature, tfds.features.Sequence)
  if multi_label:
    label_feature = label_feature.feature
  src = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                         decoders={image_key: tfds.decode.SkipDecoding()})
  return Source(_TfdsRecords(src, f'{name}/{split}', image_key, label_key),
                num_classes=label_feature.num_classes, image_size=None, multi_label=multi_label)


def _file_formats(builder) -> list[Any]:
  info = builder.info
  fmts = list(getattr(info, 'alternative_file_formats', []) or [])
  fmt = getattr(info, 'file_format', None)
  return fmts + ([fmt] if fmt is not None else [])


def get_source(dataset: str, split: str, data_dir: str | None = None) -> Source:
  """The random-access source for a dataset name ('digits', an image folder path, or a TFDS name)."""
  if dataset == 'digits':
    return digits(split)
  meta = prepare.read_metadata(dataset) if '/' in dataset or epath.Path(dataset).is_dir() else None
  if meta is not None:
    return prepared_source(dataset, split, meta)
  if epath.Path(dataset).is_dir():
    return image_folder(dataset, split)
  if '/' in dataset:
    raise FileNotFoundError(f'Image folder {dataset!r} does not exist (dataset must be a TFDS name, a '
                            'directory <root>/<split>/<class>/*.jpg, the output of vit_jax.prepare_data, '
                            '"synthetic" or "digits").')
  return tfds_source(dataset, split, data_dir)
