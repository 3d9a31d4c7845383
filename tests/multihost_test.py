"""Multi-host, proven locally: 2 processes x 4 CPU devices (gloo) train like 1 process x 8 devices.

Also: process 0 killed mid-step or mid-save ends the other in bounded time with our line and status, and the
relaunch resumes exactly; a SIGTERM sent to one process only makes both save the same step and exit 0 (JAX's
preemption sync point); `config.model_init` loads into FSDP params that span both processes; few-shot metrics (raw
and EMA) are those of one process.
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loop_testlib as lib
from vit_jax import checkpoint
from vit_jax.evaluation import fewshot
from vit_jax.models import build
from vit_jax.training import checkpointing
from vit_jax.training import config_checks
from vit_jax.training import loop
from vit_jax.training import multihost

# Constant lr: the losses of the first steps do not depend on total_steps, so a long preemptible run and a short
# reference run can be compared step by step.
# The default's mixup (0.2) stays on: its pairs are the same for any process count (vit_jax.data.mixing.partner).
OVERRIDES = {'decay_type': 'constant', 'warmup_steps': 0, 'checkpoint_every': 100_000}
STEPS = 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_two_processes(workdir, overrides):
  port = _free_port()
  return [subprocess.Popen(
      lib.main_command(workdir, overrides, extra=[f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                                                  f'--process_id={i}']),
      cwd=lib.REPO, env=lib.env(4, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo'), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]


def _run_two_processes(workdir, overrides, timeout=600):
  """Runs main as 2 processes x 4 devices to the end; fails with the stderr of a process that did not exit 0."""
  return lib.communicate_all(_start_two_processes(workdir, overrides), timeout)


@pytest.mark.slow
def test_two_processes_match_one_process_and_agree_on_the_preemption_step(tmp_path):
  ref_dir = str(tmp_path / 'one_process')
  loop.train_and_evaluate(lib.tiny_config(total_steps=STEPS, **OVERRIDES), ref_dir)
  expected = lib.train_losses(ref_dir)

  workdir = str(tmp_path / 'two_processes')
  procs = _start_two_processes(workdir, {**OVERRIDES, 'total_steps': 100_000})
  try:
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
      if os.path.exists(os.path.join(workdir, 'metrics.jsonl')) and len(lib.train_losses(workdir)) >= STEPS:
        break
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # Only one process gets the notice.
  except BaseException:
    for p in procs:
      p.kill()
    raise
  outputs = lib.communicate_all(procs, timeout=180)
  saved = [int(re.search(r'Preempted \(SIGTERM\): saved step (\d+)', out).group(1)) for out in outputs]
  assert saved[0] == saved[1] and saved[0] >= STEPS
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1, read_only=True)
  assert ckpt.all_steps() == [saved[0]]
  data_files = os.listdir(os.path.join(workdir, 'checkpoints', str(saved[0]), 'data'))
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(data_files)

  got = lib.train_losses(workdir)
  diff = max(abs(expected[s] - got[s]) for s in range(1, STEPS + 1))
  print(f'multi-host: 2 processes x 4 devices vs 1 process x 8 devices, max |loss diff| over {STEPS} steps '
        f'= {diff:.3g}; both processes saved step {saved[0]} after SIGTERM to process 1')
  # The same mixed examples per global batch, summed in another order across processes: float32 rounding only.
  np.testing.assert_allclose([got[s] for s in range(1, STEPS + 1)],
                             [expected[s] for s in range(1, STEPS + 1)], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_model_init_into_fsdp_params_that_span_both_processes(tmp_path):
  """Published .npz -> FSDP params sharded over 8 devices of 2 processes: the losses are those of 1 process.

  The file's head has 5 classes, digits 10: the head comes from the fresh init, as `load_pretrained` does.
  """
  config = lib.tiny_config()
  model = build.build_model(config.model_name, config.model, num_classes=5)
  params = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 8, 8, 3)), train=False)['params']
  npz = str(tmp_path / 'published.npz')
  checkpoint.save_npz(jax.tree.map(np.asarray, nn.meta.unbox(params)), npz)
  overrides = {'sharding_rules': 'fsdp', 'mesh.data': 1, 'mesh.fsdp': 8, 'model_init': npz, 'total_steps': 2,
               'decay_type': 'constant', 'warmup_steps': 0, 'checkpoint_every': 100_000}
  ref_dir = str(tmp_path / 'one_process')
  loop.train_and_evaluate(lib.tiny_config(**{k.replace('.', '__'): v for k, v in overrides.items()}), ref_dir)
  workdir = str(tmp_path / 'two_processes')
  outputs = _run_two_processes(workdir, overrides)
  assert all(f'Initialised the params from {npz}.' in out for out in outputs)
  expected, got = lib.train_losses(ref_dir), lib.train_losses(workdir)
  assert sorted(got) == [1, 2]
  np.testing.assert_allclose([got[1], got[2]], [expected[1], expected[2]], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fewshot_raw_and_ema_on_two_processes_equal_one_process(tmp_path):
  """Few-shot batches sharded over the mesh of 2 processes: the same metrics as 1 process, and the EMA ones
  (`fewshot_ema/`, `knn_ema/`) are the evaluator's on the (1-process) checkpoint's EMA params."""
  overrides = {'fewshot.datasets': (('digits', 'train', 'test'),), 'fewshot.shots': (1, 5), 'fewshot.num_draws': 2,
               'fewshot.batch': 64, 'ema_decay': 0.5, 'total_steps': 2, 'warmup_steps': 1,
               'checkpoint_every': 100_000}
  config = lib.tiny_config(**{k.replace('.', '__'): v for k, v in overrides.items()})
  ref_dir = str(tmp_path / 'one_process')
  expected = loop.train_and_evaluate(config, ref_dir)
  workdir = str(tmp_path / 'two_processes')
  _run_two_processes(workdir, overrides)
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    got = json.load(f)
  keys = [f'{kind}{ema}/digits/{m}' for kind, m in (('fewshot', '1shot'), ('fewshot', '5shot'), ('knn', 'k10'))
          for ema in ('', '_ema')]
  for key in keys:
    assert got[key] == pytest.approx(expected[key], abs=1e-6), key
  _, state, _ = checkpointing.Checkpointer(os.path.join(ref_dir, 'checkpoints'), save_every=1,
                                           read_only=True).restore(None)
  evaluator = fewshot.FewShotEvaluator(build.build_model(config.model_name, config.model, 10), 'digits',
                                       config_checks.fewshot_pp(config), shots=(1, 5), num_draws=2, batch_size=64,
                                       seed=config.seed)
  on_ema = evaluator.run(state['ema_params'])
  for key, value in on_ema.items():
    assert got[key.replace('/', '_ema/', 1)] == pytest.approx(value, abs=1e-6), key


_PREEMPTION_SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=1, process_id=0)
    from jax.experimental import multihost_utils
    from vit_jax.training import loop
    handler = signal.getsignal(signal.SIGTERM)
    preemption = loop.Preemption()
    assert signal.getsignal(signal.SIGTERM) is handler, 'our handler would hide SIGTERM from JAX'
    os.kill(os.getpid(), signal.SIGTERM)
    for step in range(1, 3000):
      time.sleep(0.01)  # a training step
      if preemption.due(step):
        print('due at', step, flush=True)
        break
    preemption.close()
""")


