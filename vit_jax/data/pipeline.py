"""Input pipeline: sources -> per-example ops -> per-process batches -> global sharded jax.Arrays.

Why grain and not tf.data. A tf.data pipeline shuffles through a buffer (250k examples for ImageNet-21k)
whose contents are not part of any checkpoint, so after a preemption it can only restart the epoch or skip
ahead approximately. grain reads random-access sources (TFDS array_record, image lists, numpy arrays) and
shuffles *indices* with a seeded permutation per epoch, so the example at stream position i, and its
augmentation (drawn from `np.random.default_rng([seed, i])`), are pure functions of (seed, i). The
iterator state is a few integers (JSON), saved with every checkpoint; restored at step N it yields
exactly the batches an uninterrupted run yields from step N. Decoding runs in threads (PIL, simplejpeg,
_jpegcrop and OpenCV release the GIL; JPEGs use the fast integer IDCT, the training crop decodes only its
window and, when the crop allows, at reduced DCT scale) or in grain worker processes (`pp.workers`).
Speed against plain tf.data: see scripts/bench_input.py.

Layout. Training: the split is shuffled once per epoch (seed), repeated forever, and process p of P takes
stream positions p, p + P, p + 2P, ... (it reads nothing else); corrupt images are dropped in the main
process (warning naming the file, running count in `iterator.corrupt_images.count`; `strict=True`
raises) and the next example takes the slot, so no other example is lost. Batches of
global_batch // P are stacked as they are: uint8 images and integer labels (int32 class indices, or a
multi-label set's packed bits, `preprocess.label_bits`). With `uint8=True` (the training loop's choice, train and
eval alike) that is what crosses to the devices, where the jitted step scales the pixels to pp.value_range, makes
the (smoothed) targets and applies mixup/cutmix from (seed, step) (`vit_jax.data.mixing`): the host does no
float pass over the pixels (1.2-2.4 s per 512 images at 224 px with mixup on 2 cores before it moved) and sends
a quarter of the image bytes and no dense label rows (87 KB per example at 21,843 classes). With `uint8=False`
`preprocess.finish_batch` makes float32 images and targets on the host, for host-side users; mixing is refused
there. Evaluation: process p takes examples p, p + P, ...; every process yields the same number of batches; the
last are padded with zero images whose `mask` is 0 (a corrupt eval image is also masked out, as is a multi-label
example with an empty label set, e.g. a ReaL image none of whose labels raters kept).

Datasets: see `vit_jax.data.sources` (TFDS names, image folders, 'digits') and 'synthetic' (random images
from (seed, step), windows of a pool made once, so a batch costs the host nothing; imports neither TensorFlow
nor grain). The `pp` keys are documented in
`vit_jax.data.preprocess`.

Checkpointing the data position: save `it.get_state()` (a JSON-able dict; for the mesh prefetcher it is
the state *after the last batch handed out*, not after the prefetched ones) and after re-creating the
iterator call `it.set_state(state)`. The grain iterators (all but synthetic) also work with grain's
Orbax handler: `ocp.args.Composite(data=grain.checkpoint.CheckpointSave(local_it))`.
"""
import dataclasses
import logging
import math
import os
import queue
import threading
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.data import mixing
from vit_jax.data import preprocess
from vit_jax.data import sources as data_sources

PP_KEYS = frozenset({
    'train', 'test', 'crop', 'train_crop', 'area_range', 'aspect_range', 'resize', 'eval_crop', 'flip',
    'randaug', 'randaug_variant', 'mixup', 'cutmix', 'mix_prob', 'label_smoothing', 'value_range',
    'num_classes', 'num_train', 'num_eval', 'workers', 'threads'})
