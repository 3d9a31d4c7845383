"""The GPU programs of the train step and the forward, lowered for CUDA on CPU, and cuDNN vs XLA on a GPU; every
accelerator preset's own train step lowered for CUDA and TPU with its pins (docs/sharding.md reads them)."""
import io
import contextlib
import os
import re
import sys

import jax
import jax.numpy as jnp
import pytest

import loop_testlib as lib
from vit_jax import models
from vit_jax.perf import benchmarking
from vit_jax.perf import device_check
from vit_jax.perf import lowering
from vit_jax.training import optim

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'scripts'))
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


@pytest.mark.slow
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


def test_summarize_counts_host_callbacks():
  def step(x):
    jax.debug.print('{}', x.sum())  # a host round trip (lowered for this CPU: a callback needs its backend)
    return x * 2
  c = lowering.summarize(jax.jit(step).trace(jnp.ones(4)).lower().as_text())
  assert (c['host_callbacks'], c['other_custom_calls']) == (1, 0)


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


# --- The presets' own train steps (the loop's `step_program`: their mesh, rules, dtype, remat, scan, optimizer and
# loss), one layer deep, at the per-device batch of the hardware their docstrings name, on the 8 fake CPU devices.
# name: (per-device batch = 4096 or 512 over the named chips, classes, representation layer).
PRESETS = {
    'vit_s16_i21k': (64, 21843, True),        # TPU v3-64
    'vit_b16_i21k': (16, 21843, True),        # TPU v3-256
    'vit_l16_i21k': (8, 21843, True),         # TPU v3-512, remat 'dots'
    'vit_h14_i21k': (4, 21843, True),         # TPU v3-1024, fsdp=8, remat 'dots', scan
    'vit_b16_i1k_augreg': (128, 1000, True),  # TPU v3-32, 4 accumulation steps of 32 per device
    'finetune': (64, 10, False),              # TPU v3-8 (cifar10), 8 accumulation steps of 8 per device
    'mae_finetune_i1k': (16, 1000, False),    # TPU v3-64
}
# MAE pretraining presets: name -> per-device batch (4096 over a TPU v3-128).
MAE_PRESETS = {'mae_vit_b16_i1k': 32, 'mae_vit_l16_i1k': 32}
# Distillation presets: name -> per-device batch (1024 over a TPU v3-32).
DISTILL_PRESETS = {'deit_b16_i1k_distill': 32}
PRESET_LAYERS = 1
# Accumulation steps the presets need to fit the named TPU (docs/compile_check.md); the others take the whole batch.
ACCUM_STEPS = {'vit_b16_i1k_augreg': 4, 'finetune': 8}


def test_every_accelerator_preset_has_a_lowering_row():
  import glob  # pylint: disable=g-import-not-at-top
  presets = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'configs', '*.py'))}
  # default, mae_digits, distill_default: float32 on CPU, nothing to pin.
  assert set(PRESETS) | set(MAE_PRESETS) | set(DISTILL_PRESETS) == presets - {'__init__', 'default', 'mae_digits',
                                                                              'distill_default'}