@pytest.mark.slow
def test_preemption_with_a_distributed_client_is_jax_coordination_service(tmp_path):
  """With jax.distributed up, SIGTERM goes to JAX's preemption sync manager (our handler stays off): `due` turns
  True at the step JAX's sync point agrees on, after the notice went through the coordination service."""
  del tmp_path
  proc = subprocess.run([sys.executable, '-c', _PREEMPTION_SCRIPT, f'127.0.0.1:{_free_port()}'], cwd=lib.REPO,
                        env=lib.env(1), capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # JAX's listener polls for the signal every second: the agreed step is well past the first.
  assert int(re.search(r'due at (\d+)', proc.stdout).group(1)) > 1


HEARTBEAT_S = 10


def _kill_the_coordinator_when(ready, workdir, overrides, poll_s=0.002):
  """Starts 2 processes, SIGKILLs process 0 (it hosts the coordination service) once `ready()` returns something
  true, and checks that process 1 then stops with our line and status in bounded time. Returns (what `ready`
  returned, seconds from the kill to process 1's exit)."""
  procs = _start_two_processes(workdir, overrides)
  try:
    deadline, seen = time.time() + 400, None
    while time.time() < deadline and all(p.poll() is None for p in procs) and not seen:
      seen = ready()
      time.sleep(poll_s)
    assert seen, 'the run ended before the moment to kill process 0 came'
    procs[0].send_signal(signal.SIGKILL)
    killed = time.time()
    _, err = procs[1].communicate(timeout=120)
    bound = time.time() - killed
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  # JAX's client aborts process 1 as soon as the service's connection closes, but the abort waits 6 s
  # (multihost._delay_aborts): the watchdog, which finds the service's port refusing within a second, ends it first.
  lost = [l for l in err.splitlines() if l.startswith('Lost process')]
  assert procs[1].returncode == multihost.EXIT_PROCESS_LOST and len(lost) == 1, (procs[1].returncode, err[-3000:])
  assert re.fullmatch(r'Lost process 0 of 2 \(the coordinator\): its coordination service at 127\.0\.0\.1:\d+ '
                      r'refuses connections\. Stopping process 1 too; .*', lost[0]), lost[0]
  assert bound < 10, bound  # docs/pods.md: within about 2 s; 10 leaves room for a loaded machine.
  return seen, bound


@pytest.mark.slow
def test_the_coordinator_killed_mid_step_stops_the_other_with_our_line(tmp_path):
  """SIGKILL process 0 at a random step, no save in flight: process 1 exits with status 5 and the line naming it."""
  workdir = str(tmp_path / 'run')
  checkpoints = os.path.join(workdir, 'checkpoints')
  kill_at = random.Random().randint(2, 8)
  def ready():
    in_flight = os.path.isdir(checkpoints) and any('tmp' in n for n in os.listdir(checkpoints))
    return not in_flight and max(lib.losses_so_far(workdir), default=0) >= kill_at
  _, bound = _kill_the_coordinator_when(ready, workdir, {'total_steps': 100_000, 'checkpoint_every': 100_000,
                                                         'multihost.heartbeat_timeout_s': HEARTBEAT_S}, poll_s=0.1)
  print(f'coordinator SIGKILLed after step {kill_at}: process 1 exited {bound:.1f} s later with status '
        f'{multihost.EXIT_PROCESS_LOST} and our line (heartbeat timeout {HEARTBEAT_S} s)')


@pytest.mark.slow
def test_the_coordinator_killed_mid_save_stops_the_other_in_bounded_time_and_the_relaunch_resumes_exactly(tmp_path):
  """SIGKILL process 0 (it hosts the coordination service) while an async checkpoint save is in flight: process 1
  stops within the bound docs/pods.md states, naming the loss; the half-written step is
  never restored: the relaunch resumes from the newest committed one and redoes the steps after it bit for bit."""
  overrides = {'total_steps': 20, 'checkpoint_every': 2, 'multihost.heartbeat_timeout_s': HEARTBEAT_S}
  workdir = str(tmp_path / 'run')
  checkpoints = os.path.join(workdir, 'checkpoints')
  kill_from = random.Random().randint(4, 12)
  def ready():
    names = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    # Orbax writes step S into `S.orbax-checkpoint-tmp-<n>` and renames it to `S` once every process is done.
    pending = [int(n.split('.')[0]) for n in names if '.orbax-checkpoint-tmp' in n]
    return pending if pending and pending[0] >= kill_from else None
  pending, bound = _kill_the_coordinator_when(ready, workdir, overrides)
  committed = lib.finished_steps(checkpoints)
  first_attempt = lib.losses_so_far(workdir)

  outputs = _run_two_processes(workdir, overrides)
  resumed = int(re.search(r'Resumed from step (\d+) of', outputs[0]).group(1))
  assert resumed == max(committed) and resumed <= pending[0]
  assert not [n for n in os.listdir(checkpoints) if 'tmp' in n]
  got = lib.train_losses(workdir)
  assert sorted(got) == list(range(1, 21))
  redone = [s for s in first_attempt if s > resumed]
  print(f'coordinator SIGKILLed during the save of step {pending[0]}: process 1 exited {bound:.1f} s later '
        f'(heartbeat timeout {HEARTBEAT_S} s); the relaunch resumed from step {resumed}; max |loss diff| over the '
        f'{len(redone)} redone steps = {max((abs(got[s] - first_attempt[s]) for s in redone), default=0.)}')
  assert all(got[s] == first_attempt[s] for s in redone)
