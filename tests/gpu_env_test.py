"""The benchmark and the training loop run with only the GPU machine's packages (no TF, TFDS, clu, grain, ...).

The GPU image has jax, flax, optax, orbax-checkpoint, chex, numpy, absl, torch and timm, but none of `ABSENT`. Each
test runs a subprocess in which those cannot be imported, as there; the loop needs ml_collections carried as a wheel.
"""
import pytest
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Installed here, absent on the GPU machine (it has absl, PyYAML, scikit-learn, OpenCV, pytest, ...).
ABSENT = ('tensorflow', 'tensorflow_datasets', 'clu', 'grain', 'array_record', 'simplejpeg')
# The path finder no longer sees the absent packages: imports fail and importlib.util.find_spec says None, as there.
_PRELUDE = '''
import importlib.abc, importlib.machinery, importlib.util, runpy, sys
class _PathFinderWithout(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {absent!r}:
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [_PathFinderWithout() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
for name in {absent!r}:
  assert importlib.util.find_spec(name) is None, name
sys.argv = {argv!r}
runpy.{how}
'''


def _run(argv, how, absent, tmp_path):
  code = _PRELUDE.format(absent=tuple(absent), argv=list(argv), how=how)
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='', PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-6000:])
  return r.stdout


@pytest.mark.slow
def test_benchmark_runs_without_ml_collections_tf_or_clu(tmp_path):
  script = os.path.join(REPO, 'scripts', 'benchmark.py')
  out = _run([script, '--model', 'testing', '--resolution', '32', '--batch', '4', '--dtype', 'float32', '--steps',
              '1', '--reps', '1', '--warmup', '0', '--peak_tflops', '1'],
             f'run_path({script!r}, run_name="__main__")', ABSENT + ('ml_collections',), tmp_path)
  assert 'train img/s' in out


@pytest.mark.slow
def test_main_trains_on_synthetic_data_with_only_ml_collections_added(tmp_path):
  workdir = str(tmp_path / 'run')
  common = os.path.join(REPO, 'vit_jax', 'configs', 'common.py')
  out = _run(['vit_jax.main', f'--config={common}', f'--workdir={workdir}',
              '--config.dataset=synthetic', '--config.pp.crop=32', '--config.pp.num_classes=10',
              '--config.pp.num_eval=16', '--config.model_name=testing', '--config.batch=8', '--config.batch_eval=8',
              '--config.total_steps=3', '--config.warmup_steps=1', '--config.progress_every=1',
              '--config.eval_every=3', '--config.checkpoint_every=3', '--config.tensorboard=False'],
             'run_module("vit_jax.main", run_name="__main__", alter_sys=True)', ABSENT, tmp_path)
  assert 'Final test accuracy' in out
  assert os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
