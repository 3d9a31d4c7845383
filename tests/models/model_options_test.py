"""The model options of current ViT research (registers, LayerScale, QK-norm, parallel blocks, bias-free projections,
patch dropout): timm's parameter counts at B/16 and timm's logits, and every execution option on each."""
import functools
import importlib.util
import json
import pathlib
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.models import vit
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training import train_step

TINY = dict(hidden_size=32, transformer=dict(num_layers=2, mlp_dim=128, num_heads=4, dropout_rate=0.,
                                             attention_dropout_rate=0.))
TINY_TIMM = dict(embed_dim=32, depth=2, num_heads=4, mlp_ratio=4., patch_size=8)
B16_TIMM = dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4., patch_size=16, num_classes=1000)

# name -> (our VisionTransformer options, timm VisionTransformer kwargs, timm block, timm-only params per block).
# timm's ParallelScalingBlock keeps the MLP's first bias (`mlp_bias`) when qkv_bias=False, so bias-free parallel
# blocks have mlp_dim fewer params per block here; its logits check loads that bias as zeros (our function).
OPTIONS = {
    'registers': (dict(num_registers=4), dict(reg_tokens=4), None, 0),
    'layer_scale': (dict(layer_scale_init=0.1), dict(init_values=0.1), None, 0),
    'qk_norm': (dict(qk_norm=True), dict(qk_norm=True), None, 0),
    'parallel': (dict(parallel_block=True), {}, 'parallel', 0),
    'parallel_layer_scale': (dict(parallel_block=True, layer_scale_init=0.1), dict(init_values=0.1), 'parallel', 0),
    'no_bias': (dict(use_bias=False), dict(qkv_bias=False, proj_bias=False), None, 0),
    'parallel_no_bias_qk_norm': (dict(parallel_block=True, use_bias=False, qk_norm=True),
                                 dict(qkv_bias=False, proj_bias=False, qk_norm=True), 'parallel', 1),
    'all_sequential': (dict(num_registers=2, layer_scale_init=1e-4, qk_norm=True, use_bias=False),
                       dict(reg_tokens=2, init_values=1e-4, qk_norm=True, qkv_bias=False, proj_bias=False), None, 0),
    'registers_gap': (dict(num_registers=3, classifier='gap'), dict(reg_tokens=3, class_token=False,
                                                                    global_pool='avg'), None, 0),
}


def _images(n=2, size=32, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _tiny(options, **kw):
  return models.get_model('S/8', num_classes=5, **TINY, **{**options, **kw})


def _random_params(model, images, seed=1):
  """Non-trivial float32 values for every leaf (kernels by fan-in; scales near 1; the rest small)."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), images[:1], train=False)['params']))
  rng = np.random.RandomState(seed)

  def draw(key, leaf):
    if key.endswith('/scale'):
      return (1 + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)
    if key.endswith('/kernel'):
      fan_in = leaf.shape[0] if '/query/' in key or '/key/' in key or '/value/' in key else np.prod(leaf.shape[:-1])
      return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    return (0.2 * rng.normal(size=leaf.shape)).astype(np.float32)
  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  return flax.traverse_util.unflatten_dict({k: draw(k, v) for k, v in flat.items()}, sep='/')


def _count(params):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _b16_count(options):
  model = models.get_model('B/16', num_classes=1000, **options)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  return _count(nn.meta.unbox(shapes)['params'])


@pytest.fixture(scope='module')
def timm_results(tmp_path_factory):
  """timm's B/16 parameter count and tiny-model logits for every option, from one timm subprocess."""
  for module in ('torch', 'timm'):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f'{module} is not installed (pip install -r requirements-test.txt)')
  tmp = tmp_path_factory.mktemp('timm_options')
  images = _images()
  np.save(tmp / 'images.npy', images)
  specs, ours = [], {}
  for name, (options, timm_kwargs, block, _) in OPTIONS.items():
    specs.append({'count_only': True, 'img_size': 224, 'block': block, 'out': str(tmp / f'{name}_count.npy'),
                  'kwargs': {**B16_TIMM, **timm_kwargs}})
    model = _tiny(options)
    params = _random_params(model, images)
    checkpoint.save_npz(params, tmp / f'{name}.npz')
    ours[name] = np.asarray(jax.jit(lambda p, m=model: m.apply({'params': p}, images, train=False))(params))
    pool = {'global_pool': 'token', 'class_token': True}
    specs.append({'npz': str(tmp / f'{name}.npz'), 'images': str(tmp / 'images.npy'), 'direct': True,
                  'block': block, 'out': str(tmp / f'{name}_logits.npy'),
                  'kwargs': {**TINY_TIMM, 'num_classes': 5, **pool, **timm_kwargs}})
  (tmp / 'spec.json').write_text(json.dumps(specs))
  script = pathlib.Path(__file__).parent.parent / 'timm_reference.py'
  subprocess.run([sys.executable, str(script), str(tmp / 'spec.json')], check=True)
  return {name: (int(np.load(tmp / f'{name}_count.npy')), np.load(tmp / f'{name}_logits.npy'), ours[name])
          for name in OPTIONS}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(OPTIONS))
