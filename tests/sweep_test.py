"""Sweeps: points and names, refusal before the first run, a local 2x2 sweep killed and resumed, the report, and the
cluster runners' dry runs."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import loop_testlib as lib
from vit_jax import sweep as sweep_cli
from vit_jax.tools import sweep as sweeps
from vit_jax.training import loop

# The tiny digits model for 6 steps (evaluated at the end), checkpoints every 2 steps.
OVERRIDES = {**lib.TINY, 'total_steps': 6, 'checkpoint_every': 2}
FIXED = [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
# configs/default.py's get_sweep(): base_lr {1e-3, 3e-3} x optim.weight_decay {0.01, 0.05}, the last axis fastest.
GRID = [(1e-3, 0.01), (1e-3, 0.05), (3e-3, 0.01), (3e-3, 0.05)]
NAMES = ['base_lr=0.001,weight_decay=0.01', 'base_lr=0.001,weight_decay=0.05', 'base_lr=0.003,weight_decay=0.01',
         'base_lr=0.003,weight_decay=0.05']


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(lib.REPO)  # The commands name configs/default.py relative to the repository, as users do.


def test_product_axes_and_names():
  assert sweeps.product(base_lr=[1, 2], optim__weight_decay=[3, 4]) == [
      {'base_lr': 1, 'optim.weight_decay': 3}, {'base_lr': 1, 'optim.weight_decay': 4},
      {'base_lr': 2, 'optim.weight_decay': 3}, {'base_lr': 2, 'optim.weight_decay': 4}]
  assert sweeps.parse_axis('config.pp.randaug=(2,10),(2, 15)') == ('pp.randaug', ['(2,10)', '(2, 15)'])
  assert sweeps.split_values("'a,b',c") == ["'a,b'", 'c']
  # The command line's axis replaces the config's on a shared key; the duplicates it makes are dropped.
  points = sweeps.combine([{'base_lr': 0.1, 'seed': 0}, {'base_lr': 0.2, 'seed': 0}], [('base_lr', ['1', '2'])])
  assert points == [{'base_lr': '1', 'seed': '0'}, {'base_lr': '2', 'seed': '0'}]
  # Names: only the varying keys, each by its shortest unambiguous suffix.
  assert sweeps.point_names([{'model.dropout_rate': '0.1', 'pp.dropout_rate': '0', 'seed': '0'},
                             {'model.dropout_rate': '0.2', 'pp.dropout_rate': '0', 'seed': '0'},
                             {'model.dropout_rate': '0.2', 'pp.dropout_rate': '1', 'seed': '0'}]) == [
                                 'model.dropout_rate=0.1,pp.dropout_rate=0', 'model.dropout_rate=0.2,pp.dropout_rate=0',
                                 'model.dropout_rate=0.2,pp.dropout_rate=1']
  assert sweeps.point_names([{'dataset': '/data/a b'}, {'dataset': '/data/c'}]) == ['dataset=data_a_b',
                                                                                      'dataset=data_c']


@pytest.mark.parametrize('axis,expected', [
    ('config.btach=1,2', 'Config error: point base_lr=0.001,weight_decay=0.01,btach=1: Unknown config key '
                         'config.btach: did you mean config.batch?'),
    ('config.base_lr=1e-3,abc', "Config error: point base_lr=abc,weight_decay=0.01: Bad value for "
                                "config.base_lr='abc': expects a float like 0.001;"),
    ('config.decay_type=cosine,cosin', "Config error: point base_lr=0.001,weight_decay=0.01,decay_type=cosin: "
                                       "config.decay_type='cosin' is not one of"),
    ('config.batch=16,12', 'Config error: point base_lr=0.001,weight_decay=0.01,batch=12: config.batch=12 is not '
                           'divisible by the 8 devices'),
])
def test_a_bad_point_is_refused_before_the_first_run(tmp_path, capsys, axis, expected):
  workdir = tmp_path / 'sweep'
  assert sweep_cli.main(['--config=configs/default.py', f'--workdir={workdir}', '--num_devices=8', *FIXED,
                         '--sweep', axis]) == 2
  err = capsys.readouterr().err.strip()
  assert '\n' not in err and err.startswith(expected), err
  assert not workdir.exists()


def _sweep_command(workdir):
  return [sys.executable, '-m', 'vit_jax.sweep', '--config=configs/default.py', f'--workdir={workdir}',
          '--num_devices=8', *FIXED]


def _steps(checkpoints):
  return [d for d in os.listdir(checkpoints) if d.isdigit()] if os.path.isdir(checkpoints) else []


@pytest.fixture(scope='module')
def resumed_sweep(tmp_path_factory):
  """The sweep SIGKILLed (with its run) once the third point has a checkpoint, then started again."""
  workdir = str(tmp_path_factory.mktemp('sweep') / 'digits')
  proc = subprocess.Popen(_sweep_command(workdir), cwd=lib.REPO, env=lib.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
  third = os.path.join(workdir, NAMES[2])
  try:
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not _steps(os.path.join(third, 'checkpoints')):
      time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # The sweep and its running point: one process group.
  finally:
    first_out = proc.communicate()[0]
  assert proc.returncode == -signal.SIGKILL, first_out
  killed_at = {n: os.path.exists(os.path.join(workdir, n, 'final_metrics.json')) for n in NAMES}
  assert killed_at == {NAMES[0]: True, NAMES[1]: True, NAMES[2]: False, NAMES[3]: False}, first_out
  second = subprocess.run(_sweep_command(workdir), cwd=lib.REPO, env=lib.env(), capture_output=True, text=True,
                          timeout=400, check=False)
  assert second.returncode == 0, second.stdout + second.stderr[-3000:]
  return workdir, second.stdout


@pytest.fixture(scope='module')
def uninterrupted():
  """Each point run once without interruption (in this process, as `vit_jax.main` runs it): final metrics, losses."""
  import tempfile  # pylint: disable=g-import-not-at-top
  out = {}
  with tempfile.TemporaryDirectory() as base:
    for name, (lr, wd) in zip(NAMES, GRID):
      workdir = os.path.join(base, name)
      config = lib.apply(lib.tiny_config(), {**OVERRIDES, 'base_lr': lr, 'optim.weight_decay': wd})
      final = loop.train_and_evaluate(config, workdir)
      out[name] = ({k: v for k, v in final.items() if k != 'seconds'}, lib.train_losses(workdir))
  return out


@pytest.mark.slow
def test_a_killed_sweep_started_again_skips_finished_points_and_resumes_exactly(resumed_sweep, uninterrupted):
  workdir, stdout = resumed_sweep
  assert f'{NAMES[0]}: done, skipped.' in stdout and f'{NAMES[1]}: done, skipped.' in stdout
  assert f'{NAMES[2]}: running' in stdout and f'{NAMES[3]}: running' in stdout
  with open(os.path.join(workdir, NAMES[2], 'train.log')) as f:
    assert 'Resumed from step ' in f.read()
  assert sorted(d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d))) == NAMES
  for name, (lr, wd) in zip(NAMES, GRID):
    with open(os.path.join(workdir, name, 'final_metrics.json')) as f:
      final = json.load(f)
    expected_final, expected_losses = uninterrupted[name]
    assert {k: v for k, v in final.items() if k != 'seconds'} == expected_final, name  # bit-identical on CPU
    assert lib.train_losses(os.path.join(workdir, name)) == expected_losses, name
    with open(os.path.join(workdir, name, 'overrides.json')) as f:
      assert json.load(f)['overrides'] == {'base_lr': lr, 'optim.weight_decay': wd}
  # The four points differ (so a report that mixed up rows would be caught below).
  assert len({uninterrupted[n][0]['val/loss'] for n in NAMES}) == 4


@pytest.mark.slow
def test_report_rows_equal_each_runs_final_metrics(resumed_sweep, tmp_path):
  workdir, _ = resumed_sweep
  result = subprocess.run([sys.executable, '-m', 'vit_jax.sweep', 'report', workdir], cwd=lib.REPO, env=lib.env(),
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  table = [l for l in result.stdout.splitlines() if l.startswith('| ')]
  assert table[0] == ('| name | base_lr | optim.weight_decay | status | steps | val/loss | val/top1 | val/top5 | '
                      'best val/top1 | best step | wall s |')
  with open(os.path.join(workdir, 'sweep_report.json')) as f:
    rows = json.load(f)['rows']
  with open(os.path.join(workdir, 'sweep_report.csv')) as f:
    csv_rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == [r['name'] for r in csv_rows] == NAMES
  for row, csv_row, md, (lr, wd) in zip(rows, csv_rows, table[1:], GRID):
    with open(os.path.join(workdir, row['name'], 'final_metrics.json')) as f:
      final = json.load(f)
    assert row['base_lr'] == lr and row['optim.weight_decay'] == wd
    assert row['status'] == 'done' and row['steps'] == 6
    for key in ('val/loss', 'val/top1', 'val/top5'):
      assert row[key] == final[key] and float(csv_row[key]) == final[key], (row['name'], key)
    assert row['best val/top1'] == final['val/top1'] and row['best step'] == 6  # one evaluation, at the end
    assert row['wall s'] == final['seconds']
    assert md.startswith(f'| {row["name"]} | {lr:g} | {wd:g} | done | 6 | {final["val/loss"]:.4g} | '
                         f'{final["val/top1"]:.4g} |')
  img = np.asarray(Image.open(os.path.join(workdir, 'sweep_report.png')).convert('RGB'))
  assert img.shape == (350, 900, 3) and img.std() > 0  # Two panels (base_lr, weight decay) of 4.5 x 3.5 inches.


def test_report_marks_unfinished_and_failed_points(tmp_path, capsys):
  """Constructed point directories: best val/top1 from metrics.jsonl, and rows for points that did not finish."""
  workdir = str(tmp_path / 'sweep')
  plan = sweeps.plan('configs/default.py', workdir, ['config.seed=0,1,2,3'], FIXED, num_devices=8)
  sweeps.write_plan(plan)
  names = [p['name'] for p in plan['points']]
  assert names == [f'base_lr={lr:g},weight_decay={wd:g},seed={s}' for lr, wd in GRID for s in range(4)]

  def write(name, records, final=None, exit_code=None):
    d = os.path.join(workdir, name)
    with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in records))
    if final is not None:
      with open(os.path.join(d, 'final_metrics.json'), 'w') as f:
        json.dump(final, f)
    if exit_code is not None:
      with open(os.path.join(d, sweeps.EXIT_FILE), 'w') as f:
        json.dump({'returncode': exit_code}, f)

  write(names[0], [{'step': 2, 'val/top1': 0.5}, {'step': 4, 'val/top1': 0.75}, {'step': 6, 'val/top1': 0.625,
                                                                                   'val/loss': 1.25}],
        final={'val/top1': 0.625, 'val/loss': 1.25, 'step': 6, 'seconds': 12.5})
  write(names[1], [{'step': 1, 'train/loss': 2.0}, {'step': 2, 'val/top1': 0.25}, {'step': 3, 'train/loss': 1.5}])
  write(names[2], [{'step': 1, 'train/loss': 2.0}], exit_code=3)
  # Preempted: a final_metrics.json before total_steps is not a finished run.
  write(names[3], [{'step': 4, 'val/top1': 0.5}], final={'val/top1': 0.5, 'step': 4, 'seconds': 1.})
  table, written = sweeps.report(workdir)
  rows = {r['name']: r for r in json.load(open(os.path.join(workdir, 'sweep_report.json')))['rows']}
  assert len(rows) == 16
  assert {k: rows[names[0]][k] for k in ('status', 'steps', 'val/top1', 'best val/top1', 'best step', 'wall s')} == {
      'status': 'done', 'steps': 6, 'val/top1': 0.625, 'best val/top1': 0.75, 'best step': 4, 'wall s': 12.5}
  assert (rows[names[1]]['status'], rows[names[1]]['steps'], rows[names[1]]['best step']) == ('unfinished', 3, 2)
  assert rows[names[2]]['status'] == 'failed (exit 3)' and rows[names[2]]['best val/top1'] is None
  assert rows[names[3]]['status'] == 'unfinished' and 'val/top1' not in rows[names[3]]
  assert all(rows[n]['status'] == 'not started' and rows[n]['steps'] == 0 for n in names[4:])
  lines = table.splitlines()
  assert any(l.startswith(f'| {names[2]} | 0.001 | 0.01 | 2 | failed (exit 3) | 1 |') for l in lines), table
  assert written[-1].endswith('sweep_report.png') and Image.open(written[-1]).size == (3 * 450, 350)


def test_slurm_dry_run_prints_one_job_array(tmp_path, capsys):
  # The README's command.
  assert sweep_cli.main(['--config=configs/finetune.py:cifar10', '--workdir=/shared/ft_sweep', '--sweep',
                         'config.base_lr=1e-3,3e-3', '--runner', 'slurm', '--launcher_args=--nodes 1 --gpus-per-node 8',
                         '--dry-run']) == 0
  out = capsys.readouterr().out
  assert '#SBATCH --nodes=1\n' in out and '#SBATCH --gpus-per-node=8\n' in out and '#SBATCH --array=0-3\n' in out
  head = ('srun python -m vit_jax.main --distributed --preempted_exit_code=75 --config=configs/finetune.py:cifar10 '
          '--workdir=/shared/ft_sweep/')
  tasks = [l for l in out.splitlines() if l.startswith('  ') and l.endswith(' ;;')]
  assert tasks == [
      f'  0) {head}base_lr=1e-3,weight_decay=0.0 --config.base_lr=1e-3 --config.optim.weight_decay=0.0 ;;',
      f'  1) {head}base_lr=3e-3,weight_decay=0.0 --config.base_lr=3e-3 --config.optim.weight_decay=0.0 ;;',
      f'  2) {head}base_lr=1e-3,weight_decay=0.0001 --config.base_lr=1e-3 --config.optim.weight_decay=0.0001 ;;',
      f'  3) {head}base_lr=3e-3,weight_decay=0.0001 --config.base_lr=3e-3 --config.optim.weight_decay=0.0001 ;;']
  assert 'case "$SLURM_ARRAY_TASK_ID" in' in out and out.rstrip().endswith('sbatch <the script above>')
  assert not os.path.exists('/shared/ft_sweep')


def test_tpu_dry_run_prints_one_pod_job_per_point(tmp_path, capsys):
  workdir = str(tmp_path / 'sweep')
  assert sweep_cli.main(['--config=configs/default.py', f'--workdir={workdir}', '--runner=tpu',
                         '--launcher_args=--tpu my-pod --zone us-central2-b', '--config.total_steps=100',
                         '--dry-run']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  ssh = 'gcloud compute tpus tpu-vm ssh my-pod --zone=us-central2-b --worker=all --command='
  # Set-up once: this checkout copied to the workers, then installed there.
  assert len(lines) == 6 and lines[0].startswith('gcloud compute tpus tpu-vm scp ')
  assert lines[1].startswith(ssh) and 'pip install' in lines[1]
  escaped_comma = '\\,'  # The script quotes the flags with bash's printf %q.
  assert lines[2:] == [
      f"{ssh}'cd vit_jax && python3 -m vit_jax.main --distributed --config=configs/default.py --workdir={workdir}/"
      f"{name.replace(',', escaped_comma)} --config.total_steps=100 --config.base_lr={lr!r} "
      f"--config.optim.weight_decay={wd!r} '"
      for name, (lr, wd) in zip(NAMES, GRID)]
  assert not os.path.exists(workdir)


def test_local_dry_run_prints_each_points_main_command(tmp_path, capsys):
  workdir = str(tmp_path / 'sweep')
  assert sweep_cli.main(['--config=configs/default.py', f'--workdir={workdir}', '--num_devices=8',
                         '--sweep', 'config.seed=0,1', '--config.total_steps=100', '--dry-run']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines == [
      f'python -m vit_jax.main --config=configs/default.py --workdir={workdir}/{name},seed={seed} '
      f'--config.total_steps=100 --config.base_lr={lr!r} --config.optim.weight_decay={wd!r} --config.seed={seed}'
      for name, (lr, wd) in zip(NAMES, GRID) for seed in (0, 1)]
  assert not os.path.exists(workdir)
