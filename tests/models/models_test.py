"""Tests for vit_jax.models: parameter counts, a numpy reference forward, and the equivalence of every option."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models
from vit_jax.models import registry
from vit_jax.models import vit

# Parameters at 1000 classes and 224 px. ViT-B/16, L/16 and H/14 follow Table 1 of the ViT paper; the rest were
# computed once by this code. Every registered model must be here: add new ones with their count.
PARAM_COUNTS = {
    'ViT-Ti_16': 5_717_416,
    'ViT-S_16': 22_050_664,
    'ViT-S_32': 22_878_952,
    'ViT-B_8': 86_576_872,
    'ViT-B_16': 86_567_656,
    'ViT-B_32': 88_224_232,
    'ViT-L_16': 304_326_632,
    'ViT-L_32': 306_535_400,
    'ViT-H_14': 632_045_800,
    'ViT-S_16-gap-norep': 22_049_896,
    'ViT-B_16-gap-norep': 86_566_120,
    'ViT-S_32-gap-norep': 22_878_184,
    'ViT-B_32-gap-norep': 88_222_696,
    'R+ViT-Ti_16': 6_337_704,
    'R50+ViT-B_16': 98_659_112,
    'R26+ViT-B_32': 101_383_976,
    'R26+ViT-S_32': 36_431_912,
    'R50+ViT-L_32': 328_994_856,
    'ViT-g_14': 1_012_611_432,
    'testing': 21_390,
    'testing-unpooled': 21_370,  # no class token, one position embedding fewer
}

TINY = dict(hidden_size=32, transformer=dict(num_layers=3, mlp_dim=64, num_heads=4, dropout_rate=0.,
                                             attention_dropout_rate=0.))


def _abstract_params(model, size=224):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))
  return variables['params']


def _count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _images(n=2, size=32, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 3), minval=-1., maxval=1.)


def _init(model, x, seed=0):
  """Random init with a non-zero head, so that logits say something about every weight."""
  params = model.init(jax.random.PRNGKey(seed), x, train=False)['params']
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 100), 1000))
  # Re-draw every leaf so that biases, LayerNorm scales and the zero-init head are all non-trivial.
  return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape), params)


def test_registry_matches_param_table():
  assert set(registry.MODEL_CONFIGS) == set(PARAM_COUNTS), (
      'A registered model is missing from PARAM_COUNTS (or the table names an unregistered one): '
      f'{set(registry.MODEL_CONFIGS) ^ set(PARAM_COUNTS)}')


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_param_count(name):
  model = models.get_model(name, num_classes=1000)
  assert _count(_abstract_params(model)) == PARAM_COUNTS[name]


def test_variant_parser():
  assert _count(_abstract_params(models.get_model('B/16'))) == PARAM_COUNTS['ViT-B_16']
  cfg = registry.parse_variant('So400m/14')
  assert (cfg['hidden_size'], cfg['transformer']['num_layers'], cfg['transformer']['mlp_dim'],
          cfg['patches']['size']) == (1152, 27, 4304, (14, 14))
  with pytest.raises(ValueError, match='Unknown model'):
    registry.parse_variant('Q/16')


def test_compat_model_configs_work_with_visiontransformer():
  from vit_jax.configs import models as models_config  # pylint: disable=g-import-not-at-top
  cfg = models_config.MODEL_CONFIGS['ViT-B_16']
  model = models.VisionTransformer(num_classes=1000, **cfg)
  assert _count(_abstract_params(model)) == PARAM_COUNTS['ViT-B_16']
  assert 'R26_S_32' in models_config.AUGREG_CONFIGS


# The hybrids' ResNet root always downsamples 4x (stride-2 conv + stride-2 max-pool), so R+ViT-Ti_16's 8x8 patches
# give a 7x7 grid at 224 px, as in the reference implementation and timm's vit_tiny_r_s16_p8_224.
@pytest.mark.parametrize('name,tokens', [('R50+ViT-B_16', 197), ('R26+ViT-B_32', 50), ('R+ViT-Ti_16', 50),
                                         ('ViT-B_8', 785), ('ViT-H_14', 257)])
@pytest.mark.slow
def test_token_grid(name, tokens):
  params = _abstract_params(models.get_model(name))
  assert params['Transformer']['posembed_input']['pos_embedding'].shape[1] == tokens


# A float64 numpy forward pass written from the paper's equations, independent of flax.
def _np_ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _np_gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _np_mha(xq, xkv, p):
  q, k, v = (np.einsum('bnd,dhk->bnhk', x, p[n]['kernel']) + p[n]['bias']
             for n, x in (('query', xq), ('key', xkv), ('value', xkv)))
  logits = np.einsum('bqhk,bvhk->bhqv', q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum('bhqv,bvhk->bqhk', w, v)
  return np.einsum('bqhk,hkd->bqd', o, p['out']['kernel']) + p['out']['bias']


def _np_mlp(x, p):
  h = _np_gelu(x @ p['Dense_0']['kernel'] + p['Dense_0']['bias'])
  return h @ p['Dense_1']['kernel'] + p['Dense_1']['bias']


def _np_vit(params, images, patch, classifier, num_layers):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(images, np.float64)
  b, hh, ww, c = x.shape
  gh, gw = hh // patch, ww // patch
  x = x.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, -1)
  x = x @ p['embedding']['kernel'].reshape(-1, p['embedding']['kernel'].shape[-1]) + p['embedding']['bias']
  if classifier == 'token':
    x = np.concatenate([np.broadcast_to(p['cls'], (b, 1, x.shape[-1])), x], axis=1)
  x = x + p['Transformer']['posembed_input']['pos_embedding']
  for i in range(num_layers):
    blk = p['Transformer'][f'encoderblock_{i}']
    y = _np_ln(x, blk['LayerNorm_0'])
    x = x + _np_mha(y, y, blk['MultiHeadDotProductAttention_0'])
    x = x + _np_mlp(_np_ln(x, blk['LayerNorm_1']), blk['MlpBlock_0'])
  x = _np_ln(x, p['Transformer']['encoder_norm'])
  if classifier == 'token':
    x = x[:, 0]
  elif classifier == 'gap':
    x = x.mean(1)
  else:  # map
    mp = p['MAPHead_0']
    probe = np.broadcast_to(mp['probe'], (b, 1, x.shape[-1]))
    x = _np_mha(probe, x, mp['MultiHeadDotProductAttention_0'])
    x = (x + _np_mlp(_np_ln(x, mp['LayerNorm_0']), mp['MlpBlock_0']))[:, 0]
  if 'pre_logits' in p:
    x = np.tanh(x @ p['pre_logits']['kernel'] + p['pre_logits']['bias'])
  return x @ p['head']['kernel'] + p['head']['bias']


@pytest.mark.slow
@pytest.mark.parametrize('classifier,rep', [('token', None), ('gap', None), ('map', None), ('token', 16)])
def test_logits_equal_numpy_reference(classifier, rep):
  model = models.get_model('S/8', num_classes=7, classifier=classifier, representation_size=rep, **TINY)
  x = _images()
  params = _init(model, x)
  logits = model.apply({'params': params}, x, train=False)
  expected = _np_vit(params, x, 8, classifier, 3)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
def test_scan_equals_loop_and_params_convert_both_ways():
  x = _images()
  looped = models.get_model('S/8', num_classes=5, **TINY)
  scanned = models.get_model('S/8', num_classes=5, scan=True, **TINY)
  params = _init(looped, x)
  stacked = models.stack_encoder_blocks(params)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, _abstract_params(scanned, 32))
  np.testing.assert_allclose(scanned.apply({'params': stacked}, x, train=False),
                             looped.apply({'params': params}, x, train=False), atol=2e-6)
  roundtrip = models.unstack_encoder_blocks(stacked)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), roundtrip, params))


def test_dot_product_attention_agrees_with_xla():
  x = _images()
  base = models.get_model('S/8', num_classes=5, **TINY)
  params = _init(base, x)
  other = models.get_model('S/8', num_classes=5, attention_impl='dot_product', **TINY)
  np.testing.assert_allclose(other.apply({'params': params}, x, train=False),
                             base.apply({'params': params}, x, train=False), atol=2e-6)


@pytest.mark.parametrize('backend,dtype,need_weights,dropout,want,head_dim,capability', [
    ('cpu', jnp.float32, False, 0., 'xla', 64, '9.0'),
    ('cpu', jnp.bfloat16, False, 0., 'xla', 64, '9.0'),       # no cuDNN off GPU
    ('tpu', jnp.bfloat16, False, 0., 'xla', 64, '9.0'),
    ('gpu', jnp.bfloat16, False, 0., 'cudnn', 64, '9.0'),
    ('gpu', jnp.float16, False, 0., 'cudnn', 64, '8.0'),
    ('gpu', jnp.bfloat16, False, 0., 'xla', 64, '7.0'),       # cuDNN's fused attention needs Ampere or later
    ('gpu', jnp.bfloat16, False, 0., 'xla', 12, '9.0'),       # ... and a head dim that is a multiple of 8
    ('gpu', jnp.bfloat16, False, 0., 'xla', 160, '8.0'),      # ... up to 128 before Hopper
    ('gpu', jnp.bfloat16, False, 0., 'cudnn', 160, '9.0'),
    ('gpu', jnp.float32, False, 0., 'xla', 64, '9.0'),        # cuDNN's fused attention is 16-bit only
    ('gpu', jnp.bfloat16, True, 0., 'xla', 64, '9.0'),        # attention weights requested
    ('gpu', jnp.bfloat16, False, 0.1, 'xla', 64, '9.0'),      # attention dropout needs the weights
])
def test_auto_attention_resolves_by_backend_and_dtype(monkeypatch, backend, dtype, need_weights, dropout, want,
                                                      head_dim, capability):
  from vit_jax.perf import lowering  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  attn = vit.MultiHeadDotProductAttention(num_heads=2, dtype=dtype, impl='auto', dropout_rate=dropout,
                                          deterministic=False)
  with lowering.assume_gpu(compute_capability=capability):  # what jax's cuDNN checks read on a GPU
    assert attn._resolve_impl(need_weights, head_dim) == want  # pylint: disable=protected-access


@pytest.mark.slow
@pytest.mark.parametrize('policy,scan', [('full', False), ('dots', True), ('dots_no_batch', True)])
def test_remat_keeps_values_and_gradients(policy, scan):
  x = _images()
  base = models.get_model('S/8', num_classes=5, scan=scan, **TINY)
  params = _init(base, x)
  if scan:
    params = models.stack_encoder_blocks(params)
  remat = models.get_model('S/8', num_classes=5, scan=scan, remat_policy=policy, **TINY)
  loss = lambda m: lambda p: jnp.sum(m.apply({'params': p}, x, train=False)**2)
  g0, g1 = jax.grad(loss(base))(params), jax.grad(loss(remat))(params)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_attention_logits_gradient_is_the_einsums_and_stays_16_bit():
  kq, kk, kw = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k = jax.random.normal(kq, (2, 5, 3, 8)), jax.random.normal(kk, (2, 7, 3, 8))
  w = jax.random.normal(kw, (2, 3, 5, 7))
  einsum = lambda q, k: jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
  loss = lambda f: lambda q, k: jnp.sum(jnp.sin(f(q, k)) * w)
  ours, ref = jax.grad(loss(vit._attention_logits), (0, 1))(q, k), jax.grad(loss(einsum), (0, 1))(q, k)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  half = jax.grad(loss(vit._attention_logits), (0, 1))(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
  for a, b in zip(half, ref):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(b))))


@pytest.mark.slow
def test_attention_weights_returned_on_request():
  x = _images()
  for scan in (False, True):
    model = models.get_model('S/8', num_classes=5, scan=scan, attention_impl='auto', **TINY)
    params = _init(model, x)
    if scan:
      params = models.stack_encoder_blocks(params)
    logits, state = model.apply({'params': params}, x, train=False, mutable=['intermediates'])
    np.testing.assert_allclose(logits, model.apply({'params': params}, x, train=False), atol=2e-6)
    enc = state['intermediates']['Transformer']
    if scan:
      weights = enc['encoderblock']['MultiHeadDotProductAttention_0']['attention_weights'][0]
    else:
      weights = jnp.stack([enc[f'encoderblock_{i}']['MultiHeadDotProductAttention_0']['attention_weights'][0]
                           for i in range(3)])
    assert weights.shape == (3, 2, 4, 17, 17)  # layers, batch, heads, queries, keys
    np.testing.assert_allclose(weights.sum(-1), 1., atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_logits():
  x = _images()
  model = models.get_model('S/8', num_classes=5, dtype=jnp.bfloat16, **TINY)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  params = _init(models.get_model('S/8', num_classes=5, **TINY), x)
  ref = models.get_model('S/8', num_classes=5, **TINY).apply({'params': params}, x, train=False)
  out = model.apply({'params': params}, x, train=False)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.abs(ref).max()))


@pytest.mark.slow
def test_dropout_and_drop_path():
  x = _images()
  cfg = dict(TINY, transformer=dict(TINY['transformer'], dropout_rate=0.1))
  model = models.get_model('S/8', num_classes=5, stochastic_depth=0.3, **cfg)
  params = _init(model, x)
  clean = model.apply({'params': params}, x, train=False)
  run = lambda seed: model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.PRNGKey(seed)})
  np.testing.assert_array_equal(run(1), run(1))
  assert not np.allclose(run(1), run(2))
  assert not np.allclose(run(1), clean)
  # With every rate at zero, training mode computes exactly the inference function and draws no randomness
  # (no 'dropout' rng needed).
  plain = models.get_model('S/8', num_classes=5, **TINY)
  np.testing.assert_allclose(plain.apply({'params': params}, x, train=True),
                             plain.apply({'params': params}, x, train=False), atol=1e-6)


def test_drop_path_drops_whole_examples():
  x = jnp.ones((1000, 4))
  out = vit._drop_path(x, jnp.float32(0.25), jax.random.PRNGKey(0))
  kept = np.asarray(out[:, 0] != 0)
  assert np.all(out[kept] == 1 / 0.75) and abs(kept.mean() - 0.75) < 0.05


def test_sincos_posemb_has_no_params_and_expected_values():
  pe = vit.posemb_sincos_2d(3, 4, 16)
  assert pe.shape == (1, 12, 16)
  # Position (0, 0): sin terms are 0 and cos terms are 1.
  np.testing.assert_allclose(pe[0, 0], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4, atol=1e-7)
  model = models.get_model('S/8', num_classes=5, posemb='sincos2d', **TINY)
  assert 'posembed_input' not in _abstract_params(model, 32)['Transformer']


@pytest.mark.parametrize('classifier,shape', [('unpooled', (2, 16, 5)), ('token_unpooled', (2, 17, 5))])
def test_unpooled_outputs(classifier, shape):
  model = models.get_model('S/8', num_classes=5, classifier=classifier, **TINY)
  x = _images()
  assert model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False).shape == shape


def test_pre_logits_features_when_no_classes():
  model = models.get_model('S/8', num_classes=0, representation_size=16, **TINY)
  x = _images()
  feats = model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False)
  assert feats.shape == (2, 16) and np.all(np.abs(feats) <= 1)


def test_head_is_zero_initialised_with_bias():
  model = models.get_model('S/8', num_classes=5, head_bias_init=-10., **TINY)
  x = _images()
  np.testing.assert_array_equal(model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False),
                                np.full((2, 5), -10., np.float32))


@pytest.mark.slow
def test_hybrid_layout_and_forward():
  params = _abstract_params(models.get_model('R26+ViT-S_32'))
  assert {'conv_root', 'gn_root', 'block1', 'block4', 'embedding'} <= set(params)
  assert set(params['block1']['unit1']) == {'conv1', 'conv2', 'conv3', 'conv_proj', 'gn1', 'gn2', 'gn3', 'gn_proj'}
  assert set(params['block1']['unit2']) == {'conv1', 'conv2', 'conv3', 'gn1', 'gn2', 'gn3'}
  # A small hybrid (root + two one-unit stages = /8, then 2x2 patches) runs end to end.
  model = models.get_model('R26+ViT-S_32', num_classes=5, resnet=dict(num_layers=(1, 1), width_factor=0.5),
                           patches=dict(size=(2, 2)), hidden_size=32,
                           transformer=dict(num_layers=1, mlp_dim=32, num_heads=2))
  x = _images(size=32)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x, train=False))()
  assert variables['params']['Transformer']['posembed_input']['pos_embedding'].shape == (1, 5, 32)
  assert jax.jit(lambda v: model.apply(v, x, train=False))(variables).shape == (2, 5)


def test_params_carry_logical_axes():
  model = models.get_model('S/8', num_classes=5, scan=True, **TINY)
  specs = nn.get_partition_spec(jax.eval_shape(lambda: models.init_with_axes(model, jax.random.PRNGKey(0), _images(),
                                                                             train=False)))
  blk = specs['params']['Transformer']['encoderblock']
  assert tuple(blk['MlpBlock_0']['Dense_0']['kernel']) == ('layers', 'embed', 'mlp')
  assert tuple(blk['MultiHeadDotProductAttention_0']['query']['kernel']) == ('layers', 'embed', 'heads', 'kv')
  assert tuple(specs['params']['head']['kernel']) == ('embed', 'classes')


@pytest.mark.parametrize('kwargs,match', [
    (dict(classifier='cls'), 'Unknown classifier'),
    (dict(attention_impl='flash'), 'Unknown attention_impl'),
    (dict(remat_policy='some'), 'Unknown remat_policy'),
])
def test_bad_options_are_one_line_errors(kwargs, match):
  model = models.get_model('S/8', num_classes=5, **TINY, **kwargs)
  with pytest.raises(ValueError, match=match):
    model.init(jax.random.PRNGKey(0), _images(), train=False)


def test_image_size_not_divisible_by_patch():
  model = models.get_model('S/8', num_classes=5, **TINY)
  with pytest.raises(ValueError, match='not divisible by the patch size'):
    model.init(jax.random.PRNGKey(0), _images(size=30), train=False)
