"""The launch scripts, run for real through stand-in `gcloud`, `sbatch`, `srun` and `scontrol` (tests/standins/)
that start every worker as a local process: 2 workers x 4 CPU devices (gloo) train like 1 process x 8 devices.

The TPU launcher deploys this checkout into each worker's home and trains into a shared folder; a worker killed
at a random step makes the other exit naming it, and the launcher's restart resumes exactly. The SLURM launcher
trains into a gs:// workdir on the GCS emulator; a time limit (SIGTERM) makes the job save, requeue itself and
finish, and the finished job is not requeued. The --dry-run tests pin the commands without running anything.
"""
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest
from etils import epath

import gcs_emulator
import loop_testlib as lib
from storage_test import emulator  # pylint: disable=unused-import  # The fixture: the GCS emulator, configured.
from vit_jax.training import loop

STANDINS = os.path.join(lib.REPO, 'tests', 'standins')
STEPS = 20
HEARTBEAT_S = 10
# Checkpoints every 4 steps; the heartbeat timeout the docs' exit bound is stated for.
OVERRIDES = {'total_steps': STEPS, 'checkpoint_every': 4, 'multihost.heartbeat_timeout_s': HEARTBEAT_S}


def _run(script, *args):
  return subprocess.run([os.path.join(lib.REPO, 'scripts', script), *args], capture_output=True, text=True,
                        timeout=30, check=False)


