"""The lost-process watchdog against a stand-in key-value store: who stops, when, and with which line."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import List, Optional

import pytest

from vit_jax.training import multihost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Store:
  """The coordination service's key-value store as far as the watchdog uses it; `down` makes every call fail."""

  def __init__(self):
    self.values, self.down, self.lock = {}, False, threading.Lock()

  def _check(self):
    if self.down:
      raise RuntimeError('UNAVAILABLE: Socket closed')

  def key_value_set(self, key, value, allow_overwrite=False):
    del allow_overwrite
    with self.lock:
      self._check()
      self.values[key] = value

  def key_value_try_get(self, key):
    with self.lock:
      self._check()
      if key not in self.values:
        raise RuntimeError(f'NOT_FOUND: Config key {key} not found.')
      return self.values[key]

  def key_value_dir_get(self, prefix):
    with self.lock:
      self._check()
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def _watchdogs(store: _Store, count: int, timeout_s: float, coordinator: Optional[str] = None):
  stopped: List[Optional[str]] = [None] * count
  def stop(i):
    return lambda message: stopped.__setitem__(i, (message, time.monotonic()))
  dogs = [multihost.Watchdog(store, i, count, timeout_s, stop=stop(i), coordinator=coordinator) for i in range(count)]
  return dogs, stopped


def _wait(stopped, indices, seconds):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline and any(stopped[i] is None for i in indices):
    time.sleep(0.01)


def test_a_silent_process_stops_the_others_naming_it_within_the_timeout():
  store = _Store()
  dogs, stopped = _watchdogs(store, 3, timeout_s=0.5)
  for d in dogs[:2]:  # Process 2 never beats: it died.
    d.start()
  start = time.monotonic()
  _wait(stopped, (0, 1), 5)
  for d in dogs[:2]:
    d.close()
  assert stopped[0][0] == ('Lost process 2 of 3: no heartbeat for 0.5 s. Stopping process 0 too; start the same '
                           'command again to resume from the newest checkpoint.')
  assert stopped[1][0] == stopped[0][0].replace('Stopping process 0', 'Stopping process 1')
  # Bound: the timeout plus an interval (timeout / 5) to notice, plus the interval process 1 takes to read it.
  assert max(stopped[0][1], stopped[1][1]) - start < 0.5 + 3 * 0.1 + 0.5


def _listening() -> socket.socket:
  """A TCP port that accepts connections, as the coordination service's does while process 0 lives."""
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen()
  return server


def test_the_coordinator_gone_stops_the_others_at_once():
  store, server = _Store(), _listening()
  address = '127.0.0.1:%d' % server.getsockname()[1]
  dogs, stopped = _watchdogs(store, 2, timeout_s=30, coordinator=address)
  for d in dogs:
    d.start()
  time.sleep(0.3)
  store.down = True  # Process 0, and the service with it, is gone: its port refuses connections.
  server.close()
  start = time.monotonic()
  _wait(stopped, (1,), 5)
  assert stopped[1][0] == (f'Lost process 0 of 2 (the coordinator): its coordination service at {address} refuses '
                           'connections. Stopping process 1 too; start the same command again to resume from the '
                           'newest checkpoint.')
  assert stopped[1][1] - start < 2
  store.down = False
  for d in dogs:
    d.close()


def test_a_coordinator_that_errs_but_listens_is_lost_only_after_the_timeout():
  """A slow or erring service whose port still accepts: no stop before `timeout_s` without an answer."""
  store, server = _Store(), _listening()
  dogs, stopped = _watchdogs(store, 2, timeout_s=1., coordinator='127.0.0.1:%d' % server.getsockname()[1])
  for d in dogs:
    d.start()
  time.sleep(0.3)
  store.down = True
  start = time.monotonic()
  _wait(stopped, (1,), 5)
  assert stopped[1][0].startswith('Lost process 0 of 2 (the coordinator): its coordination service has not '
                                  'answered for 1 s (UNAVAILABLE: Socket closed). Stopping process 1 too;')
  assert 1. - 0.3 < stopped[1][1] - start < 1. + 3 * 0.2 + 0.5
  store.down = False
  for d in dogs:
    d.close()
  server.close()


_ABORT_SCRIPT = textwrap.dedent("""
    import ctypes, os, sys, threading, time
    from vit_jax.training import multihost
    undo = multihost._delay_aborts()
    if sys.argv[1] == 'undo':
      undo()
    # Aborted by a thread that does not hold the GIL, as JAX's client thread does; the main thread stands for the
    # watchdog.
    threading.Thread(target=ctypes.CDLL(None).abort).start()
    time.sleep(1.)
    print('still running 1 s after the abort', flush=True)
    os._exit(5)
""")


@pytest.mark.parametrize('undo', [False, True])
def test_an_abort_waits_for_the_watchdog_unless_undone(undo):
  proc = subprocess.run([sys.executable, '-c', _ABORT_SCRIPT, 'undo' if undo else 'keep'], capture_output=True,
                        text=True, timeout=120, check=False, env={**os.environ, 'PYTHONPATH': REPO})
  assert proc.returncode == (-signal.SIGABRT if undo else 5), proc.stderr[-2000:]
  assert ('still running' in proc.stdout) == (not undo)


@pytest.mark.slow
def test_finished_processes_and_a_published_failure():
  store = _Store()
  dogs, stopped = _watchdogs(store, 2, timeout_s=0.3)
  for d in dogs:
    d.start()
  dogs[1].close()  # Process 1 finished first: not lost.
  time.sleep(1.)
  assert stopped == [None, None]
  dogs[0].close()

  store = _Store()
  dogs, stopped = _watchdogs(store, 2, timeout_s=30)
  for d in dogs:
    d.start()
  dogs[0].publish_loss('it failed; see its log')  # Process 0 crashed: process 1 need not wait for a timeout.
  _wait(stopped, (1,), 5)
  assert stopped[1][0].startswith('Lost process 0 of 2 (the coordinator): it failed; see its log. Stopping process 1')
  for d in dogs:
    d.close()
