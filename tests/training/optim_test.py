"""Optimizer chain and schedules: values, masks, freezing, multipliers, clipping, state dtype."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax import models
from vit_jax.training import optim

BASE = {'base_lr': 1., 'total_steps': 100, 'warmup_steps': 10}


def _vit_params():
  model = models.get_model('testing', num_classes=3)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                        jnp.zeros((1, 32, 32, 3)))['params']


def _paths(tree, pred=lambda x: True):
  return sorted(optim.path_str(p) for p, x in jax.tree_util.tree_leaves_with_path(tree) if pred(x))


@pytest.mark.parametrize('decay_type,want', [
    ('cosine', {0: 0., 5: .5, 10: 1., 55: .5, 100: 0., 150: 0.}),
    ('linear', {0: 0., 5: .5, 10: 1., 55: .5 + .5e-5, 100: 1e-5, 150: 1e-5}),
    ('rsqrt', {0: 0., 5: .5, 10: 1., 10 + 3 * 10_000: .5}),
    ('constant', {0: 0., 5: .5, 10: 1., 55: 1., 100: 1.}),
])
def test_schedule_values(decay_type, want):
  schedule = optim.make_schedule({**BASE, 'decay_type': decay_type})
  got = {step: float(schedule(step)) for step in want}
  np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-5, atol=1e-7)


def test_schedule_without_warmup_starts_at_base_lr():
  schedule = optim.make_schedule({'base_lr': 3e-3, 'total_steps': 10, 'decay_type': 'cosine'})
  np.testing.assert_allclose(float(schedule(0)), 3e-3, rtol=1e-6)


def _sgd(**kw):
  return optim.make_optimizer({'optimizer': 'sgd', 'momentum': 0., **BASE, **kw})


def test_update_s_uses_lr_of_step_s():
  tx, schedule = _sgd()
  params = {'w': jnp.zeros(3)}
  state = tx.init(params)
  for s in (1, 2, 3):
    updates, state = tx.update({'w': jnp.ones(3)}, state, params)
    np.testing.assert_allclose(updates['w'], -schedule(s) * np.ones(3), rtol=1e-6)


def test_weight_decay_mask_is_exactly_the_kernels():
  mask = optim.weight_decay_mask(_vit_params())
  block = 'Transformer/encoderblock_0/'
  assert _paths(mask, lambda m: m) == sorted([
      'embedding/kernel', 'head/kernel', block + 'MlpBlock_0/Dense_0/kernel', block + 'MlpBlock_0/Dense_1/kernel',
      *(block + f'MultiHeadDotProductAttention_0/{n}/kernel' for n in ('query', 'key', 'value', 'out'))])
  not_decayed = _paths(mask, lambda m: not m)
  for name in ('cls', 'Transformer/posembed_input/pos_embedding', 'Transformer/encoder_norm/scale',
               block + 'LayerNorm_0/scale', block + 'MlpBlock_0/Dense_0/bias', 'head/bias'):
    assert name in not_decayed


def test_weight_decay_is_decoupled_and_kernel_only():
  tx, schedule = _sgd(weight_decay=0.1)
  params = {'d': {'kernel': jnp.full((2, 2), 2.), 'bias': jnp.full((2,), 2.)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates['d']['kernel'], -schedule(1) * 0.1 * 2., rtol=1e-6)
  np.testing.assert_array_equal(updates['d']['bias'], 0.)


def test_freeze_keeps_params_bitwise_and_has_no_state():
  rs = np.random.RandomState(1)
  params = jax.tree.map(lambda x: rs.normal(size=x.shape).astype(np.float32), _vit_params())
  params['embedding']['bias'][:] = -0.  # p + 0.0 would turn -0.0 into +0.0
  tx, _ = optim.make_optimizer({**BASE, 'optimizer': 'adamw', 'weight_decay': 0.1, 'grad_norm_clip': 1.,
                                'freeze': ['embedding/.*', 'Transformer/encoderblock_0/LayerNorm_.*']})

  @jax.jit
  def three_steps(params):
    state = tx.init(params)
    for i in range(3):
      grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5 + i), params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    return params, state

  new, state = three_steps(params)
  frozen = ['embedding/bias', 'embedding/kernel'] + [
      f'Transformer/encoderblock_0/LayerNorm_{i}/{n}' for i in (0, 1) for n in ('bias', 'scale')]
  flat_old = dict(zip(_paths(params), jax.tree.leaves(params)))
  flat_new = dict(zip(_paths(new), jax.tree.leaves(new)))
  for name in flat_old:
    same = np.array_equal(np.asarray(flat_old[name]).view(np.uint32), np.asarray(flat_new[name]).view(np.uint32))
    assert same == (name in frozen), name
  adam_mu = state.inner_states['trainable'].inner_state[1].mu
  assert not jax.tree.leaves(adam_mu['embedding'])  # frozen params carry no optimizer state


def test_lr_mults_scale_updates():
  tx, _ = _sgd(lr_mults=[('head/.*', 10.), ('.*bias', 0.5), ('head/bias', 3.)])  # first match wins
  params = {'head': {'kernel': jnp.zeros((2, 2)), 'bias': jnp.zeros(2)}, 'body': {'kernel': jnp.zeros(2),
                                                                                 'bias': jnp.zeros(2)}}
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  base = float(updates['body']['kernel'][0])
  assert base < 0
  np.testing.assert_allclose(updates['head']['kernel'], 10 * base, rtol=1e-6)
  np.testing.assert_allclose(updates['head']['bias'], 10 * base, rtol=1e-6)
  np.testing.assert_allclose(updates['body']['bias'], 0.5 * base, rtol=1e-6)


def test_grad_norm_clip():
  tx, schedule = _sgd(grad_norm_clip=1.)
  params = {'w': jnp.zeros(4)}
  updates, _ = tx.update({'w': jnp.full(4, 5.)}, tx.init(params), params)  # norm 10 -> 1
  np.testing.assert_allclose(optax.global_norm(updates), schedule(1), rtol=1e-6)


def test_adamw_matches_optax_reference():
  cfg = {**BASE, 'optimizer': 'adamw', 'b1': 0.8, 'b2': 0.95, 'eps': 1e-6, 'weight_decay': 0.05}
  tx, schedule = optim.make_optimizer(cfg)
  ref = optax.adamw(lambda c: schedule(c + 1), b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.05,
                    mask=optim.weight_decay_mask)
  params = {'d': {'kernel': jnp.arange(6.).reshape(2, 3), 'bias': jnp.ones(3)}}
  p1, p2, s1, s2 = params, params, tx.init(params), ref.init(params)
  for i in range(4):
    grads = jax.tree.map(lambda x: jnp.sin(x + i), params)
    u1, s1 = tx.update(grads, s1, p1)
    u2, s2 = ref.update(grads, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p1, p2)


@pytest.mark.parametrize('name', ['adam', 'sgd', 'adafactor'])
def test_mu_dtype(name):
  tx, _ = optim.make_optimizer({**BASE, 'optimizer': name, 'mu_dtype': 'bfloat16'})
  state = tx.init({'w': jnp.zeros((64, 64))})
  dtypes = {x.dtype for x in jax.tree.leaves(state) if x.ndim == 2}
  assert jnp.dtype(jnp.bfloat16) in dtypes


def test_sgd_nesterov_momentum():
  tx, schedule = _sgd(momentum=0.9, nesterov=True)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  u1, state = tx.update({'w': jnp.ones(())}, state, params)
  u2, state = tx.update({'w': jnp.ones(())}, state, params)
  # Nesterov: g + m * (m * t_prev + g) with t = m * t_prev + g.
  np.testing.assert_allclose(u1['w'], -schedule(1) * (1 + 0.9), rtol=1e-6)
  np.testing.assert_allclose(u2['w'], -schedule(2) * (1 + 0.9 * 1.9), rtol=1e-6)


def test_adafactor_factors_large_dims_and_descends():
  tx, _ = optim.make_optimizer({'optimizer': 'adafactor', 'base_lr': 0.1, 'total_steps': 50,
                                'decay_type': 'constant'})
  params = {'w': jnp.ones((64, 48)), 'b': jnp.ones(5)}
  state = tx.init(params)
  factored = state[0][0]  # chain(factored rms, momentum)
  assert {factored.v_row['w'].shape, factored.v_col['w'].shape} == {(64,), (48,)}
  loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))

  @jax.jit
  def five_steps(params, state):
    for _ in range(5):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = optax.apply_updates(params, updates)
    return params

  assert loss(five_steps(params, state)) < 0.9 * loss(params)


def test_freeze_works_on_boxed_params():
  model = models.get_model('testing', num_classes=3)
  tx, _ = optim.make_optimizer({**BASE, 'freeze': ['head/.*']})
  boxed = jax.eval_shape(functools.partial(model.init, train=False),
                         jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  state = jax.eval_shape(tx.init, boxed)
  labels = optim.freeze_labels(boxed, ['head/.*'])
  assert _paths(labels, lambda l: l == 'frozen') == ['head/bias', 'head/kernel']
  assert state.inner_states['frozen'] is not None


@pytest.mark.parametrize('key,value,match', [
    ('freeze', ['embeding/.*'], "'embeding/.\\*' matches no"),
    ('freeze', ['kernel'], "'kernel' matches no"),  # regexes must match the whole path
    ('lr_mults', [('hed/.*', 2.)], "'hed/.\\*' matches no"),
])
def test_patterns_matching_nothing_fail_at_init(key, value, match):
  tx, _ = optim.make_optimizer({**BASE, key: value})
  with pytest.raises(ValueError, match=f'config.{key}: {match}'):
    jax.eval_shape(tx.init, _vit_params())


@pytest.mark.parametrize('cfg,match', [
    ({**BASE, 'freeze': 'head/.*'}, "write \\['head"),
    ({**BASE, 'freeze': ['head/(']}, 'not a valid regex'),
    ({**BASE, 'lr_mults': [('head/.*',)]}, 'pairs'),
    ({**BASE, 'optimizer': 'lamb'}, 'config.optimizer'),
    ({**BASE, 'decay_type': 'exp'}, 'config.decay_type'),
    ({'total_steps': 10}, 'config.base_lr'),
    ({'base_lr': 1., 'total_steps': 10, 'warmup_steps': 10}, 'config.warmup_steps'),
])
def test_config_errors(cfg, match):
  with pytest.raises(ValueError, match=match):
    optim.make_optimizer(cfg)


def test_reads_config_dict():
  ml_collections = pytest.importorskip('ml_collections')
  tx, schedule = optim.make_optimizer(ml_collections.ConfigDict({**BASE, 'optimizer': 'sgd'}))
  assert float(schedule(10)) == 1.
  assert isinstance(tx, optax.GradientTransformation)


# ---------------------------------------------------------------------------------- layer-wise lr decay and muP


def _tiny_vit_params(scan=False, **kw):
  model = models.get_model('S/8', num_classes=3, hidden_size=16, scan=scan, num_registers=1,
                           transformer={'num_layers': 3, 'mlp_dim': 32, 'num_heads': 2}, **kw)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, 16, 16, 3)))['params']
  return jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)


def _ratios(cfg, params):
  """update / grad per leaf for one step of SGD at lr 1 with unit gradients."""
  tx, _ = optim.make_optimizer({'optimizer': 'sgd', 'momentum': 0., 'base_lr': 1., 'total_steps': 10,
                                'decay_type': 'constant', **cfg})
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return jax.tree.map(lambda u: -np.asarray(u), updates)


def test_layer_decay_factors_per_parameter():
  d = 0.5
  ratios = _ratios({'layer_decay': d}, _tiny_vit_params())
  flat = dict(zip(_paths(ratios), jax.tree.leaves(ratios)))
  want = {'head/kernel': 1., 'head/bias': 1., 'Transformer/encoder_norm/scale': 1.,
          'Transformer/encoderblock_2/MlpBlock_0/Dense_0/kernel': d, 'Transformer/encoderblock_1/LayerNorm_0/bias': d**2,
          'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel': d**3,
          'embedding/kernel': d**4, 'cls': d**4, 'reg': d**4, 'Transformer/posembed_input/pos_embedding': d**4}
  for name, factor in want.items():
    np.testing.assert_allclose(flat[name], factor, rtol=1e-6, err_msg=name)
  # Every leaf is one of those classes: nothing falls through to another factor.
  assert {float(np.unique(v)[0]) for v in flat.values()} == {1., d, d**2, d**3, d**4}


def test_layer_decay_scanned_equals_looped_and_composes_with_freeze():
  looped = _ratios({'layer_decay': 0.7, 'freeze': ['head/.*']}, _tiny_vit_params())
  scanned = _ratios({'layer_decay': 0.7, 'freeze': ['head/.*']}, _tiny_vit_params(scan=True))
  stacked = models.stack_encoder_blocks(looped)
  for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(scanned)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_array_equal(looped['head']['kernel'], 0.)  # frozen stays frozen
  with pytest.raises(ValueError, match='layer_decay=1.5 must be in'):
    optim.make_optimizer({**BASE, 'layer_decay': 1.5})


def test_mup_lr_factors_per_parameter():
  ratios = _ratios({'mup_base_width': 4}, _tiny_vit_params())  # width 16: m = 4
  flat = dict(zip(_paths(ratios), jax.tree.leaves(ratios)))
  hidden = {k for k in flat if k.startswith('Transformer/encoderblock_') and k.endswith('/kernel')}
  assert len(hidden) == 3 * 6  # q, k, v, out, two MLP kernels per block
  for name, value in flat.items():
    np.testing.assert_allclose(value, 0.25 if name in hidden else 1., err_msg=name)
