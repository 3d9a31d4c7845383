"""scripts/gpu_first_run.sh on CPU (--tiny, a stand-in timm) with TensorFlow, TFDS, ml_collections, clu blocked.

Every step and flag of the GPU run is exercised here with scaled-down shapes, so the first GPU session cannot meet a
script that rotted; the import blocker is the GPU machine's package set (it has none of `ABSENT`).
"""
import json
import os
import subprocess
import sys

import pytest

from vit_jax.perf import first_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_COMMAND = 'scripts/gpu_first_run.sh --tiny tests/perf/timm_stand_in.py'  # docs/performance.md, section 1
ABSENT = ('tensorflow', 'tensorflow_datasets', 'ml_collections', 'clu', 'grain', 'array_record', 'simplejpeg')
# Loaded by every Python process the script starts (sitecustomize on PYTHONPATH): a None entry in sys.modules makes
# `import name` fail and importlib.util.find_spec(name) return None, as on the GPU machine.
_BLOCKER = 'import sys\nsys.modules.update(dict.fromkeys({absent!r}))\n'


def _env(tmp_path) -> dict:
  blocker = tmp_path / 'blocker'
  blocker.mkdir(exist_ok=True)
  (blocker / 'sitecustomize.py').write_text(_BLOCKER.format(absent=ABSENT))
  return dict(os.environ, OUT=str(tmp_path / 'out'), PYTHONPATH=str(blocker), JAX_PLATFORMS='cpu', XLA_FLAGS='',
              PYTHON=sys.executable)


@pytest.mark.slow
def test_first_run_script_runs_every_step_on_cpu_without_tensorflow(tmp_path):
  env = _env(tmp_path)
  blocked = subprocess.run([sys.executable, '-c', 'import ml_collections'], env=env, capture_output=True, text=True)
  assert 'import of ml_collections halted' in blocked.stderr  # installed here: the blocker is active
  r = subprocess.run(['bash', '-c', CPU_COMMAND], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
  out = tmp_path / 'out'
  with open(out / 'first_run.json') as f:
    report = json.load(f)
  assert report['missing'] == []
  device = report['device']
  assert device['attention']['ok'] and device['attention']['tokens'] == 17  # an odd length, as 197
  assert (device['cudnn_program']['fmha_fwd'], device['cudnn_program']['fmha_bwd']) == (1, 1)
  assert device['peak_measured_TFLOPs'] > 0 and device['peak_n'] == 256
  rows = {(r['model'], r['mode'], r['system']): r for r in report['rows']}
  assert set(rows) == {('ViT-B_16', m, s) for m in ('train', 'infer')
                       for s in ('ours (dot_product)', 'ours (xla)', 'timm stand-in')} | {
                           ('ViT-L_16', 'train', 'ours (dot_product)'), ('ViT-L_16', 'train', 'timm stand-in')}
  ours = [r for r in report['rows'] if r['system'].startswith('ours')]
  assert all(r['img_s'] > 0 and r['step_ms'] > 0 and r['compile_s'] > 0 for r in ours)
  assert all(r['batch'] == 8 for r in ours)
  # Scaled down, so no ratio to timm: said once per model, in the JSON and the table.
  assert len(report['not_comparable']) == 2 and not any('x_timm' in r for r in report['rows'])
  md = (out / 'first_run.md').read_text()
  assert md.count('NOT COMPARABLE') == 2 and '| ViT-L_16 | train | ours (dot_product) | 8 |' in md
  for name in ('env', 'device', 'b16', 'l16', 'report'):
    assert (out / f'{name}.log').stat().st_size > 0, name


def test_first_run_script_without_timm_is_one_line_exit_2(tmp_path):
  r = subprocess.run(['bash', 'scripts/gpu_first_run.sh'], cwd=REPO, env=_env(tmp_path), capture_output=True,
                     text=True)
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'timm_baseline.py' in r.stderr


def test_report_puts_ours_beside_timm_with_both_peaks(tmp_path):
  bench = {'rows': [{'model': 'ViT-B_16', 'attn': 'cudnn', 'devices': 1, 'batch': 512, 'infer_batch': 1024,
                     'train_img_s': 4000., 'train_step_ms': 128., 'compile_s': 30., 'train_GFLOP_analytic': 105.,
                     'infer_img_s': 12000., 'infer_ms': 85.3, 'infer_compile_s': 9., 'fwd_GFLOP_analytic': 35.},
                    {'model': 'ViT-B_16', 'attn': 'xla', 'error': 'XlaRuntimeError: RESOURCE_EXHAUSTED'}],
           'timm': {'train': {'system': 'timm', 'batch': 512, 'img_s': 3200., 'tflops': 336.},
                    'infer': {'error': ['CUDA out of memory']}}}
  (tmp_path / 'b16.json').write_text(json.dumps(bench))
  device = {'device_kind': 'NVIDIA H100 80GB HBM3', 'platform': 'gpu', 'devices': 1, 'jax': '0.11.2',
            'attention': {'impl': 'cudnn', 'tokens': 197, 'logits_rel_err': 1e-3, 'grad_rel_l2': 2e-3, 'ok': True},
            'cudnn_program': {'fmha_fwd': 2, 'fmha_bwd': 2, 'layers': 2, 'ok': True},
            'peak_measured_TFLOPs': 700., 'peak_n': 8192, 'peak_table_TFLOPs': 989.}
  (tmp_path / 'device.json').write_text(json.dumps(device))
  assert first_run.main([str(tmp_path)]) == 1  # l16.json is missing
  report = json.loads((tmp_path / 'first_run.json').read_text())
  assert report['missing'] == ['l16.json']
  rows = {(r['mode'], r['system']): r for r in report['rows']}
  train = rows[('train', 'ours (cudnn)')]
  assert train['x_timm'] == pytest.approx(4000 / 3200)
  assert train['mfu_table_%'] == pytest.approx(100 * 105 * 4000 / 1e3 / 989)
  assert train['mfu_measured_%'] == pytest.approx(100 * 105 * 4000 / 1e3 / 700)
  assert rows[('train', 'timm')]['mfu_table_%'] == pytest.approx(100 * 336 / 989)
  assert rows[('train', 'timm')]['GFLOP_img'] == pytest.approx(105)  # 336 TFLOP/s / 3200 img/s
  assert 'x_timm' not in rows[('infer', 'ours (cudnn)')]  # timm's inference failed: no ratio
  assert rows[('infer', 'timm + torch.compile')]['error'] == 'CUDA out of memory'
  assert rows[('-', 'ours (xla)')]['error'].startswith('XlaRuntimeError')
  md = (tmp_path / 'first_run.md').read_text()
  assert '| ViT-B_16 | train | ours (cudnn) | 512 | 4000.0 | 1.25 | 105 | 42.5 | 60.0 | 128.00 | 30.0 | - |' in md
  assert 'Missing (that step failed; see its log): l16.json.' in md
