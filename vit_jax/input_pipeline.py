"""google-research/vision_transformer's `vit_jax.input_pipeline`, as its colabs call it, over our data pipeline.

`get_datasets(config)`, `get_data_from_tfds(config=, mode=)` and `get_data_from_directory(config=, directory=,
mode=)` return re-iterable batches in the reference's layout: `{'image': [local devices, batch / devices, H, W, 3]
float32 in [-1, 1], 'label': one-hot [local devices, batch / devices, classes]}`; `.as_numpy_iterator()` as on a
tf.data.Dataset. Training batches repeat forever; test batches are one pass without the last partial batch, as
there. The examples are those of `vit_jax.data.pipeline` (no TensorFlow), with configs/finetune.py's crops unless
`config.pp` picks others. `prefetch(batches, n)` puts `n` batches ahead on the devices.
"""
import collections
import os
from typing import Any, Callable, Dict, Iterator, Tuple

import jax
import numpy as np

from vit_jax.configs import reference_compat
from vit_jax.data import pipeline
from vit_jax.data import sources

Batch = Dict[str, np.ndarray]


class Batches:
  """Re-iterable batches with a leading local-device axis; each `iter()` starts a fresh pass."""

  def __init__(self, make_iterator: Callable[[], Iterator[Batch]], drop_partial: bool):
    self._make_iterator = make_iterator
    self._drop_partial = drop_partial

  def __iter__(self) -> Iterator[Batch]:
    devices = jax.local_device_count()
    for batch in self._make_iterator():
      if self._drop_partial and 'mask' in batch and not np.all(batch['mask']):
        return  # the reference drops the remainder of an eval pass
      yield {k: np.asarray(batch[k], np.float32).reshape((devices, -1) + batch[k].shape[1:])
             for k in ('image', 'label')}

  def as_numpy_iterator(self) -> Iterator[Batch]:
    return iter(self)


def _pp(config: Any, mode: str, split: str) -> Dict[str, Any]:
  """Our pp for `mode` from the config's (ours or the reference's), reading `split`."""
  pp = {**reference_compat.FINETUNE_PP, **{k: v for k, v in (config.pp or {}).items() if v is not None}}
  return {**pp, mode: split}


def _batches(config: Any, dataset: str, mode: str, split: str) -> Batches:
  if mode not in ('train', 'test'):
    raise ValueError(f'mode={mode!r}: use "train" or "test".')
  pp, data_dir = _pp(config, mode, split), config.get('tfds_data_dir')
  if mode == 'train':
    return Batches(lambda: pipeline.make_train_iterator(dataset, pp, global_batch=config.batch,
                                                        seed=config.get('seed') or 0, data_dir=data_dir), False)
  return Batches(lambda: pipeline.make_eval_iterator(dataset, pp, global_batch=config.batch_eval,
                                                     data_dir=data_dir), True)


def get_data_from_tfds(*, config: Any, mode: str) -> Batches:
  """Batches of the prepared TFDS set `config.dataset`, split `config.pp[mode]`."""
  return _batches(config, config.dataset, mode, config.pp[mode])


def get_data_from_directory(*, config: Any, directory: str, mode: str) -> Batches:
  """Batches of the image folder `directory` (`<directory>/<class>/<image>`)."""
  root, split = os.path.split(os.path.normpath(directory))
  return _batches(config, root, mode, split)


def get_datasets(config: Any) -> Tuple[Batches, Batches]:
  """(train, test) batches: `config.dataset`'s train/ and test/ folders when it is a folder, else TFDS."""
  if os.path.isdir(config.dataset):
    train_dir, test_dir = (os.path.join(config.dataset, s) for s in ('train', 'test'))
    if not os.path.isdir(train_dir):
      raise ValueError(f'Expected the folders {train_dir} and {test_dir}.')
    return (get_data_from_directory(config=config, directory=train_dir, mode='train'),
            get_data_from_directory(config=config, directory=test_dir, mode='test'))
  return get_data_from_tfds(config=config, mode='train'), get_data_from_tfds(config=config, mode='test')


def get_dataset_info(dataset: str, split: str) -> Dict[str, Any]:
  """num_examples, num_classes, int2str (class id -> name) and examples_glob (folders; None for TFDS)."""
  directory = os.path.join(dataset, split)
  if os.path.isdir(directory):
    names = sorted(d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d)))
    source = sources.image_folder(dataset, split)
    return dict(num_examples=len(source.records), num_classes=len(names), int2str=names.__getitem__,
                examples_glob=f'{directory}/*/*.jpg')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  info = tfds.builder(dataset).info
  return dict(num_examples=info.splits[split].num_examples, num_classes=info.features['label'].num_classes,
              int2str=info.features['label'].int2str, examples_glob=None)


def prefetch(dataset: Any, n_prefetch: int) -> Iterator[Batch]:
  """The batches as arrays split over the local devices along their first axis, `n_prefetch` of them ahead
  (0: host numpy arrays)."""
  batches = (jax.tree.map(np.asarray, b) for b in dataset)
  if not n_prefetch:
    yield from batches
    return
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('devices',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('devices'))
  queue = collections.deque()
  for batch in batches:
    queue.append(jax.device_put(batch, sharding))
    if len(queue) > n_prefetch:
      yield queue.popleft()
  yield from queue
