"""`jax.distributed` start-up with timeouts from the config, and a watchdog that ends a job that lost a process.

JAX alone ends the survivors of a lost process only when its coordination service misses heartbeats for
`heartbeat_timeout_seconds` (100 s by default), and then by abort(), with no line saying which process was lost.
The watchdog here makes that bounded and readable:

  * every process bumps its own counter in the coordination service's key-value store every `interval` seconds;
  * process 0 (which hosts the service) notes when each counter last moved; one that has not moved for
    `heartbeat_timeout_s` is a lost process: process 0 publishes its index and stops;
  * every other process reads that key and process 0's counter each interval, and stops on a published loss or on
    a counter of process 0 that does not move;
  * every other process also knocks at the service's TCP port each interval (a second thread, as a call into a
    service that is gone can hang): a refused connection means nothing listens there any more, process 0 is gone,
    and it stops at once. A slow but alive process 0 never refuses (its kernel accepts for it), and a service that
    errs or hangs without refusing is lost only after `heartbeat_timeout_s` without an answer.

Stopping is one line on stderr naming the lost process, then exit status `EXIT_PROCESS_LOST` without waiting for
anything (an async checkpoint save in flight is abandoned: Orbax commits a step only once every process wrote its
part, so the newest committed checkpoint stays the one a relaunch resumes from). JAX's own heartbeat timeout is set
to four times ours (at least ours + 30 s), as the backstop for a watchdog thread that cannot run (a network gone
rather than a process). Its service declares a process dead between half its timeout and its whole timeout after
the death (a process's last heartbeat can be up to half a timeout old), so at only twice ours it could abort
process 0, unexplained, in the same second as our watchdog's line (seen once on a loaded 2-core machine).

When process 0 dies, JAX's client in every other process sees its long-polling error RPC fail at once and calls
its missed-heartbeat callback, whose default logs "Terminating process because the JAX distributed service
detected fatal errors" and aborts. That callback cannot be ours: jaxlib takes a Python callable for it, but calls it
with an `absl::Status` that nanobind cannot convert, so it ends in `std::bad_cast` and an abort all the same. So
the other processes make an abort wait instead (`_delay_aborts`): their SIGABRT handler is libc's `sleep`, which
holds the aborting thread for 6 s (the signal's number), time for the port knock (within a second) to end the
process with our line. An abort the watchdog does not explain still ends the process, 6 s later, as before.
The load on the service is O(processes) small requests and connections per interval.
"""
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, Dict, Optional

EXIT_PROCESS_LOST = 5

_KEY = 'vit_jax/watchdog'


def start(*, coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, heartbeat_timeout_s: float, barrier_timeout_s: int) -> 'Watchdog':
  """`jax.distributed.initialize` (cluster auto-detection for what is None), then a started `Watchdog`."""
  import jax  # pylint: disable=g-import-not-at-top  # Here: the watchdog itself runs (and is tested) without it.
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
      initialization_timeout=int(barrier_timeout_s),
      heartbeat_timeout_seconds=int(max(4 * heartbeat_timeout_s, heartbeat_timeout_s + 30)))
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  # The client is not public API.
  watchdog = Watchdog(distributed.global_state.client, jax.process_index(), jax.process_count(),
                      heartbeat_timeout_s, coordinator=distributed.global_state.coordinator_address,
                      delay_aborts=True)
  watchdog.start()
  return watchdog


def _delay_aborts() -> Optional[Callable[[], None]]:
  """Makes an abort of this process wait 6 s first; returns the undo, None where libc's `signal` is not reachable.

  The handler is libc's `sleep`, called with the signal's number, 6: abort() runs it in the aborting thread and,
  once it returns, ends the process by SIGABRT regardless. A Python handler could not do this: Python runs it later
  in the main thread, and abort() does not wait for that.
  """
  try:
    libc = ctypes.CDLL(None)
    handler = ctypes.cast(libc.sleep, ctypes.c_void_p)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
  except (OSError, AttributeError):
    return None
  previous = libc.signal(signal.SIGABRT, handler)
  if previous == ctypes.c_void_p(-1).value:  # SIG_ERR
    return None
  return lambda: libc.signal(signal.SIGABRT, previous)


