"""Runs scripts/bench_input.py's measuring functions (pipelines, prepared shards, ingest) on a handful of images."""
import os

import pytest
from PIL import Image

from scripts import bench_input


def test_make_jpegs_are_imagenet_like(tmp_path):
  files = bench_input.make_jpegs(str(tmp_path), 4)
  assert len(files) == 4 and all(f.endswith('.jpg') for f in files)
  with Image.open(files[0]) as img:
    assert img.format == 'JPEG' and img.size == (500, 375)
  assert 20_000 < os.path.getsize(files[0]) < 300_000


def test_measuring_functions_run_both_pipelines(tmp_path):
  bench_input.make_jpegs(str(tmp_path), 6)
  ours = bench_input.measure_ours(str(tmp_path), workers=1, num_images=32)
  assert set(ours) == {'wall', 'cpu'} and ours['wall'] > 0 and ours['cpu'] > 0
  pytest.importorskip('tensorflow')
  tf_ = bench_input.measure_tf(str(tmp_path), workers=1, num_images=32)
  assert tf_['wall'] > 0 and tf_['cpu'] > 0


def test_ingest_and_shard_measurements_run_on_the_same_jpegs(tmp_path):
  root = str(tmp_path / 'folder')
  bench_input.make_jpegs(root, 6)
  bench_input._replicate(root, str(tmp_path / 'folder3'), 3)  # pylint: disable=protected-access
  assert sum(len(fs) for _, _, fs in os.walk(tmp_path / 'folder3')) == 18
  ingest = bench_input.measure_ingest(root, root + '_prepared', workers=1)
  assert ingest['images'] == 6 and ingest['wall'] > 0 and ingest['cpu'] > 0
  ours = bench_input.measure_ours(root + '_prepared', workers=1, num_images=32)
  assert ours['wall'] > 0 and ours['cpu'] > 0
