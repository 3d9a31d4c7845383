"""Runs scripts/bench_feed.py as docs/data.md shows it, on a small batch."""
import pytest
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = 'python scripts/bench_feed.py --batch 16 --crop 16 --classes 10 --steps 2 --device'


@pytest.mark.slow
def test_bench_feed_prints_the_host_cost_and_what_crosses_to_the_devices():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  argv = [sys.executable] + shlex.split(COMMAND)[1:]
  r = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [l for l in r.stdout.splitlines() if 'ms wall' in l]
  assert len(rows) == 2 and 'mixup 0.5' in rows[1]
  for row in rows:
    assert "{'image': 'uint8', 'label': 'int32'}" in row
    # 16 images of 16 x 16 x 3 bytes and 16 int32 labels.
    assert float(re.search(r'([\d.]+) MB', row).group(1)) == round((16 * 16 * 16 * 3 + 16 * 4) / 1e6, 3)
  assert 'mixing.train_batch with mixup 0.5, 10 classes' in r.stdout
