"""The speed benchmark on CPU (fields, units, consistency) and the model's performance options it exposes."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import flops
from vit_jax.perf import benchmarking

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'scripts'))
import benchmark as benchmark_cli  # pylint: disable=g-import-not-at-top,wrong-import-position

# A plain 2-layer ViT at 32 px (17 tokens, width 192): big enough that matmuls dominate the FLOPs.
SMALL = dict(model='Ti/8', resolution=32, num_layers=2, num_classes=10, dtype='float32', steps=2, reps=2, warmup=1)
PEAK = 0.05  # TFLOP/s per device, given: measuring it would only slow the test


@pytest.fixture(scope='module')
def cli_result(tmp_path_factory):
  path = tmp_path_factory.mktemp('bench') / 'out.json'
  benchmark_cli.main(['--model', 'Ti/8', '--resolution', '32', '--num_layers', '2', '--num_classes', '10',
                      '--dtype', 'float32', '--batch', '8', '--mesh', 'data=2,fsdp=4', '--rules', 'fsdp',
                      '--steps', '2', '--reps', '2', '--warmup', '1', '--peak_tflops', str(PEAK),
                      '--json', str(path)])
  with open(path) as f:
    return json.load(f)


@pytest.mark.slow
def test_cli_writes_positive_consistent_numbers(cli_result):
  row, = cli_result['rows']
  for key in ('compile_s', 'train_step_ms', 'train_img_s', 'infer_ms', 'infer_img_s', 'fwd_GFLOP_xla',
              'fwd_GFLOP_analytic', 'train_mfu_%', 'infer_mfu_%', 'train_mem_compiled_GB', 'params_M'):
    assert row[key] > 0, key
  assert row['train_img_s'] == pytest.approx(8 / (row['train_step_ms'] / 1e3), rel=1e-9)
  assert row['infer_img_s'] == pytest.approx(8 / (row['infer_ms'] / 1e3), rel=1e-9)
  # Analytic matmul FLOPs vs XLA's count of the compiled forward (which adds norms, GELU, softmax).
  assert row['fwd_GFLOP_xla'] == pytest.approx(row['fwd_GFLOP_analytic'], rel=0.10)
  # MFU: 3x forward FLOPs per trained image, against the given per-device peak times the 8 devices.
  assert row['peak_TFLOPs'] == pytest.approx(8 * PEAK)
  assert row['train_mfu_%'] == pytest.approx(
      100 * 3 * row['fwd_GFLOP_analytic'] * 1e9 * row['train_img_s'] / 1e12 / (8 * PEAK))
  assert row['peak_mem_GB'] == 'n/a'  # CPU devices keep no allocator statistics
  assert row['train_mem_compiled_GB'] * 1e9 > 4 * row['params_M'] * 1e6  # at least the float32 params
  assert row['mesh'] == 'data=2,fsdp=4' and row['devices'] == 8
  header, rule, line = benchmarking.format_table([row]).splitlines()
  cells = dict(zip([h.strip() for h in header.split('|')], [c.strip() for c in line.split('|')]))
  assert cells['train img/s'] == f'{row["train_img_s"]:.1f}' and cells['peak mem GB'] == 'n/a'


def test_analytic_flops_match_timm_baseline_formula():
  # ViT-B/16 at 224: the number the MFU figures use (timm_baseline.forward_flops).
  mc = models.get_config('ViT-B_16')
  n, d, m = 197, 768, 3072
  expected = 12 * (2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d) + 2 * 196 * 16 * 16 * 3 * d + 2 * d * 1000
  assert flops.forward_flops(mc, 224, 1000) == expected
  assert expected / 1e9 == pytest.approx(35.13, abs=0.01)


def test_bad_mesh_and_batch_are_one_line_errors():
  with pytest.raises(ValueError, match='--mesh'):
    benchmarking.parse_mesh('data:8')
  with pytest.raises(ValueError, match='not divisible'):
    benchmarking.run(benchmarking.BenchConfig(**dict(SMALL, batch=6)), peak_tflops=PEAK)


def _small_model(**kw):
  return models.get_model('Ti/8', num_classes=10, head_zeroinit=False,
                          transformer={'num_layers': 2, 'dropout_rate': 0., 'attention_dropout_rate': 0.}, **kw)


@pytest.fixture(scope='module')
def small_params():
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3), minval=-1., maxval=1.)
  params = jax.jit(lambda x: _small_model().init(jax.random.PRNGKey(0), x, train=False))(x)['params']
  return x, params


def _logits(model, params, x):
  return jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, x)


@pytest.mark.slow
@pytest.mark.parametrize('impl,pad', [('dot_product', 0), ('xla', 8), ('xla', 64), ('dot_product', 128)])
def test_attention_paths_and_padding_compute_the_same_logits(small_params, impl, pad):
  x, params = small_params
  ref = _logits(_small_model(), params, x)
  out = _logits(_small_model(attention_impl=impl, attention_pad_to_multiple=pad), params, x)
  # Same function; padding only changes the shapes of the float32 reductions (differences ~1e-7 relative).
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


def test_padding_leaves_attention_weights_unpadded(small_params):
  x, params = small_params
  _, state = jax.jit(lambda p, x: _small_model(attention_pad_to_multiple=64).apply(
      {'params': p}, x, train=False, mutable=['intermediates']))(params, x)
  w = state['intermediates']['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0'][
      'attention_weights'][0]
  assert w.shape == (2, 3, 17, 17)
  np.testing.assert_allclose(w.sum(-1), 1., rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits(small_params):
  x, params = small_params
  model = _small_model(dtype=jnp.bfloat16)
  init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)['params'])
  assert {leaf.dtype for leaf in jax.tree.leaves(init)} == {jnp.dtype(jnp.float32)}
  out = _logits(model, params, x)
  ref = _logits(_small_model(), params, x)
  assert out.dtype == jnp.float32
  assert float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)) < 3e-2  # bf16 operands: 1e-3 .. 1e-2


def test_mu_dtype_bfloat16_stores_first_moment_in_bfloat16():
  api = benchmarking.step_api()
  tx, _ = api.make_optimizer(dict(benchmarking.PRETRAIN_OPTIMIZER, mu_dtype='bfloat16'))
  params = {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones((4,))}
  dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(tx.init(params)) if leaf.ndim}
  assert dtypes == {'bfloat16', 'float32'}  # mu bfloat16, nu float32


def test_memory_model_counts_the_params_of_vit_g_and_the_optimizer_state_bytes():
  cfg = benchmarking.BenchConfig(model='ViT-g_14', num_layers=2, mu_dtype='bfloat16')
  model = benchmarking.build_model(cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  mem = benchmarking.train_memory_model(cfg)
  assert mem['params'] == benchmarking.param_count(shapes['params'])
  assert mem['state_bytes'] == 14 * mem['params']  # f32 params, grads, nu + bf16 mu
  # Full depth, batch 64: remat 'full' keeps one N x D tensor per layer instead of ~12 MB of activations.
  g64 = benchmarking.BenchConfig(model='ViT-g_14', batch=64, mu_dtype='bfloat16', attention_impl='cudnn')
  none = benchmarking.train_memory_model(g64)
  full = benchmarking.train_memory_model(benchmarking.dataclasses.replace(g64, remat_policy='full'))
  assert 40e9 < none['total_bytes'] < 60e9 and full['total_bytes'] < 20e9


STAND_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'timm_stand_in.py')


def test_timm_side_by_side_runs_the_script_per_mode_and_compares():
  script = STAND_IN
  args = benchmark_cli.parse_args(['--model', 'ViT-B_16', '--batch', '64', '--infer_batch', '128', '--timm',
                                   '--timm_script', str(script)])
  timm = benchmark_cli.run_timm(args)
  assert (timm['train']['variant'], timm['train']['batch'], timm['infer']['batch']) == ('B/16', 64, 128)
  ours = {'train_img_s': 1500., 'train_mfu_%': 40., 'infer_img_s': 3000., 'infer_mfu_%': 30.}
  table = benchmark_cli.compare_with_timm(ours, timm, peak_tflops=200.)
  train_row, infer_row = table.splitlines()[2:]
  # ours / timm, and timm's MFU against the same peak as ours: 100 TFLOP/s of 200.
  assert train_row.split('|')[4].strip() == '1.50x' and train_row.split('|')[5].strip() == '50.0'
  assert infer_row.split('|')[4].strip() == '0.75x'
  failed = benchmark_cli.run_timm(benchmark_cli.parse_args(
      ['--model', 'B/16', '--batch', '8', '--infer_batch', '13', '--timm', '--timm_script', str(script)]))
  assert failed['infer'] == {'error': ['CUDA out of memory']} and failed['train']['img_s'] == 1000.0


def test_timm_needs_the_script_and_a_timm_model():
  with pytest.raises(FileNotFoundError, match='timm_script'):
    benchmark_cli.run_timm(benchmark_cli.parse_args(['--model', 'B/16', '--timm']))
  with pytest.raises(ValueError, match='compares only'):
    benchmark_cli.run_timm(benchmark_cli.parse_args(['--model', 'testing', '--timm', '--timm_script', 'x.py']))


def test_default_peak_is_the_training_loops_table(monkeypatch):
  # One table: the benchmark's MFU denominator on a known device is the loop's `progress/mfu` peak.
  from vit_jax.training import metric_logging  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, 'devices', lambda *a: [type('Device', (), {'device_kind': 'NVIDIA H200'})()])
  assert benchmarking.default_peak_tflops('bfloat16') == (metric_logging.PEAK_FLOPS['NVIDIA H200'] / 1e12, 'table')
  assert metric_logging.PEAK_FLOPS['NVIDIA H200'] == 989e12
