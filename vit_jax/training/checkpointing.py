"""Orbax checkpoints of the train state plus the input pipeline's position, with a corrupt-checkpoint fallback.

Layout: `<workdir>/checkpoints/<step>/{state, data}`. `state` is the sharded `TrainState` (params, optimizer
state, step, RNG, EMA) written asynchronously by `ocp.PyTreeCheckpointHandler`; `data` is each process's
iterator state as JSON (`process_<i>-of-<n>.json`, the layout of grain's own Orbax handler, but for any iterator
with `get_state()`/`set_state()`, the synthetic one and `prefetch_to_mesh`'s included).

The directory is local or a URL (gs://...; Orbax reads and writes through epath and tensorstore). Orbax writes
a step into a temporary directory and renames it (or, in a bucket, marks it) when complete, so a crash mid-save
never touches the previous checkpoints. Restoring a step ends in one of four ways, the same on every process:
  * it restores;
  * it is unreadable (truncated or corrupted files, missing files): reported in one line, set aside as
    `<step>.corrupt` and the previous one tried;
  * it does not match the state the config builds (another tree or other shapes, found from the checkpoint's
    metadata before any array is read): `CheckpointMismatch` naming the first differing parameter; nothing
    renamed;
  * the storage fails in a way that may pass (network, permission, throttling): retried with backoff, then
    `CheckpointUnavailable` naming the error; nothing renamed.
"""
import dataclasses
import errno
import json
import logging
import time
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vit_jax import storage


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


def checkpoint_dir(path: epath.PathLike) -> epath.Path:
  """The directory holding step checkpoints for a workdir (its `checkpoints/`) or such a directory itself."""
  sub = epath.Path(path) / 'checkpoints'
  return sub if sub.is_dir() else epath.Path(path)


class CheckpointMismatch(ValueError):
  """A checkpoint holds another tree or other shapes than the state the config builds."""


class CheckpointUnavailable(RuntimeError):
  """The checkpoint's storage kept failing (network, permission, throttling) after the retries."""

  def __init__(self, message: str, detail: str = ''):
    super().__init__(message)
    self.detail = detail  # The last error, in one line.


# Restore outcomes, ordered so that the most cautious one wins when processes disagree.
_OK, _CORRUPT, _TRANSIENT, _MISMATCH = range(4)
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.EACCES, errno.EPERM, errno.EAGAIN}
# Words of gRPC/HTTP statuses (tensorstore reports them as text) for failures that may pass.
_TRANSIENT_WORDS = ('UNAVAILABLE', 'DEADLINE_EXCEEDED', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'UNAUTHENTICATED',
                    'Connection refused', 'Connect call failed', 'Cannot connect to host', 'timed out',
                    'HTTP response code: 429', 'HTTP response code: 503', 'Too Many Requests')