def test_b16_param_count_equals_timm(timm_results, name):
  options, _, _, timm_only_per_block = OPTIONS[name]
  theirs = timm_results[name][0] - timm_only_per_block * 12 * 3072
  assert _b16_count(options) == theirs, name
  assert theirs != _b16_count({})  # every option adds or removes params (parallel: one LayerNorm fewer per block)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(OPTIONS))
def test_logits_equal_timm(timm_results, name):
  _, theirs, ours = timm_results[name]
  diff = np.abs(ours - theirs).max()
  print(f'timm {name}: max |logit diff| {diff:.3g} (max |logit| {np.abs(ours).max():.3g})')
  assert np.abs(ours).max() > 0.5
  assert diff <= 1e-5


# --------------------------------------------------------------------------------- execution options per option

EXEC_OPTIONS = {name: OPTIONS[name][0] for name in ('registers', 'layer_scale', 'qk_norm', 'parallel_layer_scale',
                                                      'no_bias')}
EXEC_OPTIONS['patch_dropout'] = dict(patch_dropout=0.5, num_registers=1)
EXEC_OPTIONS['mup'] = dict(mup_base_width=16)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(EXEC_OPTIONS))
def test_scan_remat_dot_product_and_bf16_compute_the_same_function(name):
  options, images = EXEC_OPTIONS[name], _images()
  ref_model = _tiny(options)
  params = _random_params(ref_model, images)
  rngs = {'dropout': jax.random.key(3)}
  # In training (patch dropout draws its subset), so the gradient goes through every new parameter.
  def loss(m):
    def f(p):
      out = m.apply({'params': p}, images, train=True, rngs=rngs)
      return jnp.sum(jnp.sin(out)), out
    return jax.jit(jax.value_and_grad(f, has_aux=True))
  (_, ref_out), ref_grads = loss(ref_model)(params)
  fast = _tiny(options, scan=True, remat_policy='dots', attention_impl='dot_product')
  (_, fast_out), fast_grads = loss(fast)(models.stack_encoder_blocks(params))
  # Elementwise, scaled by the largest value: float32 reduction order differs between the two programs (and
  # between installs and thread counts), so each output carries an error of a few ulps of the largest term; a
  # scalar sum of terms that cancel would magnify it.
  np.testing.assert_allclose(fast_out, ref_out, rtol=0, atol=1e-5 * float(jnp.abs(ref_out).max()))
  for a, b in zip(jax.tree.leaves(models.unstack_encoder_blocks(fast_grads)), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)  # Observed: at most 4e-7 apart.
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ref_grads))  # every parameter is used
  logits = lambda m: jax.jit(lambda p: m.apply({'params': p}, images, train=False))(params)
  ref, half = logits(ref_model), logits(_tiny(options, dtype=jnp.bfloat16))
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(half, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_new_params_shard_under_fsdp():
  model = models.get_model('B/8', num_classes=10, hidden_size=16, scan=True, num_registers=2, layer_scale_init=0.1,
                           qk_norm=True, transformer={'mlp_dim': 32, 'num_heads': 4, 'num_layers': 2})
  tx, _ = optim.make_optimizer({'base_lr': 1e-3, 'total_steps': 10})
  state = jax.eval_shape(functools.partial(train_step.create_train_state, model, tx, input_shape=(1, 16, 16, 3),
                                           unbox=False), jax.random.key(0))
  specs = sharding.param_shardings(state, sharding.make_mesh({'data': 2, 'fsdp': 4}), 'fsdp').params
  flat = {optim.path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))}
  block = 'Transformer/encoderblock/'
  assert flat['reg'] == P(None, None, 'fsdp')
  assert flat[block + 'LayerScale_0/scale'] == flat[block + 'LayerScale_1/scale'] == P(None, 'fsdp')
  # head_dim ('kv') is not split by the fsdp rules: 4 values per layer, replicated.
  assert flat[block + 'MultiHeadDotProductAttention_0/query_norm/scale'] == P(None, None)
  assert flat[block + 'MultiHeadDotProductAttention_0/query/kernel'] == P(None, 'fsdp', None, None)


