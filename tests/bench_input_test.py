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


@pytest.mark.slow
def test_measuring_functions_run_both_pipelines(tmp_path):
  bench_input.make_jpegs(str(tmp_path), 6)
  ours = bench_input.measure_ours(str(tmp_path), workers=1, num_images=32)
  assert set(ours) == {'wall', 'cpu'} and ours['wall'] > 0 and ours['cpu'] > 0
  pytest.importorskip('tensorflow')
  tf_ = bench_input.measure_tf(str(tmp_path), workers=1, num_images=32)
  assert tf_['wall'] > 0 and tf_['cpu'] > 0


@pytest.mark.slow
def test_ingest_and_shard_measurements_run_on_the_same_jpegs(tmp_path):
  root = str(tmp_path / 'folder')
  bench_input.make_jpegs(root, 6)
  bench_input._replicate(root, str(tmp_path / 'folder3'), 3)  # pylint: disable=protected-access
  assert sum(len(fs) for _, _, fs in os.walk(tmp_path / 'folder3')) == 18
  ingest = bench_input.measure_ingest(root, root + '_prepared', workers=1)
  assert ingest['images'] == 6 and ingest['wall'] > 0 and ingest['cpu'] > 0
  ours = bench_input.measure_ours(root + '_prepared', workers=1, num_images=32)
  assert ours['wall'] > 0 and ours['cpu'] > 0


def test_host_targets_scale_the_b16_rates_by_train_flops():
  assert bench_input.host_targets('ViT-B_16', 224) == {'8x H100': 8 * 4100., 'TPU v4 host': 4 * 2000.}
  l16 = bench_input.host_targets('ViT-L_16', 224)['8x H100']
  assert l16 == pytest.approx(8 * 4100 * 35.13 / 123.11, rel=1e-3)  # same MFU: ~1,170 img/s per H100


def test_preset_targets_are_the_hosts_for_accelerator_presets_and_none_for_the_cpu_default():
  augreg = bench_input.preset_targets('configs/vit_b16_i1k_augreg.py', 'ViT-B_16', 224)
  assert augreg == {'8x H100': 8 * 4100., 'TPU v4 host': 4 * 2000.}
  assert bench_input.preset_targets('configs/default.py', 'R+ViT-Ti_16', 16) == {}
  assert bench_input.documented_hardware('configs/finetune.py:imagenet2012').startswith('one TPU v3-8 or 8 GPUs')


@pytest.mark.slow
def test_preset_mode_runs_the_presets_pipeline_in_worker_processes(tmp_path, capsys):
  out = tmp_path / 'rows.json'
  rows = bench_input.main(['--config', 'configs/vit_b16_i1k_augreg.py', '--workers', '1', '--batch', '8',
                           '--images', '6', '--measure', '8', '--repeats', '1', '--json', str(out)])
  row, = rows
  # AugReg's pipeline (RandAugment; mixup runs on the devices) at batch 8 in one grain worker process; each label
  # is one int32 class index (no dense one-hot row crosses to the devices).
  assert (row['model'], row['batch'], row['workers'], row['label_width']) == ('ViT-B_16', 8, 1, 1)
  assert row['img_s'] > 0 and row['img_per_cpu_s'] > 0
  assert row['8x H100 img/s'] == 8 * 4100. and row['8x H100 cores'] == 8 * 4100. / row['img_per_cpu_s']
  assert row['TPU v4 host cores'] == 8000. / row['img_per_cpu_s']
  assert 'randaug (2, 15), mixup 0.5' in capsys.readouterr().out
  assert bench_input.json.loads(out.read_text()) == rows


def test_tree_cpu_seconds_counts_child_processes():
  import subprocess, sys, time  # pylint: disable=g-import-not-at-top,multiple-imports
  child = subprocess.Popen([sys.executable, '-c', 'import time\nt = time.process_time()\n'
                            'while time.process_time() - t < 1.0: pass\ntime.sleep(30)'])
  try:
    before = bench_input._tree_cpu_seconds()  # pylint: disable=protected-access
    deadline = time.time() + 60
    while bench_input._tree_cpu_seconds() - before < 0.5 and time.time() < deadline:  # pylint: disable=protected-access
      time.sleep(0.1)
    assert bench_input._tree_cpu_seconds() - before >= 0.5  # pylint: disable=protected-access
  finally:
    child.kill()
    child.wait()