_IMAGENET_TRAIN, _IMAGENET_EVAL = 1_281_167, 50_000
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the loop need to know about a dataset."""
  num_classes: int
  num_train: int
  num_eval: int
  image_size: int
  multi_label: bool = False


def train_batch_spec(info: DatasetInfo, global_batch: int,
                     sharding: jax.sharding.Sharding | None = None) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a global training batch of `make_train_iterator(uint8=True)`."""
  label = ((global_batch, -(-info.num_classes // 8)), jnp.uint8) if info.multi_label else ((global_batch,), jnp.int32)
  return {'image': jax.ShapeDtypeStruct((global_batch, info.image_size, info.image_size, 3), jnp.uint8,
                                        sharding=sharding),
          'label': jax.ShapeDtypeStruct(*label, sharding=sharding)}


def _resolve_pp(pp: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
  """Checks `pp` for unknown keys and fills the defaults (source-specific ones first)."""
  pp = dict(pp.items()) if pp is not None else {}
  unknown = sorted(set(pp) - PP_KEYS)
  if unknown:
    raise ValueError(f'Unknown pp key(s) {unknown}: the keys are {sorted(PP_KEYS)} '
                     '(documented in vit_jax/data/preprocess.py).')
  out = {'train': 'train', 'test': 'test', **defaults}
  out.update({k: v for k, v in pp.items() if v is not None})
  return out


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if not 0 <= p < n:
    raise ValueError(f'process_index={p} is not in [0, process_count={n}).')
  return p, n


def _local_batch(global_batch: int, process_count: int, what: str) -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f'{what}={global_batch} must be a positive multiple of the process count '
                     f'{process_count}: change the batch size.')
  devices = jax.device_count()
  if global_batch % devices:
    raise ValueError(f'{what}={global_batch} is not divisible by the {devices} devices: use a multiple '
                     f'of {devices}.')
  return global_batch // process_count


def _synthetic_pp(pp: Mapping[str, Any] | None) -> dict[str, Any]:
  return _resolve_pp(pp, {'crop': 224, 'num_classes': 1000, 'num_train': _IMAGENET_TRAIN,
                          'num_eval': _IMAGENET_EVAL, 'eval_crop': 'resize'})


def _source(dataset: str, pp: Mapping[str, Any] | None, split_key: str, data_dir: str | None):
  """The source for pp[split_key] and the resolved pp (source defaults applied)."""
  split = (pp or {}).get(split_key) or split_key
  src = data_sources.get_source(dataset, split, data_dir)
  return src, _resolve_pp(pp, {'crop': src.image_size or 224, **src.defaults})


def get_dataset_info(dataset: str, pp: Mapping[str, Any] | None, data_dir: str | None = None) -> DatasetInfo:
  """Number of classes, split sizes, output image side and whether labels are multi-hot."""
  if dataset == 'synthetic':
    p = _synthetic_pp(pp)
    return DatasetInfo(p['num_classes'], p['num_train'], p['num_eval'], p['crop'])
  train, p = _source(dataset, pp, 'train', data_dir)
  test, _ = _source(dataset, pp, 'test', data_dir)
  return DatasetInfo(train.num_classes, len(train.records), len(test.records), p['crop'], train.multi_label)


# ------------------------------------------------------------------------------------------- synthetic
# Synthetic training batches are windows of a pool of local_batch + this many random images, made once.
SYNTHETIC_SHIFTS = 16
# Synthetic eval images cycle through a pool of this many.
SYNTHETIC_EVAL_POOL = 64


class SyntheticIterator:
  """Random images and labels, a pure function of (seed, step, process) at no cost per step: step s takes the
  window of images starting at s % (SYNTHETIC_SHIFTS + 1) of a random pool made once and draws its labels."""

  def __init__(self, pp: Mapping[str, Any], local_batch: int, seed: int, process_index: int,
               uint8: bool = False):
    self._pp, self._b, self._seed, self._p = pp, local_batch, seed, process_index
    self._finish = _FinishBatch(pp, pp['num_classes'], with_ids=True, uint8=uint8)  # The grain iterators' stage.
    c, n = pp['crop'], local_batch + SYNTHETIC_SHIFTS
    pool = np.random.default_rng([seed, process_index]).bytes(n * c * c * 3)
    self._pool = np.frombuffer(pool, np.uint8).reshape(n, c, c, 3)
    self._step = 0

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    shift = self._step % (SYNTHETIC_SHIFTS + 1)
    labels = np.random.default_rng([self._seed, self._step, self._p]).integers(0, self._pp['num_classes'], self._b)
    self._step += 1
    batch = {'image': self._pool[shift:shift + self._b], 'label': labels.astype(np.int32)}
    return self._finish(self._step - 1, batch)

  def get_state(self) -> dict[str, int]:
    return {'step': self._step}

  def set_state(self, state: Mapping[str, int]) -> None:
    self._step = int(state['step'])


class _SyntheticEvalRecords:
  """num_eval fixed random examples for synthetic evaluation (images from a pool, labels per example)."""

  def __init__(self, pp: Mapping[str, Any]):
    self._pp = pp
    c = pp['crop']
    self._pool = np.random.default_rng([1]).integers(0, 256, (SYNTHETIC_EVAL_POOL, c, c, 3), dtype=np.uint8)

  def __len__(self):
    return self._pp['num_eval']

  def __getitem__(self, i):
    label = int(np.random.default_rng([1, i]).integers(0, self._pp['num_classes']))
    return {'image': self._pool[i % SYNTHETIC_EVAL_POOL], 'label': label, 'id': i, 'name': f'synthetic[{i}]'}


# --------------------------------------------------------------------------------------- grain stages
# This many undecodable images in a row is an unreadable dataset (or a broken decoder), not a few bad files: stop
# rather than skip forever without ever filling a batch.
MAX_CORRUPT_IN_A_ROW = 1000


@dataclasses.dataclass
class CorruptImages:
  """Counts (and names, in warnings) the images dropped because they could not be decoded."""
  strict: bool = False
  count: int = 0
  in_a_row: int = 0

  def check(self, msg: str) -> None:
    if self.strict:
      raise preprocess.CorruptImageError(f'{msg} (strict=True: fix or remove the file, or set strict=False '
                                         'to skip such images).')
    self.count += 1
    self.in_a_row += 1
    if self.in_a_row >= MAX_CORRUPT_IN_A_ROW:
      raise preprocess.CorruptImageError(f'{self.in_a_row} images in a row could not be decoded, the last: {msg}. '
                                         'The dataset is unreadable: check its path and format.')
    logging.warning('Skipping corrupt image (%d so far): %s', self.count, msg)


class _TrainMap:
  """Index -> preprocessed example, augmentation from default_rng([seed, index]); marks corrupt images."""

  def __init__(self, pp, seed, num_classes, multi_label):
    self._pp, self._seed, self._k, self._multi = pp, seed, num_classes, multi_label

  def __call__(self, index: int, rec: preprocess.Record) -> preprocess.Record:
    try:
      return preprocess.train_example(rec, np.random.default_rng([self._seed, index]), self._pp,
                                      self._k, self._multi)
    except preprocess.CorruptImageError as e:
      return {'corrupt': str(e)}


class _DropCorrupt:
  """grain filter run in the main process: drops (and counts) corrupt examples."""

  def __init__(self, corrupt: CorruptImages):
    self.corrupt = corrupt

  def __call__(self, ex: preprocess.Record) -> bool:
    if 'corrupt' in ex:
      self.corrupt.check(ex['corrupt'])
      return False
    self.corrupt.in_a_row = 0
    return True


def _mixes(pp: Mapping[str, Any]) -> bool:
  """Whether mixup or cutmix is on (the train step does them, on uint8 batches)."""
  return bool(pp.get('mixup') or pp.get('cutmix'))


class _FinishBatch:
  """Batch-level stage: drops ids unless asked; with `uint8` nothing else, else floats and targets on the host."""

  def __init__(self, pp, num_classes, with_ids, uint8=False):
    self._pp, self._k, self._with_ids, self._uint8 = pp, num_classes, with_ids, uint8

  def __call__(self, step: int, batch: Batch) -> Batch:
    del step  # grain's map_with_index hands it over; the batch is a function of its examples alone.
    if not self._with_ids:
      batch = {k: v for k, v in batch.items() if k != 'id'}
    return batch if self._uint8 else preprocess.finish_batch(batch, self._pp, self._k, smoothing=True)


class _EvalMap:
  """Padded position j of this process -> example p + j * P (mask 1) or padding (mask 0)."""

  def __init__(self, records, pp, num_classes, multi_label, p, n_proc):
    self._recs, self._pp, self._k, self._multi = records, pp, num_classes, multi_label
    self._p, self._n = p, n_proc

  def __call__(self, j: int) -> preprocess.Record:
    i = self._p + j * self._n
    if i < len(self._recs):
      rec = self._recs[i]
      if self._multi and not len(rec['label']):  # No true label (ReaL): skipped as big_vision does, mask 0.
        return {'id': i}
      try:
        ex = preprocess.eval_example(rec, self._pp, self._k, self._multi)
        return {**ex, 'mask': np.float32(1)}
      except preprocess.CorruptImageError as e:
        return {'corrupt': str(e), 'id': i}
    return {'id': -1}


class _PadOrCount:
  """Main-process eval stage: fills padding/corrupt slots with zero images and mask 0."""

  def __init__(self, pp, num_classes, multi_label, corrupt, with_ids, uint8):
    self._pp, self._shape, self._k = pp, (pp['crop'], pp['crop'], 3), num_classes
    self._label = np.zeros((-(-num_classes // 8),), np.uint8) if multi_label else np.int32(0)
    self._corrupt, self._with_ids, self._uint8 = corrupt, with_ids, uint8

  def __call__(self, ex: preprocess.Record) -> preprocess.Record:
    if 'corrupt' in ex:
      self._corrupt.check(ex['corrupt'])
    if 'mask' not in ex:
      ex = {'image': np.zeros(self._shape, np.uint8), 'label': self._label, 'id': ex['id'], 'mask': np.float32(0)}
    if not self._with_ids:
      ex = {k: v for k, v in ex.items() if k != 'id'}
    return ex

  def batch(self, batch: Batch) -> Batch:
    """uint8 as it is, or floats and targets on the host (padding images exactly 0, labels all 0)."""
    if self._uint8:
      return batch
    batch = preprocess.finish_batch(batch, self._pp, self._k)
    batch['image'][batch['mask'] == 0] = 0
    batch['label'][batch['mask'] == 0] = 0
    return batch


def _read_options(pp):
  import grain  # pylint: disable=g-import-not-at-top
  threads = pp.get('threads', os.cpu_count() or 1)
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(16, 4 * threads))


def _maybe_workers(ds, pp):
  import grain  # pylint: disable=g-import-not-at-top
  if pp.get('workers', 0):
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app nobody parsed them.
      flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=pp['workers']))
  return ds


def make_train_iterator(dataset: str, pp: Mapping[str, Any] | None, *, global_batch: int, seed: int = 0,
                        data_dir: str | None = None, strict: bool = False, process_index: int | None = None,
                        process_count: int | None = None, with_ids: bool = False,
                        uint8: bool = False) -> Iterator[Batch]:
  """Endless, checkpointable iterator of this process's training batches (see the module docstring).

  uint8: hand out uint8 images and integer labels, for the train step to finish (`vit_jax.data.mixing`);
  False: float32 images and (smoothed) targets made on the host, which cannot mix (pp.mixup/cutmix refused).
  """
  p, n_proc = _process(process_index, process_count)
  local_b = _local_batch(global_batch, n_proc, 'global_batch')
  if not uint8 and _mixes(pp or {}):
    raise ValueError('pp.mixup/pp.cutmix are applied by the train step on the devices (vit_jax.data.mixing): '
                     'use make_train_iterator(uint8=True) and make_train_step(batch_ops=...).')
  if dataset == 'synthetic':
    return SyntheticIterator(_synthetic_pp(pp), local_b, seed, p, uint8)
  import grain  # pylint: disable=g-import-not-at-top
  src, pp = _source(dataset, pp, 'train', data_dir)
  if not len(src.records):
    raise ValueError(f'Training split {pp["train"]!r} of {dataset!r} is empty.')
  ds = grain.MapDataset.source(data_sources.EpochShuffle(src.records, seed))
  ds = ds.map_with_index(_TrainMap(pp, seed, src.num_classes, src.multi_label))
  ds = ds.slice(slice(p, None, n_proc))
  it = _maybe_workers(ds.to_iter_dataset(_read_options(pp)), pp)
  corrupt = CorruptImages(strict)
  it = it.filter(_DropCorrupt(corrupt)).batch(local_b, drop_remainder=True)
  it = iter(it.map_with_index(_FinishBatch(pp, src.num_classes, with_ids, uint8)))
  it.corrupt_images = corrupt
  return it


def make_eval_iterator(dataset: str, pp: Mapping[str, Any] | None, *, global_batch: int,
                       data_dir: str | None = None, strict: bool = False, process_index: int | None = None,
                       process_count: int | None = None, with_ids: bool = False,
                       uint8: bool = False) -> Iterator[Batch]:
  """This process's eval batches with a `mask`; over all processes every example appears exactly once.

  uint8: uint8 images and integer labels, for the eval step to finish (`vit_jax.data.mixing.eval_batch`);
  False: float32 images in pp.value_range and float32 one-/multi-hot targets made on the host.
  The iterator's `num_classes` is the dataset's label space.
  """
  p, n_proc = _process(process_index, process_count)
  local_b = _local_batch(global_batch, n_proc, 'global_batch')
  if dataset == 'synthetic':
    pp = _synthetic_pp(pp)
    records, k, multi = _SyntheticEvalRecords(pp), pp['num_classes'], False
  else:
    src, pp = _source(dataset, pp, 'test', data_dir)
    records, k, multi = src.records, src.num_classes, src.multi_label
  per_process = math.ceil(len(records) / n_proc)
  num_batches = max(1, math.ceil(per_process / local_b))
  corrupt = CorruptImages(strict)
  load = _EvalMap(records, pp, k, multi, p, n_proc)
  finish = _PadOrCount(pp, k, multi, corrupt, with_ids, uint8)
  if dataset == 'synthetic':  # No grain needed (GPU images may lack it).
    it = _PlainEval(load, finish, num_batches, local_b)
  else:
    import grain  # pylint: disable=g-import-not-at-top
    ds = grain.MapDataset.range(num_batches * local_b).map(load)
    it = iter(ds.to_iter_dataset(_read_options(pp)).map(finish).batch(local_b).map(finish.batch))
  it.corrupt_images = corrupt
  it.num_classes = k  # What the device finish needs (`mixing.BatchOps`): uint8 batches do not carry it.
  return it


class _PlainEval:
  """The eval stream without grain: position j -> finish(load(j)), stacked into batches."""

  def __init__(self, load, finish, num_batches, local_batch):
    self._load, self._finish, self._n, self._b = load, finish, num_batches, local_batch
    self._step = 0

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._step >= self._n:
      raise StopIteration
    exs = [self._finish(self._load(self._step * self._b + j)) for j in range(self._b)]
    self._step += 1
    return self._finish.batch({k: np.stack([e[k] for e in exs]) for k in exs[0]})


# -------------------------------------------------------------------------------------------- devices
def _batch_shards(sharding: jax.sharding.Sharding) -> int:
  """How many ways a NamedSharding splits the batch dimension (1 if it cannot tell)."""
  if not isinstance(sharding, jax.sharding.NamedSharding) or not len(sharding.spec):
    return 1
  axes = sharding.spec[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return math.prod(sharding.mesh.shape[a] for a in axes)


_scale_on_device = jax.jit(mixing.to_float, static_argnums=1)


class MeshPrefetcher:
  """Turns per-process numpy batches into global jax.Arrays on a background thread, `size` ahead; a uint8
  'image' is scaled to `value_range` on the devices when one is given."""

  def __init__(self, local_iterator: Iterator[Batch], sharding: jax.sharding.Sharding, size: int = 2,
               value_range: tuple[float, float] | None = None):
    self._it, self._sharding, self._size = local_iterator, sharding, max(1, size)
    self._range = None if value_range is None else tuple(float(v) for v in value_range)
    self._state = self._local_state()
    self._start()

  def _local_state(self):
    return self._it.get_state() if hasattr(self._it, 'get_state') else None

  def _start(self):
    self._queue: queue.Queue = queue.Queue(self._size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, daemon=True)
    self._thread.start()

  def _to_global(self, batch: Batch) -> dict[str, jax.Array]:
    def put(x):
      x = np.asarray(x)
      shards = _batch_shards(self._sharding)
      if (x.shape[0] * jax.process_count()) % shards:
        raise ValueError(f'Global batch {x.shape[0] * jax.process_count()} is not divisible by the '
                         f'{shards} batch shards of the mesh: use a multiple of {shards}.')
      return jax.make_array_from_process_local_data(self._sharding, x)
    out = jax.tree.map(put, batch)
    if self._range is not None and out['image'].dtype == jnp.uint8:
      out['image'] = _scale_on_device(out['image'], self._range)
    return out

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self):
    try:
      while not self._stop.is_set():
        batch = next(self._it)
        if not self._put((self._to_global(batch), self._local_state())):
          return
    except StopIteration:
      self._put(StopIteration)
    except Exception as e:  # pylint: disable=broad-except
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    item = self._queue.get()
    if item is StopIteration:
      self._put(StopIteration)  # Stay exhausted.
      raise StopIteration
    if isinstance(item, Exception):
      raise item
    batch, self._state = item
    return batch

  def get_state(self) -> Any:
    """The local iterator's state after the last batch handed out (prefetched ones not counted)."""
    return self._state

  def set_state(self, state: Any) -> None:
    """Drops the prefetched batches and continues from `state`."""
    self.close()
    self._it.set_state(state)
    self._state = state
    self._start()

  def close(self) -> None:
    """Stops the background thread."""
    self._stop.set()
    self._thread.join()


def prefetch_to_mesh(local_iterator: Iterator[Batch], sharding: jax.sharding.Sharding, size: int = 2,
                     value_range: tuple[float, float] | None = None) -> MeshPrefetcher:
  """Global batches as jax.Arrays with `sharding` (the loop's `training.sharding.batch_sharding`), `size` ahead.

  value_range: scale uint8 images (`make_train_iterator(uint8=True)`) to this range on the devices.
  """
  return MeshPrefetcher(local_iterator, sharding, size, value_range)