def _env(root: str, **extra: str) -> Dict[str, str]:
  """2 workers' worth of CPU devices each, gloo, and the stand-ins (then this Python) first on PATH."""
  env = lib.env(4, JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo', STANDIN_ROOT=root, **extra)
  env['PATH'] = os.pathsep.join([STANDINS, os.path.dirname(sys.executable), env['PATH']])
  return env


@contextlib.contextmanager
def _launch(tmp_path, script: str, args: List[str], env: Dict[str, str]) -> Iterator[subprocess.Popen]:
  """Runs scripts/`script` in the background, its output into tmp_path/launcher.out; killed if left running."""
  with open(tmp_path / 'launcher.out', 'w') as out:
    launcher = subprocess.Popen([os.path.join(lib.REPO, 'scripts', script), *args], cwd=str(tmp_path), env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
      yield launcher
    finally:
      if launcher.poll() is None:
        launcher.kill()


def _flags(workdir: str) -> List[str]:
  """The training flags after `--`: `python -m vit_jax.main`'s, less the interpreter and module."""
  return lib.main_command(workdir, OVERRIDES)[3:]


def _log(root: str) -> List[Tuple[float, str]]:
  """The stand-ins' log: (wall time, event)."""
  with open(os.path.join(root, 'log')) as f:
    return [(float(t), e) for t, e in (l.rstrip('\n').split(' ', 1) for l in f)]


def _python_child(pid: int) -> int:
  """The worker's training process: `pid` (the stand-in's `bash -c`, which may exec it) or one under it."""
  children = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
      except (OSError, IndexError, ValueError):
        continue
  todo = [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f'/proc/{p}/cmdline', 'rb') as f:
        if b'vit_jax.main' in f.read():
          return p
    except OSError:
      pass
    todo += children.get(p, [])
  raise AssertionError(f'no training process under pid {pid}')


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Dict[int, float]:
  """The same run as 1 process x 8 devices: its train losses by step."""
  workdir = str(tmp_path_factory.mktemp('one_process') / 'run')
  loop.train_and_evaluate(lib.tiny_config(**{k.replace('.', '__'): v for k, v in OVERRIDES.items()}), workdir)
  return lib.train_losses(workdir)


def _assert_like_one_process(got: Dict[int, float], expected: Dict[int, float]) -> None:
  assert sorted(got) == list(range(1, STEPS + 1))
  # The same examples per global batch, summed in another order across processes: float32 rounding only.
  np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.slow
def test_tpu_pod_launcher_deploys_this_checkout_and_restarts_after_a_lost_worker(tmp_path, reference):
  root, workdir = str(tmp_path / 'pod'), str(tmp_path / 'shared' / 'run')
  kill_at = random.Random().randint(5, 12)
  args = ['--tpu', 'pod', '--zone', 'us-central2-b', '--restarts', '1', '--restart-wait', '1', '--', *_flags(workdir)]
  with _launch(tmp_path, 'launch_tpu_pod.sh', args, _env(root)) as launcher:
    # Worker 1 dies (SIGKILL) once step `kill_at` is logged and a checkpoint is committed.
    deadline = time.time() + 400
    while time.time() < deadline and launcher.poll() is None:
      if len(lib.losses_so_far(workdir)) >= kill_at and lib.finished_steps(os.path.join(workdir, 'checkpoints')):
        break
      time.sleep(0.01)
    with open(os.path.join(root, 'worker1.pid')) as f:
      os.kill(_python_child(int(f.read())), signal.SIGKILL)
    killed = time.time()
    while not any(e == 'worker 0 exited 5' for _, e in _log(root)) and launcher.poll() is None:
      time.sleep(0.01)
    first_attempt = lib.losses_so_far(workdir)  # Before the restart rewrites what follows its checkpoint.
    launcher.wait(timeout=400)
  text = (tmp_path / 'launcher.out').read_text()
  assert launcher.returncode == 0, text[-3000:]

  # Deployed: the checkout's files (uncommitted ones too) in each worker's home, installed with pip there.
  listed = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=lib.REPO,
                          capture_output=True, text=True, check=True).stdout.split('\n')
  for worker in ('worker0', 'worker1'):
    deployed = os.path.join(root, worker, 'vit_jax')
    assert all(os.path.exists(os.path.join(deployed, f)) for f in listed if f and os.path.exists(
        os.path.join(lib.REPO, f))), worker
    with open(os.path.join(root, worker, 'pip_args')) as f:
      assert f.read().strip() == 'install -q -e vit_jax jax[tpu]'

  # The survivor: one line naming the lost worker, exit status 5, within the bound docs/pods.md states.
  events = _log(root)
  training = [i for i, (_, e) in enumerate(events) if e.startswith('gcloud') and 'vit_jax.main' in e]
  assert len(training) == 2, events  # The first attempt and the restart.
  first = [e for _, e in events[training[0]:training[1]] if ' exited ' in e]
  assert sorted(first) == ['worker 0 exited 5', 'worker 1 exited 137'], events
  exited = next(t for t, e in events if e == 'worker 0 exited 5')
  lost = [l for l in text.splitlines() if l.startswith('Lost process')]
  assert lost == [f'Lost process 1 of 2: no heartbeat for {HEARTBEAT_S} s. Stopping process 0 too; start the '
                  'same command again to resume from the newest checkpoint.'], text[-3000:]
  bound = exited - killed
  assert bound < HEARTBEAT_S + 20, bound

  # The restart resumes from a committed checkpoint: the steps after it are those of the first attempt, bit for
  # bit, and the whole run is that of 1 process x 8 devices.
  resumed = {int(s) for s in re.findall(r'Resumed from step (\d+) of', text)}
  assert len(resumed) == 1 and min(resumed) % OVERRIDES['checkpoint_every'] == 0, text[-3000:]
  got = lib.train_losses(workdir)
  redone = [s for s in first_attempt if s > min(resumed)]
  diff = max(abs(got[s] - first_attempt[s]) for s in redone) if redone else 0.
  print(f'TPU launcher stand-in: worker 1 SIGKILLed after step {kill_at}; worker 0 exited {bound:.1f} s later '
        f'(heartbeat timeout {HEARTBEAT_S} s); the restart resumed from step {min(resumed)}, max |loss diff| '
        f'over the {len(redone)} redone steps = {diff}')
  assert all(got[s] == first_attempt[s] for s in redone)
  _assert_like_one_process(got, reference)


@pytest.mark.slow
def test_slurm_launcher_trains_into_a_bucket_and_requeues_after_a_time_limit(tmp_path, reference, emulator):
  root, workdir = str(tmp_path / 'slurm'), 'gs://bucket/slurm_run'
  time_limit = str(tmp_path / 'time_limit')
  env = _env(root, STANDIN_SLURM_SIGNAL_FILE=time_limit, **gcs_emulator.emulator_env(emulator))
  args = ['--nodes', '2', '--gpus-per-node', '4', '--', *_flags(workdir)]
  with _launch(tmp_path, 'launch_slurm.sh', args, env) as launcher:
    # The time limit comes once the job is up (jax.distributed started: config.json is written after it), so the
    # SIGTERM is a preemption notice, never a kill before JAX's handler is there.
    deadline = time.time() + 400
    while time.time() < deadline and launcher.poll() is None and not (epath.Path(workdir) / 'config.json').exists():
      time.sleep(0.2)
    open(time_limit, 'w').close()
    launcher.wait(timeout=500)
  text = (tmp_path / 'launcher.out').read_text()
  assert launcher.returncode == 0, text[-3000:]
  job = re.search(r'Submitted batch job (\d+)', text).group(1)
  events = [e for _, e in _log(root) if e.startswith(('sbatch', 'scontrol'))]
  assert events == [f'sbatch job {job} run 0 started', f'scontrol requeue {job}', f'sbatch job {job} run 0 exited 75',
                    f'sbatch job {job} run 1 started', f'sbatch job {job} run 1 exited 0']
  saved = {int(s) for s in re.findall(r'Preempted \(SIGTERM\): saved step (\d+)', text)}
  assert len(saved) == 1 and f'Resumed from step {min(saved)} of {workdir}' in text and min(saved) < STEPS
  _assert_like_one_process(lib.train_losses(workdir), reference)


def test_tpu_pod_dry_run_prints_deploy_install_and_training_on_all_workers():
  result = _run('launch_tpu_pod.sh', '--dry-run', '--tpu', 'my-pod', '--zone', 'us-central2-b', '--project', 'p',
                '--', '--config=configs/vit_b16_i21k.py', '--workdir=gs://bucket/run')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  where = '--zone=us-central2-b --worker=all --project=p'
  assert len(lines) == 3
  assert re.fullmatch(rf'gcloud compute tpus tpu-vm scp \S+\.tar\.gz my-pod:vit_jax_deploy\.tar\.gz {where}',
                      lines[0]), lines[0]
  ssh = f"gcloud compute tpus tpu-vm ssh my-pod {where} --command='"
  assert lines[1] == (f'{ssh}rm -rf vit_jax && mkdir -p vit_jax && tar -xzf vit_jax_deploy.tar.gz -C vit_jax && '
                      'pip install -q -e vit_jax "jax[tpu]"\'')
  assert lines[2] == (f'{ssh}cd vit_jax && python3 -m vit_jax.main --distributed --config=configs/vit_b16_i21k.py '
                      "--workdir=gs://bucket/run '")


def test_tpu_pod_repo_url_is_cloned_at_the_ref_on_the_workers():
  result = _run('launch_tpu_pod.sh', '--dry-run', '--tpu', 'pod', '--zone', 'z', '--repo',
                'https://example.com/me/vit_jax.git', '--ref', 'v1.0', '--', '--config=configs/default.py',
                '--workdir=gs://b/r')
  assert result.returncode == 0, result.stderr
  setup = result.stdout.splitlines()[0]
  assert setup.endswith("--command='rm -rf vit_jax && git clone -q https://example.com/me/vit_jax.git vit_jax && "
                        'git -C vit_jax checkout -q v1.0 && pip install -q -e vit_jax "jax[tpu]"\'')


def test_tpu_pod_requires_tpu_and_zone():
  result = _run('launch_tpu_pod.sh', '--dry-run', '--', '--config=configs/default.py')
  assert result.returncode == 2 and '--tpu and --zone are required' in result.stderr


def test_slurm_dry_run_prints_the_batch_script_and_sbatch():
  result = _run('launch_slurm.sh', '--dry-run', '--nodes', '4', '--gpus-per-node', '8', '--partition', 'gpu',
                '--', '--config=configs/vit_b16_i1k_augreg.py', '--workdir=/shared/run')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  for line in ('#SBATCH --nodes=4', '#SBATCH --ntasks-per-node=1', '#SBATCH --gpus-per-node=8',
               '#SBATCH --partition=gpu', '#SBATCH --signal=TERM@120', '#SBATCH --requeue',
               'export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7',
               'srun python -m vit_jax.main --distributed --preempted_exit_code=75 '
               '--config=configs/vit_b16_i1k_augreg.py --workdir=/shared/run', 'scontrol requeue "$SLURM_JOB_ID"',
               'sbatch <the script above>'):
    assert line in out, line
  assert f'cd {lib.REPO}' in out


# The ```sh commands of docs/pods.md, verbatim (the docs test finds them here).
# pylint: disable=line-too-long
DOC_COMMANDS = (
    'scripts/launch_tpu_pod.sh --dry-run --tpu my-pod --zone us-central2-b -- --config=configs/vit_b16_i21k.py --workdir=gs://BUCKET/run',
    'scripts/launch_slurm.sh --dry-run --nodes 4 --gpus-per-node 8 -- --config=configs/vit_b16_i1k_augreg.py --workdir=/shared/runs/vit_b16',
)
# pylint: enable=line-too-long


def test_the_docs_dry_run_commands_print_the_training_command():
  for command in DOC_COMMANDS:
    result = subprocess.run(['bash', '-c', command], cwd=lib.REPO, capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert 'python' in result.stdout and ' -m vit_jax.main --distributed ' in result.stdout, command
