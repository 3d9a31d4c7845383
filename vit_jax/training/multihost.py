"""`jax.distributed` start-up with timeouts from the config, and a watchdog that ends a job that lost a process.

JAX alone ends the survivors of a lost process only when its coordination service misses heartbeats for
`heartbeat_timeout_seconds` (100 s by default), and then by abort(), with no line saying which process was lost.
The watchdog here makes that bounded and readable:

  * every process bumps its own counter in the coordination service's key-value store every `interval` seconds;
  * process 0 (which hosts the service) notes when each counter last moved; one that has not moved for
    `heartbeat_timeout_s` is a lost process: process 0 publishes its index and stops;
  * every other process reads that key and process 0's counter each interval: it stops on a published loss, on a
    counter of process 0 that does not move, or at once when the service itself is gone (process 0 died).

Stopping is one line on stderr naming the lost process, then exit status `EXIT_PROCESS_LOST` without waiting for
anything (an async checkpoint save in flight is abandoned: Orbax commits a step only once every process wrote its
part, so the newest committed checkpoint stays the one a relaunch resumes from). JAX's own heartbeat timeout is set
to twice ours, as the backstop for a watchdog thread that cannot run (a network gone rather than a process).
When process 0 itself dies, JAX's client usually gets there first: the closed connection to the service makes it
abort the process at once with its own line (its callback cannot be replaced from Python: jaxlib cannot pass the
error status to a Python callable). The load on the service is O(processes) small requests per interval.
"""
import logging
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional

import jax

EXIT_PROCESS_LOST = 5

_KEY = 'vit_jax/watchdog'


def start(*, coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, heartbeat_timeout_s: float, barrier_timeout_s: int) -> 'Watchdog':
  """`jax.distributed.initialize` (cluster auto-detection for what is None), then a started `Watchdog`."""
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
      initialization_timeout=int(barrier_timeout_s),
      heartbeat_timeout_seconds=int(max(2 * heartbeat_timeout_s, heartbeat_timeout_s + 10)))
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  # The client is not public API.
  watchdog = Watchdog(distributed.global_state.client, jax.process_index(), jax.process_count(),
                      heartbeat_timeout_s)
  watchdog.start()
  return watchdog


def _lost(message: str) -> None:
  print(message, file=sys.stderr, flush=True)
  os._exit(EXIT_PROCESS_LOST)  # pylint: disable=protected-access  # Now: threads may be stuck in collectives.


class Watchdog:
  """Ends this process in bounded time once another process of the job is gone (see the module docstring)."""

  def __init__(self, client, index: int, count: int, timeout_s: float, stop: Callable[[str], None] = _lost):
    self._client, self._index, self._count, self._timeout = client, index, count, timeout_s
    self._interval = min(1., timeout_s / 5)
    self._stop = stop
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._run, name='vit_jax_watchdog', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def close(self) -> None:
    """Stops watching (the run ended here); marks this process finished so that no other one misses it."""
    self._done.set()
    self._thread.join()
    try:
      self._client.key_value_set(f'{_KEY}/finished/{self._index}', '1', allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  # The service is gone: nobody is left to miss us.
      pass

  def after_error(self) -> None:
    """Called when this process failed; returns after telling the others, or ends the process.

    The error may be the first sign of a lost process (a collective whose peer died, a checkpoint barrier that lost
    the coordinator): the watchdog is given the time to find it and end this process with its line. Otherwise the
    error is this process's own, and the others are told, so that they stop instead of waiting in a collective.
    """
    self._thread.join(self._timeout + 3 * self._interval)
    self.publish_loss('it failed; see its log')

  def publish_loss(self, why: str, index: Optional[int] = None) -> None:
    """Tells the other processes that process `index` (default: this one) is lost, so that they stop at their
    next interval."""
    try:
      self._client.key_value_set(f'{_KEY}/lost', f'{self._index if index is None else index}:{why}',
                                 allow_overwrite=True)
      time.sleep(3 * self._interval)  # Long enough for every process to read it.
    except Exception:  # pylint: disable=broad-except  # The service is gone: the others find out by themselves.
      pass

  def _who(self, index: int) -> str:
    return f'process {index} of {self._count}' + (' (the coordinator)' if index == 0 else '')

  def _message(self, lost: str, why: str) -> str:
    return (f'Lost {lost}: {why}. Stopping process {self._index} too; start the same command again to resume '
            'from the newest checkpoint.')

  def _get(self, key: str) -> Optional[str]:
    """The value of `key`, None when it is not set (NOT_FOUND is an answer, not a failure of the service)."""
    try:
      return self._client.key_value_try_get(key)
    except Exception as e:  # pylint: disable=broad-except
      if 'NOT_FOUND' in str(e):
        return None
      raise

  def _beats(self) -> Dict[int, Optional[str]]:
    """The counters this process watches (process 0: all others; the others: process 0's), finished ones left out.

    Raises _Published for a process published as lost.
    """
    if self._index == 0:
      finished = {k.rsplit('/', 1)[1] for k, _ in self._client.key_value_dir_get(f'{_KEY}/finished/')}
      beats = dict(self._client.key_value_dir_get(f'{_KEY}/beat/'))
      return {i: beats.get(f'{_KEY}/beat/{i}') for i in range(1, self._count) if str(i) not in finished}
    lost = self._get(f'{_KEY}/lost')
    if lost is not None:
      index, why = lost.split(':', 1)
      raise _Published(int(index), why)
    return {} if self._get(f'{_KEY}/finished/0') is not None else {0: self._get(f'{_KEY}/beat/0')}

  def _run(self) -> None:
    beat, last_value = 0, {}
    last_change = {i: time.monotonic() for i in range(self._count)}
    while not self._done.wait(self._interval):
      beat += 1
      try:
        self._client.key_value_set(f'{_KEY}/beat/{self._index}', str(beat), allow_overwrite=True)
        values = self._beats()
      except _Published as e:
        return self._stop(self._message(self._who(e.index), e.why))
      except Exception as e:  # pylint: disable=broad-except
        if self._done.is_set():
          return None
        if self._index != 0:  # The service runs in process 0: it is gone.
          first = (str(e).splitlines() or [''])[0][:120]
          return self._stop(self._message(self._who(0), f'its coordination service does not answer ({first})'))
        logging.warning('Watchdog: %s', e)
        continue
      now = time.monotonic()
      for i, value in values.items():
        if value != last_value.get(i):
          last_value[i], last_change[i] = value, now
        elif now - last_change[i] > self._timeout:
          why = f'no heartbeat for {self._timeout:g} s'
          if self._index == 0:
            self.publish_loss(why, index=i)
          return self._stop(self._message(self._who(i), why))
    return None


class _Published(Exception):
  """Process `index` was published as lost, for the reason `why`."""

  def __init__(self, index: int, why: str):
    super().__init__(index, why)
    self.index, self.why = index, why
