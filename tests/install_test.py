"""The install split: the base install (README command 1) trains without TensorFlow, Beam or PyTorch; extras name
themselves when a feature needs one that is missing."""
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging import requirements

import loop_testlib as lib
from vit_jax import extras

# Heavy distributions that the base install must not pull in, directly or through a dependency.
HEAVY = ('torch', 'torchvision', 'triton', 'tensorflow', 'tensorflow-cpu', 'apache-beam', 'pyarrow', 'timm',
         'transformers')


def _requirements(path: str) -> list[requirements.Requirement]:
  lines = open(os.path.join(lib.REPO, path)).read().splitlines()
  return [requirements.Requirement(l) for l in lines if l.strip() and not l.lstrip().startswith(('#', '-'))]


def _normal(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _closure(roots: list[requirements.Requirement]) -> set[str]:
  """Every distribution that installing `roots` (no extras of ours) pulls in, from the installed metadata."""
  seen: set[str] = set()
  todo = [(r, frozenset(r.extras)) for r in roots]
  while todo:
    req, wanted_extras = todo.pop()
    name = _normal(req.name)
    key = f'{name}[{",".join(sorted(wanted_extras))}]'
    if key in seen:
      continue
    seen.add(key)
    try:
      dist = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
      continue  # Not installed here (a marker for another platform); nothing below it to follow.
    for line in dist.requires or []:
      sub = requirements.Requirement(line)
      env_sets = [{'extra': e} for e in wanted_extras] or [{'extra': ''}]
      if sub.marker is None or any(sub.marker.evaluate(e) for e in env_sets):
        todo.append((sub, frozenset(sub.extras)))
  return {k.split('[')[0] for k in seen}


def test_base_install_pulls_in_no_heavy_distribution():
  base = [r for r in _requirements('requirements.txt') if r.marker is None or r.marker.evaluate()]
  closure = _closure(base)
  assert {'jax', 'flax', 'grain', 'tensorboard'} <= closure, sorted(closure)
  heavy = sorted(n for n in closure if n in HEAVY or n.startswith('nvidia-'))
  assert not heavy, f'requirements.txt pulls in {heavy}; make them an extra (pyproject.toml) instead'


def test_extras_in_pyproject_match_the_extras_module():
  pyproject = tomllib.load(open(os.path.join(lib.REPO, 'pyproject.toml'), 'rb'))
  optional = pyproject['project']['optional-dependencies']
  assert set(optional) == set(extras.EXTRAS) | {'all'}
  assert any(_normal(requirements.Requirement(r).name) == 'tensorflow-datasets' for r in optional['tfds'])
  assert any(_normal(requirements.Requirement(r).name) == 'apache-beam' for r in optional['prepare'])
  # The test requirements install every extra, so the tests see the whole package.
  test_reqs = open(os.path.join(lib.REPO, 'requirements-test.txt')).read()
  assert '-e .[all]' in test_reqs.splitlines()


def test_require_names_the_extra_and_keeps_other_import_errors():
  with pytest.raises(extras.MissingExtra, match=r"Thing needs no_such_module_x, which is not installed: "
                     r"pip install 'vit_jax\[tfds\]'"):
    extras.require('no_such_module_x.sub', 'tfds', 'Thing')
  assert extras.require('json', 'tfds', 'Thing').dumps([1]) == '[1]'


# A sitecustomize that makes the heavy optional packages unimportable, as in a base install.
_BLOCKER = '''
import importlib.abc, sys
class _Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {blocked!r}:
      raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
    return None
sys.meta_path.insert(0, _Blocked())
'''
_BLOCKED = ('tensorflow', 'tensorflow_datasets', 'apache_beam', 'torch', 'timm', 'transformers')


def _blocked_env(tmp_path) -> dict[str, str]:
  site = tmp_path / 'blocker'
  site.mkdir()
  (site / 'sitecustomize.py').write_text(_BLOCKER.format(blocked=_BLOCKED))
  return lib.env(PYTHONPATH=f'{site}{os.pathsep}{lib.REPO}')


@pytest.mark.slow
def test_default_trains_without_the_extras_and_writes_tensorboard_events(tmp_path):
  env = _blocked_env(tmp_path)
  workdir = str(tmp_path / 'run')
  out = subprocess.run(lib.main_command(workdir, {'tensorboard': True, 'total_steps': 4, 'eval_every': 4}),
                       cwd=lib.REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1].startswith('Final test accuracy:')
  # The event files hold the logged scalars (read back with tensorboard's own reader).
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  tags = acc.Tags()['tensors']
  assert 'train/loss' in tags and 'val/top1' in tags, tags
  losses = {e.step: float(e.tensor_proto.float_val[0]) for e in acc.Tensors('train/loss')}
  assert losses == pytest.approx({s: l for s, l in lib.train_losses(workdir).items()}, rel=1e-6)


@pytest.mark.slow
def test_a_tfds_dataset_without_the_extra_is_one_line(tmp_path):
  out = subprocess.run(lib.main_command(str(tmp_path / 'run'), {'dataset': 'cifar10'}), cwd=lib.REPO,
                       env=_blocked_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("Config error: config.dataset='cifar10' cannot be loaded: Dataset 'cifar10' (a TFDS "
                         "name) needs tensorflow_datasets, which is not installed: pip install 'vit_jax[tfds]'"), last


def test_prepare_data_without_the_extra_is_one_line(tmp_path):
  (tmp_path / 'images' / 'train' / 'a').mkdir(parents=True)
  out = subprocess.run([sys.executable, '-m', 'vit_jax.prepare_data', f'--input={tmp_path / "images"}',
                        f'--output={tmp_path / "out"}'], cwd=lib.REPO, env=_blocked_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().splitlines() == [
      "error: vit_jax.prepare_data needs apache_beam, which is not installed: pip install 'vit_jax[prepare]' "
      "(or, from a checkout, pip install -e '.[prepare]')."]