# ------------------------------------------------------------------------------------------- option semantics


@pytest.mark.slow
def test_registers_are_dropped_before_pooling_and_unpooled_outputs():
  images = _images()
  for classifier, tokens in (('unpooled', 16), ('token_unpooled', 17)):
    model = _tiny(dict(num_registers=3, classifier=classifier))
    params = _random_params(model, images)
    assert params['reg'].shape == (1, 3, 32)
    assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, tokens + 3, 32)
    assert model.apply({'params': params}, images, train=False).shape == (2, tokens, 5)


@pytest.mark.slow
def test_init_values_of_new_params():
  model = _tiny(dict(layer_scale_init=1e-4, qk_norm=True, num_registers=2))
  params = nn.meta.unbox(model.init(jax.random.key(0), _images()[:1], train=False))['params']
  blk = params['Transformer']['encoderblock_0']
  np.testing.assert_array_equal(blk['LayerScale_0']['scale'], np.full(32, 1e-4, np.float32))
  np.testing.assert_array_equal(blk['MultiHeadDotProductAttention_0']['key_norm']['scale'], np.ones(8))
  assert 0 < float(jnp.abs(params['reg']).max()) < 1e-4  # DINOv2 / timm: normal(std 1e-6)
  no_bias = nn.meta.unbox(_tiny(dict(use_bias=False)).init(jax.random.key(0), _images()[:1], train=False))
  blk = flax.traverse_util.flatten_dict(no_bias['params']['Transformer']['encoderblock_0'], sep='/')
  assert sorted(k for k in blk if k.endswith('bias')) == ['LayerNorm_0/bias', 'LayerNorm_1/bias']


def test_patch_dropout_keeps_prefix_and_a_random_subset():
  n, prefix, patches = 6, 3, 16
  ids = jnp.broadcast_to(jnp.arange(prefix + patches, dtype=jnp.float32)[None, :, None], (n, prefix + patches, 2))
  out = vit._patch_dropout(ids, 0.5, prefix, jax.random.key(0))
  assert out.shape == (n, prefix + 8, 2)
  np.testing.assert_array_equal(out[:, :prefix, 0], np.broadcast_to(np.arange(prefix), (n, prefix)))
  kept = [tuple(sorted(np.asarray(row[prefix:, 0]).astype(int))) for row in out]
  assert all(len(set(k)) == 8 and set(k) <= set(range(prefix, prefix + patches)) for k in kept)
  assert len(set(kept)) == n  # each example its own subset
  assert vit._patch_dropout(ids, 0.99, prefix, jax.random.key(0)).shape[1] == prefix + 1  # at least one patch


@pytest.mark.slow
def test_patch_dropout_trains_on_fewer_tokens_and_evaluates_on_all():
  images = _images()
  model = _tiny(dict(patch_dropout=0.75, num_registers=1))
  plain = _tiny(dict(num_registers=1))
  params = _random_params(model, images)
  _, state = model.apply({'params': params}, images, train=True, rngs={'dropout': jax.random.key(0)},
                         mutable=['intermediates'])
  weights = state['intermediates']['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']
  assert weights['attention_weights'][0].shape == (2, 4, 1 + 1 + 4, 1 + 1 + 4)  # cls, register, 16 * 0.25 patches
  np.testing.assert_array_equal(model.apply({'params': params}, images, train=False),
                                plain.apply({'params': params}, images, train=False))
  with pytest.raises(ValueError, match='patch_dropout=1.0 must be in'):
    _tiny(dict(patch_dropout=1.0)).init(jax.random.key(0), images, train=False)


def test_config_model_options_reach_the_model():
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  default = build.build_model('testing', config.model, 3)
  assert (default.num_registers, default.layer_scale_init, default.qk_norm, default.parallel_block,
          default.use_bias, default.patch_dropout, default.mup_base_width) == (0, None, False, False, True, 0., None)
  config.model.num_registers, config.model.layer_scale_init, config.model.qk_norm = 4, 1e-5, True
  config.model.parallel_block, config.model.use_bias, config.model.patch_dropout = True, False, 0.5
  config.model.mup_base_width = 8
  model = build.build_model('testing', config.model, 3)
  assert (model.num_registers, model.layer_scale_init, model.qk_norm, model.parallel_block, model.use_bias,
          model.patch_dropout, model.mup_base_width) == (4, 1e-5, True, True, False, 0.5, 8)