def _preset_program(name: str, platform: str):
  per_device, classes, _ = PRESETS[name]
  config = lib.apply(lib.load_config(name), {'model.num_layers': PRESET_LAYERS, 'batch': 8 * per_device,
                                             'model_init': None})
  text = lowering.lower_config(config, classes, platform)
  return config, text, lowering.summarize(text)


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 devices (tests/conftest.py fakes 8 CPUs)')
@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
@pytest.mark.parametrize('name', sorted(PRESETS))
def test_preset_train_step_lowers_with_its_pins(name, platform):
  config, text, c = _preset_program(name, platform)
  per_device, _, representation = PRESETS[name]
  layers, remat = PRESET_LAYERS, config.model.remat_policy != 'none'
  assert config.model.attention_impl == 'auto' and config.model.dtype == 'bfloat16'
  # The preset's mesh over the 8 devices, and its batch.
  mesh = dict(config.mesh)
  fsdp = 8 if mesh['fsdp'] == -1 else mesh['fsdp']
  assert f'sdy.mesh @mesh = <["data"={8 // fsdp}, "fsdp"={fsdp}, "tensor"=1]>' in text
  assert f'tensor<{8 * per_device}x{config.pp.crop}x{config.pp.crop}x3xf32>' in text
  # Accumulation scans the batch's micro-batches (one more while loop) after mixing the whole batch.
  accum = config.accum_steps
  assert accum == ACCUM_STEPS.get(name, 1)
  micro = f'tensor<{accum}x{8 * per_device // accum}x{config.pp.crop}x{config.pp.crop}x3xf32>'
  assert (micro in text) == (accum > 1)
  # No host round trip (callback, infeed/outfeed) inside the step, and no custom call but cuDNN attention.
  assert (c['host_callbacks'], c['other_custom_calls'], c['fmha_fwd'], c['fmha_bwd']) == (0, 0, 0, 0)
  # Matmuls: every encoder Dense (q, k, v, out, MLP in/out; forward and both backward products) takes bf16;
  # float32 only in the head and pre-logits (forward, two backward each), which the model keeps in float32.
  f32_dots = 3 * (2 if representation else 1)
  assert c['dots_f32_in'] == f32_dots and c['dots_by_type']['f32xf32->f32'] == f32_dots
  # The scanned forward and backward (inside the accumulation loop, which adds one); and mixup/cutmix's Beta draws
  # in the step (jax's Beta is two gamma draws, each lowered with two rejection loops: four per Beta).
  mix_loops = 4 * (bool(config.pp.mixup) + bool(config.pp.cutmix))
  assert c['while_loops'] == (2 if config.model.scan else 0) + (accum > 1) + mix_loops
  if platform == 'cuda':
    # 'auto' picked cuDNN: one fused forward and one backward per layer (wrapped for XLA's SPMD partitioner under
    # a mesh); remat recomputes the forward, which is not a dot that the 'dots' policy saves.
    assert (c['spmd_fmha_fwd'], c['spmd_fmha_bwd']) == ((2 if remat else 1) * layers, layers)
    assert c['spmd_partitioned_calls'] == c['spmd_fmha_fwd'] + c['spmd_fmha_bwd']
    assert c['dots_bf16_in'] == 3 * DENSE_PER_LAYER * layers == c['dots_by_type']['bf16xbf16->bf16']
  else:
    # 'auto' picked XLA attention on TPU: q k^T and weights @ v are bf16 matmuls too (q k^T with float32 logits);
    # under remat q k^T (a custom_vjp, `vit._attention_logits`, whose output the 'dots' policy does not see) is
    # computed again.
    assert c['spmd_partitioned_calls'] == 0
    assert c['dots_bf16_in'] == 3 * (DENSE_PER_LAYER + 2) * layers + (layers if remat else 0)
    assert c['dots_by_type']['bf16xbf16->f32'] == (2 if remat else 1) * layers


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 devices (tests/conftest.py fakes 8 CPUs)')
@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
@pytest.mark.parametrize('name', sorted(MAE_PRESETS))
def test_mae_preset_train_step_lowers_with_fused_attention_in_encoder_and_decoder(name, platform):
  per_device = MAE_PRESETS[name]
  config = lib.apply(lib.load_config(name), {'model.num_layers': PRESET_LAYERS, 'batch': 8 * per_device})
  c = lowering.summarize(lowering.lower_config(config, 1000, platform))
  assert (c['host_callbacks'], c['other_custom_calls'], c['fmha_fwd'], c['fmha_bwd']) == (0, 0, 0, 0)
  if platform == 'cuda':  # cuDNN in the encoder's and the decoder's blocks alike, forward and backward
    layers = PRESET_LAYERS + config.model.decoder_num_layers
    assert (c['spmd_fmha_fwd'], c['spmd_fmha_bwd']) == (layers, layers)
  else:
    assert c['spmd_partitioned_calls'] == 0


