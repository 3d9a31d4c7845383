"""What the stand-in cluster commands (gcloud, sbatch, srun, scontrol) share: the state folder, a log, ports."""
import os
import signal
import socket
import subprocess
import time
from typing import Callable, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))


def state_dir() -> str:
  """STANDIN_ROOT: where the stand-ins keep workers' homes, pid files and their log."""
  root = os.environ['STANDIN_ROOT']
  os.makedirs(root, exist_ok=True)
  return root


def log(line: str) -> None:
  """Appends `line` (with a wall-clock time) to STANDIN_ROOT/log, which the tests read."""
  with open(os.path.join(state_dir(), 'log'), 'a') as f:
    f.write(f'{time.time():.3f} {line}\n')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_workers(commands: Sequence[Sequence[str]], envs: Sequence[dict], cwds: Sequence[str], name: str,
                signal_when: Optional[Callable[[], bool]] = None) -> List[int]:
  """Starts one local process per worker, waits for all; SIGTERM to each once `signal_when()` turns True.

  Returns their exit statuses (128 + signal for a signalled one); logs each start and exit.
  """
  procs = []
  for i, (command, env, cwd) in enumerate(zip(commands, envs, cwds)):
    procs.append(subprocess.Popen(command, env=env, cwd=cwd))
    with open(os.path.join(state_dir(), f'{name}{i}.pid'), 'w') as f:
      f.write(str(procs[-1].pid))
    log(f'{name} {i} started pid {procs[-1].pid}')
  statuses: List[Optional[int]] = [None] * len(procs)
  signalled = False
  while None in statuses:
    for i, p in enumerate(procs):
      if statuses[i] is None and p.poll() is not None:
        statuses[i] = p.returncode if p.returncode >= 0 else 128 - p.returncode
        log(f'{name} {i} exited {statuses[i]}')
    if signal_when is not None and not signalled and signal_when():
      signalled = True
      log(f'{name} SIGTERM to all')
      for p in procs:
        if p.poll() is None:
          p.send_signal(signal.SIGTERM)
    time.sleep(0.05)
  return statuses
