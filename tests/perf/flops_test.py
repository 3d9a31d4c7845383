"""MFU's two halves: the analytic FLOPs against XLA's count for every model option, and the per-device peaks."""
import jax
import jax.numpy as jnp
import pytest

from vit_jax.models import flops
from vit_jax.models import registry
from vit_jax.models import vit
from vit_jax.training import metric_logging

RES = 32  # Ti/4 at 32 px: 64 patches of width 192, two layers; matmuls are ~98.6 % of XLA's count.
CLASSES = 1000  # a head wide enough that counting it once instead of per token would show


def _xla_flops(model: vit.VisionTransformer, train: bool) -> float:
  """XLA's cost analysis of the compiled, unrolled float32 forward, per image (batch 2)."""
  x = jax.ShapeDtypeStruct((2, RES, RES, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False)['params'])
  fwd = jax.jit(lambda p, x: model.apply({'params': p}, x, train=train, rngs={'dropout': jax.random.PRNGKey(1)}))
  cost = fwd.lower(params, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops'] / 2


# Each option that changes what the forward computes; the analytic count must follow it.
OPTIONS = {
    'token': {},
    'gap': dict(classifier='gap'),
    'map': dict(classifier='map'),
    'unpooled+rep': dict(classifier='unpooled', representation_size=96),  # the head on each of 64 tokens
    'token_unpooled': dict(classifier='token_unpooled'),
    'registers': dict(num_registers=4),
    'patch_dropout': dict(patch_dropout=0.5),
    'patch_dropout+map+registers': dict(patch_dropout=0.75, classifier='map', num_registers=4),
    'hybrid': dict(resnet={'num_layers': (1,), 'width_factor': 1}, patches={'size': (1, 1)}),
    'distill_token+rep': dict(distill_token=True, representation_size=96),  # 2 tokens, each through pre_logits
    'block options': dict(qk_norm=True, parallel_block=True, layer_scale_init=1e-4, use_bias=False,
                          posemb='sincos2d', mup_base_width=96),
}


# Training changes the token count only with patch dropout.
CASES = [(o, False) for o in OPTIONS] + [(o, True) for o in OPTIONS if 'patch_dropout' in OPTIONS[o]]


@pytest.mark.parametrize('option,train', CASES, ids=[f'{o}-{"train" if t else "eval"}' for o, t in CASES])
def test_analytic_flops_match_xla_for_every_option(option, train):
  cfg = registry.get_config('Ti/4')
  cfg['transformer']['num_layers'] = 2
  cfg.update(OPTIONS[option])
  model = vit.VisionTransformer(num_classes=CLASSES, **cfg)
  analytic = flops.model_forward_flops(model, RES, train=train)
  # XLA adds the norms, GELU, softmax and adds (0.8-1.4 % here); a token miscounted is >= 3 %.
  assert 1.0 < _xla_flops(model, train) / analytic < 1.02


def test_patch_dropout_counts_kept_tokens_in_the_train_step_only():
  model = registry.get_model('Ti/16', patch_dropout=0.75)
  n_eval, n_train, d, m = 197, 1 + 49, 192, 768
  per_token = 2 * (4 * d * d + 2 * d * m)
  full, train = flops.model_forward_flops(model, 224), flops.model_forward_flops(model, 224, train=True)
  assert full - train == 12 * ((n_eval - n_train) * per_token + 4 * (n_eval**2 - n_train**2) * d)
  assert flops.train_step_flops(model, 224, 16) == 3 * 16 * train


def test_registers_and_map_head_by_hand():
  d, m, grid = 192, 768, 196
  n = grid + 4  # no class token with MAP; 4 registers in every layer, dropped before the head
  layers = 12 * (2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d)
  head = 2 * 2 * d * d + 2 * grid * 2 * d * d + 4 * grid * d + 2 * 2 * d * m
  mc = dict(registry.get_config('Ti/16'), classifier='map', num_registers=4)
  assert flops.forward_flops(mc, 224, 10) == layers + 2 * grid * 16 * 16 * 3 * d + head + 2 * d * 10


@pytest.mark.parametrize('kind,peak', [
    ('TPU v2', 22.5e12), ('TPU v3', 61.5e12),  # per TensorCore: JAX shows each core of a v2/v3 chip as a device
    ('TPU v4', 275e12), ('TPU v5', 459e12), ('TPU v5 lite', 197e12), ('TPU v6 lite', 918e12),
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H100 NVL', 835e12),
    ('NVIDIA H200', 989e12), ('NVIDIA B200', 2250e12),
])
def test_peak_is_per_jax_device_and_matched_exactly(kind, peak):
  assert metric_logging.peak_flops(kind) == peak
  assert metric_logging.peak_flops(kind, override=1e12) == 1e12  # config.peak_flops wins


@pytest.mark.parametrize('kind', ['NVIDIA H100', 'NVIDIA H100 PCIe (MIG 3g.40gb)', 'TPU v4 lite', 'cpu'])
def test_unknown_devices_get_no_peak_rather_than_a_neighbours(kind):
  assert metric_logging.peak_flops(kind) is None


@pytest.mark.parametrize('option', ['token', 'hybrid'])
def test_mae_counts_the_encoder_on_visible_tokens_plus_the_decoder(option):
  """A hybrid's tokens cover 4x4 pixels (stem stride 4, patch 1): the same 64 tokens, plus the stem on every pixel."""
  from vit_jax.models import mae  # pylint: disable=g-import-not-at-top
  cfg = registry.get_config('Ti/4')
  cfg['transformer']['num_layers'] = 2
  cfg.update(OPTIONS[option])
  model = mae.MaskedAutoencoder(encoder=vit.VisionTransformer(num_classes=0, **{**cfg, 'classifier': 'token_unpooled'}),
                                decoder_num_layers=1, decoder_hidden_size=128, decoder_num_heads=4)
  x = jnp.zeros((2, RES, RES, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)['params'])
  cost = jax.jit(lambda p, x: model.apply({'params': p}, x, train=True)).lower(params, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = flops.mae_forward_flops(model, RES)
  assert analytic < 0.6 * flops.model_forward_flops(model.encoder, RES)  # 16 of 64 patches: far less than all
  assert 1.0 < cost['flops'] / 2 / analytic < 1.03
