"""The launch scripts' --dry-run modes print the commands they would run."""
import os
import subprocess

import loop_testlib as lib


def _run(script, *args):
  return subprocess.run([os.path.join(lib.REPO, 'scripts', script), *args], capture_output=True, text=True,
                        timeout=30, check=False)


def test_tpu_pod_dry_run_prints_setup_and_training_on_all_workers():
  result = _run('launch_tpu_pod.sh', '--dry-run', '--tpu', 'my-pod', '--zone', 'us-central2-b', '--project', 'p',
                '--', '--config=configs/vit_b16_i21k.py', '--workdir=gs://bucket/run')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2
  prefix = 'gcloud compute tpus tpu-vm ssh my-pod --zone=us-central2-b --worker=all --project=p --command='
  assert all(l.startswith(prefix) for l in lines)
  assert 'pip install' in lines[0] and 'requirements.txt' in lines[0]
  assert lines[1].endswith("python -m vit_jax.main --distributed --config=configs/vit_b16_i21k.py "
                           "--workdir=gs://bucket/run '")


def test_tpu_pod_requires_tpu_and_zone():
  result = _run('launch_tpu_pod.sh', '--dry-run', '--', '--config=configs/default.py')
  assert result.returncode == 2 and '--tpu and --zone are required' in result.stderr


def test_slurm_dry_run_prints_the_batch_script_and_sbatch():
  result = _run('launch_slurm.sh', '--dry-run', '--nodes', '4', '--gpus-per-node', '8', '--partition', 'gpu',
                '--', '--config=configs/vit_b16_i1k_augreg.py', '--workdir=/shared/run')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  for line in ('#SBATCH --nodes=4', '#SBATCH --ntasks-per-node=1', '#SBATCH --gpus-per-node=8',
               '#SBATCH --partition=gpu', '#SBATCH --signal=TERM@120',
               'srun python -m vit_jax.main --distributed --config=configs/vit_b16_i1k_augreg.py '
               '--workdir=/shared/run', 'sbatch <the script above>'):
    assert line in out, line
  assert f'cd {lib.REPO}' in out
