"""Shared helpers for the loop's tests: a tiny digits config, running `vit_jax.main` in a subprocess, metrics."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from etils import epath

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# A tiny ViT on the embedded digits: 4 tokens, a few thousand params; every step takes milliseconds.
TINY = {
    'model_name': 'testing', 'model.resnet_num_layers': None, 'pp.resize': 10, 'model.hidden_size': 16, 'model.num_layers': 1, 'model.num_heads': 2, 'model.mlp_dim': 32,
    'model.patch_size': 4, 'pp.crop': 8, 'batch': 16, 'batch_eval': 304, 'total_steps': 12, 'warmup_steps': 2,
    'progress_every': 1, 'eval_every': 1000, 'checkpoint_every': 3, 'tensorboard': False,
}


def load_config(name: str = 'default', arg: Optional[str] = None) -> Any:
  """configs/<name>.py's get_config(arg), as `--config=configs/<name>.py[:arg]` loads it."""
  path = os.path.join(REPO, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def apply(config: Any, overrides: Dict[str, Any]) -> Any:
  """Sets dotted keys (the config stays locked, so a misspelt key fails the test)."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_config(**overrides: Any) -> Any:
  """The default preset shrunk by TINY, plus `overrides` given as keyword args with '__' for '.'."""
  cfg = apply(load_config(), TINY)
  return apply(cfg, {k.replace('__', '.'): v for k, v in overrides.items()})


def main_command(workdir: str, overrides: Dict[str, Any], config: str = 'configs/default.py',
                 extra: Sequence[str] = ()) -> List[str]:
  args = [sys.executable, '-m', 'vit_jax.main', f'--config={config}', f'--workdir={workdir}']
  args += [f'--config.{k}={v}' for k, v in {**TINY, **overrides}.items()]
  return args + list(extra)


def env(num_devices: int = 8, **extra: str) -> Dict[str, str]:
  e = dict(os.environ)
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  e['JAX_PLATFORMS'] = 'cpu'
  e['PYTHONPATH'] = REPO
  e.update(extra)
  return e


def run_main(workdir: str, overrides: Dict[str, Any], timeout: float = 240, extra_env: Optional[Dict[str, str]] = None,
             **kwargs: Any):
  """Runs `python -m vit_jax.main` to completion; returns the CompletedProcess (text output)."""
  return subprocess.run(main_command(workdir, overrides, **kwargs), cwd=REPO, env=env(**(extra_env or {})),
                        capture_output=True, text=True, timeout=timeout, check=False)


def finished_steps(directory: str) -> List[int]:
  """The finished checkpoint steps in `directory` (local or gs://). Locally Orbax renames a step's temporary
  directory to `<step>` once complete; in a bucket (no atomic rename) it writes into `<step>` and marks it
  complete with a `commit_success.txt` object."""
  d = epath.Path(directory)
  try:
    steps = [p for p in d.iterdir() if p.name.isdigit()] if d.exists() else []
    if directory.startswith('gs://'):
      steps = [p for p in steps if (p / 'commit_success.txt').exists()]
    return [int(p.name) for p in steps]
  except FileNotFoundError:
    return []


def run_main_killed(workdir: str, overrides: Dict[str, Any], after_checkpoint: int, timeout: float = 240,
                    extra_env: Optional[Dict[str, str]] = None, **kwargs: Any) -> subprocess.CompletedProcess:
  """Starts `python -m vit_jax.main` and SIGKILLs it from outside, as a preemption without notice does, as soon
  as a finished checkpoint of step >= `after_checkpoint` is in `workdir` (local or gs://). Fails if the run ends
  before that."""
  proc = subprocess.Popen(main_command(workdir, overrides, **kwargs), cwd=REPO, env=env(**(extra_env or {})),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  directory = f'{workdir}/checkpoints'
  deadline = time.time() + timeout
  try:
    while proc.poll() is None and time.time() < deadline:
      steps = finished_steps(directory)
      if steps and max(steps) >= after_checkpoint:
        proc.send_signal(signal.SIGKILL)
        break
      # A bucket is polled gently: the emulator serves one request at a time, the run's included.
      time.sleep(0.2 if workdir.startswith('gs://') else 0.005)
    out, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL, f'the run ended (status {proc.returncode}) before it was killed: {err[-2000:]}'
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def communicate_all(procs: Sequence[subprocess.Popen], timeout: float) -> List[str]:
  """Waits for every process (killing what is left on a timeout); fails with the stderr of one that did not exit 0.
  Returns their stdouts."""
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  text = (epath.Path(workdir) / 'metrics.jsonl').read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def train_losses(workdir: str) -> Dict[int, float]:
  return {r['step']: r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r}


def losses_so_far(workdir: str) -> Dict[int, float]:
  """The train losses a running (or killed) job has logged: none before metrics.jsonl exists, and a last line
  still being written (or cut by a kill) left out."""
  try:
    text = (epath.Path(workdir) / 'metrics.jsonl').read_text()
  except (FileNotFoundError, OSError):
    return {}
  losses = {}
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      break
    if 'train/loss' in record:
      losses[record['step']] = record['train/loss']
  return losses
