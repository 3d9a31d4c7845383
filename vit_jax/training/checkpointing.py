"""Orbax checkpoints of the train state plus the input pipeline's position, with a corrupt-checkpoint fallback.

Layout: `<workdir>/checkpoints/<step>/{state, data}`. `state` is the sharded `TrainState` (params, optimizer
state, step, RNG, EMA) written asynchronously by `ocp.PyTreeCheckpointHandler`; `data` is each process's
iterator state as JSON (`process_<i>-of-<n>.json`, the layout of grain's own Orbax handler, but for any iterator
with `get_state()`/`set_state()`, the synthetic one and `prefetch_to_mesh`'s included).

Orbax writes a step into a temporary directory and renames it when complete, so a crash mid-save never touches
the previous checkpoints. A finished checkpoint that later turns out unreadable (truncated or corrupted files)
is reported in one line, set aside as `<step>.corrupt` and the previous one restored instead.
"""
import dataclasses
import json
import logging
import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


class ProcessJsonHandler(ocp.CheckpointHandler):
  """Saves a JSON-able value per process (`process_<i>-of-<n>.json`); restore returns this process's value."""

  @staticmethod
  def _file(directory: epath.Path) -> epath.Path:
    return directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'

  def save(self, directory: epath.Path, args: 'ProcessJsonSave') -> None:
    self._file(directory).write_text(json.dumps(args.item))

  def restore(self, directory: epath.Path, args: Optional['ProcessJsonRestore'] = None) -> Any:
    del args
    path = self._file(directory)
    if not path.exists():
      raise FileNotFoundError(f'{path} is missing: the checkpoint was written by a different process count.')
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> None:
    del directory


@ocp.args.register_with_handler(ProcessJsonHandler, for_save=True)
@dataclasses.dataclass
class ProcessJsonSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(ProcessJsonHandler, for_restore=True)
@dataclasses.dataclass
class ProcessJsonRestore(ocp.args.CheckpointArgs):
  pass


def _type_handlers() -> Any:
  """Orbax's array handlers, without replica-parallel writes on CPU.

  Replica-parallel saving splits each replicated array across its replicas so that hosts write in parallel;
  it compiles one slicing program per array shape, which on CPU (one host, no I/O to spread) only costs
  start-up time.
  """
  th = ocp.type_handlers
  parallel = jax.default_backend() != 'cpu'
  return th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (jax.Array, th.ArrayHandler(use_replica_parallel=parallel)), (str, th.StringHandler()))


def checkpoint_dir(path: str) -> str:
  """The directory holding step checkpoints for a workdir (its `checkpoints/`) or such a directory itself."""
  sub = os.path.join(path, 'checkpoints')
  return sub if os.path.isdir(sub) else path


class Checkpointer:
  """`ocp.CheckpointManager` for (train state, data state): periodic async saves, keep policy, safe restore."""

  def __init__(self, directory: str, *, save_every: int, keep: int = 3, keep_every: int = 0,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self._options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_every or None,
        enable_async_checkpointing=True, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options, item_handlers={
        'state': ocp.PyTreeCheckpointHandler(type_handler_registry=_type_handlers()),
        'data': ProcessJsonHandler()})

  def all_steps(self) -> list:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> bool:
    """Starts an async save of `state` and `data_state` at `step` if due (or `force`); True if started."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=ProcessJsonSave(data_state)), force=force)

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> Optional[Tuple[int, Any, Any]]:
    """(step, state, data_state) of `step` or of the newest readable checkpoint; None when there is none.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct`s with shardings: arrays come back sharded like it.
    An unreadable newest checkpoint is reported, renamed `<step>.corrupt` and the one before it tried.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    for s in steps:
      try:
        state_args = ocp.args.PyTreeRestore() if abstract_state is None else ocp.args.PyTreeRestore(
            abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
        restored = self._manager.restore(s, args=ocp.args.Composite(state=state_args, data=ProcessJsonRestore()))
        return s, restored['state'], restored['data']
      except Exception as e:  # pylint: disable=broad-except  # Any failure to read means: unusable.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f'Checkpoint {os.path.join(self.directory, str(s))} is unreadable ({type(e).__name__}: '
              f'{reason}); falling back to the previous one.', flush=True)
        if step is not None:
          raise
        self._set_aside(s)
    return None

  def _set_aside(self, step: int) -> None:
    """Renames a corrupt step directory so that it is neither restored nor overwritten, and is kept to inspect."""
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      if os.path.isdir(src):
        os.replace(src, src + '.corrupt')
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'set_aside_{step}')
    self._manager.close()
    self._manager = self._open()

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
    logging.info('Checkpoints in %s: steps %s', self.directory, self.all_steps())
