"""provenance.json: the git commit, package versions and devices of a run, beside config.json."""
import pytest
import importlib.metadata
import json
import os
import subprocess

import jax
import numpy as np

import loop_testlib as lib
from vit_jax.training import loop
from vit_jax.training import provenance


@pytest.mark.slow
def test_a_run_records_commit_versions_and_devices(tmp_path):
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(lib.tiny_config(total_steps=2, warmup_steps=1, checkpoint_every=100), workdir)
  assert os.path.isfile(os.path.join(workdir, 'config.json'))
  with open(os.path.join(workdir, 'provenance.json')) as f:
    record = json.load(f)
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=lib.REPO, capture_output=True, text=True, check=True)
  assert record['git_commit'] == head.stdout.strip()
  packages = record['packages']
  assert packages['jax'] == jax.__version__ and packages['numpy'] == np.__version__
  assert packages['flax'] == importlib.metadata.version('flax')
  assert packages['orbax-checkpoint'] == importlib.metadata.version('orbax-checkpoint')
  assert set(provenance.PACKAGES) == set(packages)
  assert (record['device_kind'], record['device_count'], record['local_device_count'], record['process_count'],
          record['backend']) == ('cpu', 8, 8, 1, 'cpu')


def test_no_git_checkout_gives_none_not_an_error(tmp_path, monkeypatch):
  assert provenance.git_commit(str(tmp_path)) is None  # not a repository
  assert provenance.git_commit(str(tmp_path / 'missing')) is None  # no such directory
  monkeypatch.setenv('PATH', str(tmp_path))  # no git binary at all
  assert provenance.git_commit(lib.REPO) is None
  assert provenance.collect()['git_commit'] is None
