"""The GPU programs of the train step and the forward, lowered for CUDA on CPU, and cuDNN vs XLA on a GPU."""
import io
import contextlib
import os
import re
import sys

import jax
import jax.numpy as jnp
import pytest

from vit_jax.perf import benchmarking
from vit_jax.perf import device_check
from vit_jax.perf import lowering

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'scripts'))
import benchmark as benchmark_cli  # pylint: disable=g-import-not-at-top,wrong-import-position

LAYERS = 2
# ViT-Ti/16 at 224 px: 197 tokens (odd, as in every published /16 model at 224) and head_dim 64; two layers.
TI16 = benchmarking.BenchConfig(model='Ti/16', num_layers=LAYERS, batch=8, attention_impl='cudnn', num_classes=10)
DENSE_PER_LAYER = 6  # q, k, v, out, mlp in, mlp out


def _counts(mode: str, **changes) -> dict:
  cfg = benchmarking.dataclasses.replace(TI16, **changes)
  return lowering.summarize(lowering.lower(cfg, (mode,))[mode])


def test_cudnn_train_step_lowers_for_gpu_with_197_tokens():
  # jax's cuDNN rule rejects odd lengths under differentiation; the model pads 197 -> 198 so training works.
  c = _counts('train')
  assert (c['fmha_fwd'], c['fmha_bwd']) == (LAYERS, LAYERS)
  # Every encoder matmul (forward, and both backward products) runs in bf16; only the float32 head does not.
  assert c['dots_bf16_in'] == 3 * DENSE_PER_LAYER * LAYERS
  assert c['dots_f32_in'] == 3 and c['dots'] == c['dots_bf16_in'] + c['dots_f32_in']
  assert c['other_custom_calls'] == 0 and c['while_loops'] == 0


def test_cudnn_forward_has_one_fused_call_per_layer_and_no_backward():
  c = _counts('infer')
  assert (c['fmha_fwd'], c['fmha_bwd']) == (LAYERS, 0)
  assert (c['dots_bf16_in'], c['dots_f32_in']) == (DENSE_PER_LAYER * LAYERS, 1)


def test_auto_attention_picks_cudnn_on_a_gpu_for_bf16(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')  # what 'auto' asks; the devices stay CPUs
  assert (_counts('train', attention_impl='auto')['fmha_fwd'],
          _counts('train', attention_impl='auto', dtype='float32')['fmha_fwd']) == (LAYERS, 0)


def test_xla_attention_uses_matmuls_not_cudnn():
  c = _counts('train', attention_impl='xla')
  assert (c['fmha_fwd'], c['fmha_bwd']) == (0, 0)
  # + q k^T and weights @ v per layer, forward and backward.
  assert c['dots'] == 3 * (DENSE_PER_LAYER + 2) * LAYERS + 3
  # All with 16-bit inputs (q k^T writes float32 logits) but the float32 head's three.
  assert c['dots_f32_in'] == 3 and c['dots_by_type']['bf16xbf16->f32'] == LAYERS


@pytest.mark.parametrize('policy,fwd,bf16_dots', [
    ('full', 2 * LAYERS, 3 * DENSE_PER_LAYER * LAYERS + (DENSE_PER_LAYER - 1) * LAYERS),  # all but MLP-out again
    ('dots_no_batch', 2 * LAYERS, 3 * DENSE_PER_LAYER * LAYERS),  # Dense outputs kept; attention recomputed
])
def test_remat_policy_reaches_the_gpu_program(policy, fwd, bf16_dots):
  c = _counts('train', remat_policy=policy)
  assert (c['fmha_fwd'], c['fmha_bwd'], c['dots_bf16_in']) == (fwd, LAYERS, bf16_dots)


def test_scan_lowers_one_layer_body():
  c = _counts('train', scan=True)
  assert (c['fmha_fwd'], c['fmha_bwd'], c['while_loops']) == (1, 1, 2)  # forward and backward loops


def test_summarize_follows_calls():
  inner = jax.jit(lambda x: x @ x)
  text = jax.jit(lambda x: inner(inner(x))).trace(jnp.ones((4, 4), jnp.bfloat16)).lower(
      lowering_platforms=('cuda',)).as_text()
  assert text.count('dot_general') == 1  # one private function, called twice
  assert lowering.summarize(text)['dots_bf16_in'] == 2


def test_assume_gpu_restores_jax():
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  before = fa.check_cudnn_version
  with lowering.assume_gpu(cudnn_version=90100):
    assert fa.check_cudnn_version() == 90100
    assert fa.check_compute_capability('9.0') and not fa.check_compute_capability('10.0')
  assert fa.check_cudnn_version is before


def test_cli_lower_only_prints_the_counts():
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    benchmark_cli.main(['--model', 'Ti/16', '--num_layers', '1', '--num_classes', '10', '--batch', '8',
                        '--attention_impl', 'cudnn', '--modes', 'train', '--lower_only', 'cuda'])
  table = [l for l in out.getvalue().splitlines() if l.startswith('| Ti/16')]
  header = [l for l in out.getvalue().splitlines() if l.startswith('|  model') or l.startswith('| model')][0]
  cells = dict(zip([h.strip() for h in header.split('|')], [c.strip() for c in table[0].split('|')]))
  counts = (cells['train fMHA fwd'], cells['train fMHA bwd'], cells['train dots bf16'])
  assert counts == ('1', '1', str(3 * DENSE_PER_LAYER))


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN attention runs on a GPU only')
def test_cudnn_matches_xla_on_gpu():
  errors = device_check.attention_errors('cudnn')  # 197 tokens, bf16: logits and gradients
  assert errors['ok'], errors


@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 devices (tests/conftest.py fakes 8 CPUs)')
def test_fsdp_mesh_lowers_with_cudnn_attention_partitioned():
  # 8 devices, data=2 x fsdp=4: jax wraps each cuDNN call for XLA's SPMD partitioner to expand.
  cfg = benchmarking.dataclasses.replace(TI16, mesh='data=2,fsdp=4', rules='fsdp')
  texts = lowering.lower(cfg, ('train', 'infer'), num_devices=None)
  c = lowering.summarize(texts['train'])
  assert (c['spmd_partitioned_calls'], c['fmha_fwd'], c['dots_f32_in']) == (2 * LAYERS, 0, 3)
  assert 'mhlo.num_partitions = 8' in texts['infer']
  # The q and kv sequence lengths of every call (forward and backward) are sharded like the batch of the
  # activations: jax's partitioner gives each shard its rows of q and of the lengths, which must agree (an
  # unconstrained, replicated length vector would reach each shard whole: "kv_seqlen must have same batch as Q").
  batch = re.search(r'sharding_constraint %\S+ <@mesh, \[(\{[^}]*\}), \{\}, \{\}\]> : tensor<8x197x',
                    texts['train']).group(1)
  assert batch == '{"data", "fsdp"}'
  assert lowering.seqlen_shardings(texts['train']) == [batch] * (2 * 2 * LAYERS)  # (q, kv) x (fwd, bwd)
  assert lowering.seqlen_shardings(texts['infer']) == [batch] * (2 * LAYERS)