def _is_transient(e: BaseException) -> bool:
  """True for an error of the storage that may pass (network, permission, throttling), along its causes."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, (ConnectionError, TimeoutError, PermissionError)):
      return True
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
      return True
    if type(e).__module__.startswith('aiohttp') and isinstance(e, OSError):  # ClientConnectorError and kin.
      return True
    if any(w in str(e) for w in _TRANSIENT_WORDS):
      return True
    e = e.__cause__ or e.__context__
  return False


def _one_line(e: BaseException) -> str:
  return f'{type(e).__name__}: ' + (str(e).strip().splitlines() or [''])[0][:200]


def _agree(code: int) -> int:
  """The most cautious outcome over all processes, so that every process takes the same decision."""
  if jax.process_count() == 1:
    return code
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.max(multihost_utils.process_allgather(np.asarray([code], np.int32))))


def _mismatch(metadata: Any, abstract_state: Any) -> Optional[str]:
  """'<param>: <shape on disk> on disk, <shape now> now' for the first difference of tree or shape, else None."""
  def names(tree, is_leaf=None):  # '/'-joined keys: Orbax's metadata has dicts where the state has dataclasses.
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path): v
            for path, v in flat}
  on_disk = names(metadata, is_leaf=lambda x: hasattr(x, 'shape'))
  wanted = names(abstract_state)
  for name, leaf in wanted.items():
    if name not in on_disk:
      return f'{name}: missing on disk, shape {tuple(leaf.shape)} now'
    disk_shape = getattr(on_disk[name], 'shape', None)
    if disk_shape is not None and tuple(disk_shape) != tuple(leaf.shape):
      return f'{name}: shape {tuple(disk_shape)} on disk, {tuple(leaf.shape)} now'
  extra = sorted(set(on_disk) - set(wanted))
  return f'{extra[0]}: on disk, not in the state now' if extra else None


class Checkpointer:
  """`ocp.CheckpointManager` for (train state, data state): periodic async saves, keep policy, safe restore."""

  def __init__(self, directory: epath.PathLike, *, save_every: int, keep: int = 3, keep_every: int = 0,
               read_only: bool = False, retries: int = 2, backoff_s: float = 2., barrier_timeout_s: int = 1200):
    self.directory = storage.absolute(directory)
    self._retries, self._backoff_s = retries, backoff_s
    self._options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_every or None,
        enable_async_checkpointing=True, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only,
        # How long the processes wait for each other to commit an async save.
        async_options=ocp.AsyncOptions(timeout_secs=barrier_timeout_s))
    self._manager = self._retrying(self._open, f'open {self.directory}')

  def _retrying(self, fn, what: str):
    """fn(), retried with backoff while the storage fails in a way that may pass; then CheckpointUnavailable.

    (gcsfs and tensorstore retry each request themselves too; this covers failures that outlast them.)
    """
    for attempt in range(self._retries + 1):
      try:
        return fn()
      except Exception as e:  # pylint: disable=broad-except
        if not _is_transient(e):
          raise
        if attempt == self._retries:
          raise CheckpointUnavailable(
              f'Cannot {what}: {_one_line(e)} (after {attempt + 1} attempts); nothing was renamed. Check the '
              'network, the credentials and the permissions on the path, then start the run again.',
              detail=f'{_one_line(e)} (after {attempt + 1} attempts)') from None
        logging.warning('Checkpoint storage error (%s); retrying in %.0f s.', _one_line(e),
                        self._backoff_s * 2 ** attempt)
        time.sleep(self._backoff_s * 2 ** attempt)

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
    An unreadable newest checkpoint is reported, renamed `<step>.corrupt` and the one before it tried; one that
    does not match `abstract_state` raises CheckpointMismatch, a storage that keeps failing CheckpointUnavailable
    (see the module docstring). All processes take the same decision.
    """
    steps = [step] if step is not None else self._retrying(self.all_steps, f'list {self.directory}')[::-1]
    for s in steps:
      path = self.directory / str(s)
      code, detail, restored = self._attempt(s, abstract_state)
      code = _agree(code)
      if code == _OK:
        return s, restored['state'], restored['data']
      if code == _MISMATCH:
        raise CheckpointMismatch(
            f'Checkpoint {path} does not match the model the config builds ({detail or "on another process"}); '
            'use a new workdir, or warm-start from it with config.resume (same shapes) or config.model_init '
            '(a published .npz).')
      if code == _TRANSIENT:
        raise CheckpointUnavailable(
            f'Cannot read checkpoint {path}: {detail or "a storage error on another process"}; nothing was '
            'renamed. Check the network, the credentials and the permissions on the path, then start again.')
      print(f'Checkpoint {path} is unreadable ({detail or "on another process"}); falling back to the previous '
            'one.', flush=True)
      if step is not None:
        raise ValueError(f'Checkpoint {path} is unreadable ({detail}).')
      self._set_aside(s)
    return None

  def _attempt(self, step: int, abstract_state: Any) -> Tuple[int, str, Any]:
    """(outcome code, one-line detail, restored items) of restoring `step` on this process.

    The metadata (tree and shapes) is compared with `abstract_state` first, so that a checkpoint of another
    model is named as such instead of failing somewhere inside the array reads.
    """
    def read():
      if abstract_state is not None:
        metadata = self._manager.item_metadata(step)['state']
        if metadata is None:
          raise FileNotFoundError(f'no state metadata in step {step}')
        diff = _mismatch(metadata, abstract_state)
        if diff:
          return _MISMATCH, diff, None
      state_args = ocp.args.PyTreeRestore() if abstract_state is None else ocp.args.PyTreeRestore(
          abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
      return _OK, '', self._manager.restore(step, args=ocp.args.Composite(state=state_args,
                                                                          data=ProcessJsonRestore()))
    try:
      return self._retrying(read, f'read checkpoint {self.directory / str(step)}')
    except CheckpointUnavailable as e:
      return _TRANSIENT, e.detail, None
    except Exception as e:  # pylint: disable=broad-except  # Anything else that fails to read: unusable bytes.
      return _CORRUPT, _one_line(e), None

  def _set_aside(self, step: int) -> None:
    """Renames a corrupt step directory so that it is neither restored nor overwritten, and is kept to inspect."""
    if jax.process_index() == 0:
      src = self.directory / str(step)
      if src.is_dir():
        src.rename(self.directory / f'{step}.corrupt')
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