def _refused(address: str, timeout_s: float) -> bool:
  """Whether a TCP connection to `address` (host:port) is refused: nothing listens there (a timeout is not that)."""
  host, port = address.rsplit(':', 1)
  try:
    socket.create_connection((host.strip('[]'), int(port)), timeout=timeout_s).close()
  except ConnectionRefusedError:
    return True
  except OSError:  # A timeout, an unreachable network: not proof; the heartbeat decides.
    return False
  return False


def _lost(message: str) -> None:
  print(message, file=sys.stderr, flush=True)
  os._exit(EXIT_PROCESS_LOST)  # pylint: disable=protected-access  # Now: threads may be stuck in collectives.


class Watchdog:
  """Ends this process in bounded time once another process of the job is gone (see the module docstring)."""

  def __init__(self, client, index: int, count: int, timeout_s: float, stop: Callable[[str], None] = _lost,
               coordinator: Optional[str] = None, delay_aborts: bool = False):
    """`coordinator`: the service's host:port, knocked at by every process but 0; `delay_aborts`: see
    `_delay_aborts` (for a process of its own: it sets a process-wide signal handler)."""
    self._client, self._index, self._count, self._timeout = client, index, count, timeout_s
    self._coordinator, self._delay_aborts, self._undo_delay = coordinator, delay_aborts, None
    self._interval = min(1., timeout_s / 5)
    self._stop = stop
    self._done = threading.Event()
    self._answered, self._error = time.monotonic(), ''  # When the service last answered a whole round; why not.
    self._thread = threading.Thread(target=self._run, name='vit_jax_watchdog', daemon=True)
    self._knocker = threading.Thread(target=self._knock, name='vit_jax_watchdog_knock', daemon=True)

  def start(self) -> None:
    self._thread.start()
    if self._index != 0:
      self._knocker.start()
      if self._delay_aborts:
        self._undo_delay = _delay_aborts()

  def close(self) -> None:
    """Stops watching (the run ended here); marks this process finished so that no other one misses it."""
    self._done.set()
    self._thread.join(self._timeout)  # A call into a service that is gone can hang: not forever.
    if self._knocker.is_alive():
      self._knocker.join()
    if self._undo_delay is not None:
      self._undo_delay()
      self._undo_delay = None
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
        # Not proof of a loss (a slow service, a network blip): the knock and the timeout decide (`_knock`).
        self._error = (str(e).splitlines() or [''])[0][:120]
        logging.warning('Watchdog: %s', e)
        continue
      now = self._answered = time.monotonic()
      for i, value in values.items():
        if value != last_value.get(i):
          last_value[i], last_change[i] = value, now
        elif now - last_change[i] > self._timeout:
          why = f'no heartbeat for {self._timeout:g} s'
          if self._index == 0:
            self.publish_loss(why, index=i)
          return self._stop(self._message(self._who(i), why))
    return None

  def _knock(self) -> None:
    """Every process but 0: stops at once when the service's port refuses a connection, or when the service has
    not answered a round of `_run` for the timeout (a call that errs or hangs, a host that does not answer)."""
    while not self._done.wait(self._interval):
      if self._coordinator and _refused(self._coordinator, self._interval):
        return self._stop(self._message(
            self._who(0), f'its coordination service at {self._coordinator} refuses connections'))
      silent = time.monotonic() - self._answered
      if silent > self._timeout and not self._done.is_set():
        why = f'its coordination service has not answered for {self._timeout:g} s'
        return self._stop(self._message(self._who(0), why + (f' ({self._error})' if self._error else '')))
    return None


class _Published(Exception):
  """Process `index` was published as lost, for the reason `why`."""

  def __init__(self, index: int, why: str):
    super().__init__(index, why)
    self.index, self.why = index, why