@pytest.fixture(scope='module')
def vit_b16_teacher(tmp_path_factory):
  """config overrides naming a one-block ViT-B/16 ImageNet teacher written as an .npz (zeros: the lowering reads
  only its shapes)."""
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build  # pylint: disable=g-import-not-at-top
  model = build.build_model('ViT-B_16', {'num_layers': PRESET_LAYERS}, 1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
  path = str(tmp_path_factory.mktemp('teacher') / 'vit_b16.npz')
  checkpoint.save_npz(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes['params']), path)
  return {'teacher': path, 'teacher_model_name': 'ViT-B_16', 'teacher_model.num_layers': PRESET_LAYERS}


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 8, reason='needs 8 devices (tests/conftest.py fakes 8 CPUs)')
@pytest.mark.parametrize('platform', ['cuda', 'tpu'])
@pytest.mark.parametrize('name', sorted(DISTILL_PRESETS))
def test_distill_preset_step_runs_the_teacher_forward_only_in_bf16(name, platform, vit_b16_teacher):
  per_device = DISTILL_PRESETS[name]
  config = lib.apply(lib.load_config(name), {'model.num_layers': PRESET_LAYERS, 'batch': 8 * per_device,
                                             **vit_b16_teacher})
  text = lowering.lower_config(config, 1000, platform)
  c = lowering.summarize(text)
  assert (c['host_callbacks'], c['other_custom_calls'], c['fmha_fwd'], c['fmha_bwd']) == (0, 0, 0, 0)
  # The teacher enters the step as bf16 arrays (the student's params are float32 masters): its MLP kernel.
  main = next(line for line in text.splitlines() if re.search(r'func\.func public @main\(', line))
  assert 'tensor<768x3072xbf16>' in main and 'tensor<768x3072xf32>' in main
  if platform == 'cuda':  # cuDNN attention in the student's blocks (forward and backward) and the teacher's
    # (a forward that keeps no softmax statistics: the teacher is never differentiated)
    assert (c['spmd_fmha_fwd'], c['spmd_fmha_bwd'], c['spmd_fmha_fwd_only']) == (PRESET_LAYERS,) * 3
    assert c['spmd_partitioned_calls'] == 3 * PRESET_LAYERS
  else:
    assert c['spmd_partitioned_calls'] == 0


@pytest.mark.skipif(jax.default_backend() == 'cpu' or len(jax.devices()) < 2,
                    reason='needs 2+ GPUs/TPUs: XLA partitions (inserts all-gathers) when it compiles for a backend, '
                           'and its CPU compiler gathers bf16 work in float32')
def test_fsdp_preset_gathers_its_bf16_computed_weights_in_bf16():
  # configs/vit_h14_i21k.py (fsdp, remat, scan) over every local device as one fsdp axis, compiled, not run.
  n = len(jax.devices())
  config = lib.apply(lib.load_config('vit_h14_i21k'), {'model.num_layers': 1, 'batch': 4 * n, 'mesh.data': 1,
                                                       'mesh.fsdp': -1})
  program = lowering.config_program(config, 1000)
  gathers = lowering.all_gathers(program.step.lower(*program.args).compile().as_text())
  # The patch embedding and the encoder's kernels are computed in bf16 (the scanned stack is gathered one layer
  # at a time: its leading axis goes).
  params = {optim.path_str(p): x.shape
            for p, x in jax.tree_util.tree_leaves_with_path(program.abstract_state.params)}
  encoder = {s[1:] for p, s in params.items() if p.startswith('Transformer/encoderblock/') and len(s) > 2}
  encoder.add(params['embedding/kernel'])
  float32_layers = {s for p, s in params.items() if p.startswith(('head/', 'pre_logits/'))}
  weights = encoder - float32_layers
  assert weights and gathers, (weights, gathers)
  assert not [k for k in gathers if k[0] == 'f32' and k[1] in weights], sorted(gathers.items())
  # The q and kv sequence lengths of every call (forward and backward) are sharded like the batch of the
  # activations: jax's partitioner gives each shard its rows of q and of the lengths, which must agree (an
  # unconstrained, replicated length vector would reach each shard whole: "kv_seqlen must have same batch as Q").
  batch = re.search(r'sharding_constraint %\S+ <@mesh, \[(\{[^}]*\}), \{\}, \{\}\]> : tensor<8x197x',
                    texts['train']).group(1)
  assert batch == '{"data", "fsdp"}'
  assert lowering.seqlen_shardings(texts['train']) == [batch] * (2 * 2 * LAYERS)  # (q, kv) x (fwd, bwd)
  assert lowering.seqlen_shardings(texts['infer']) == [batch] * (2 * LAYERS)
