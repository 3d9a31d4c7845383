"""`pip install .` gives the package, its five console scripts, and presets that load without the repository."""
import configparser
import os
import shutil
import subprocess
import sys

import loop_testlib as lib

SCRIPTS = {
    'vit-jax-train': 'vit_jax.main:run',
    'vit-jax-predict': 'vit_jax.predict:run',
    'vit-jax-visualize': 'vit_jax.visualize:run',
    'vit-jax-fewshot': 'vit_jax.fewshot:run',
    'vit-jax-export': 'vit_jax.export:run',
}


def _install(tmp_path):
  """pip install --no-deps --target of a copy of the source (an in-tree build would leave build/ in the repo)."""
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'requirements.txt', 'README.md'):
    shutil.copy(os.path.join(lib.REPO, name), src / name)
  shutil.copytree(os.path.join(lib.REPO, 'vit_jax'), src / 'vit_jax', ignore=shutil.ignore_patterns('__pycache__'))
  target = tmp_path / 'site'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-build-isolation', '--no-index',
                  '--target', str(target), str(src)], check=True, cwd=tmp_path, timeout=300)
  return target


def _env(target):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PYTHONPATH'] = str(target)  # only the installed package; the repository is not on sys.path
  return env


def test_installed_package_has_the_console_scripts_and_loads_presets_without_the_repo(tmp_path):
  target = _install(tmp_path)
  dist_info = [d for d in os.listdir(target) if d.startswith('vit_jax-') and d.endswith('.dist-info')]
  assert len(dist_info) == 1, os.listdir(target)
  entry_points = configparser.ConfigParser()
  entry_points.read(target / dist_info[0] / 'entry_points.txt')
  assert dict(entry_points['console_scripts']) == SCRIPTS
  metadata = (target / dist_info[0] / 'METADATA').read_text().splitlines()
  requires = [l.split(': ', 1)[1] for l in metadata if l.startswith('Requires-Dist: ')]
  assert 'jax<0.13,>=0.10' in requires and 'absl-py>=2.1' in requires, requires  # read from requirements.txt
  assert not [r for r in requires if r.startswith(('pytest', 'torch', 'timm'))], requires  # runtime deps only
  assert not (target / 'configs').exists() and not (target / 'tests').exists()

  # A preset loaded by path (as --config=configs/default.py does) from an unrelated cwd, with only the installed
  # package importable: its `from vit_jax.configs import common` must not need the repository on sys.path.
  probe = f'''
import importlib.util, os, sys
assert not any(os.path.abspath(p or '.') == {lib.REPO!r} for p in sys.path), sys.path
spec = importlib.util.spec_from_file_location('preset', {os.path.join(lib.REPO, 'configs', 'default.py')!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import vit_jax
assert vit_jax.__file__.startswith({str(target)!r}), vit_jax.__file__
config = module.get_config()
print(config.model_name, config.total_steps, config.pp.crop)
'''
  out = subprocess.run([sys.executable, '-c', probe], cwd=tmp_path, env=_env(target), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['R+ViT-Ti_16', '1500', '16']

  # The console script wraps absl's app.run: with no flags it names what is missing, in one line, exit status 2.
  train = subprocess.run([str(target / 'bin' / 'vit-jax-train')], cwd=tmp_path, env=_env(target),
                         capture_output=True, text=True, timeout=120)
  assert train.returncode == 2, train.stderr
  assert train.stderr.strip().splitlines()[-1].startswith('Both --config (e.g. configs/default.py) and --workdir')
