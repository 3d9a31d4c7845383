"""The pure train/eval step: accumulation, rng, EMA, metrics, eval masking, sharded equality and golden values."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax import models
from vit_jax.training import losses
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training import train_step

NUM_CLASSES = 10
INPUT = (1, 32, 32, 3)


def _model(dropout=0.):
  return models.get_model('B/8', num_classes=NUM_CLASSES, hidden_size=16, head_zeroinit=False,
                          transformer={'mlp_dim': 32, 'num_heads': 4, 'num_layers': 2, 'dropout_rate': dropout})


# SGD with momentum, not Adam, where two computations of the same gradient are compared: Adam divides each
# gradient by its own magnitude, which turns the float rounding noise of gradients that are zero in exact
# arithmetic (the attention key bias: softmax ignores it) into full-size +-lr updates.
OPTIMIZER = {'base_lr': 1e-1, 'total_steps': 10, 'warmup_steps': 2, 'optimizer': 'sgd', 'momentum': 0.9,
             'weight_decay': 1e-2, 'grad_norm_clip': 1.}
TX, SCHEDULE = optim.make_optimizer(OPTIMIZER)


def _batch(n=16, seed=0):
  rs = np.random.RandomState(seed)
  return {'image': rs.uniform(-1, 1, (n,) + INPUT[1:]).astype(np.float32),
          'label': np.eye(NUM_CLASSES, dtype=np.float32)[rs.randint(0, NUM_CLASSES, n)]}


@functools.lru_cache(maxsize=None)
def _init_fn(dropout=0., ema=True):
  return jax.jit(functools.partial(train_step.create_train_state, _model(dropout), TX, input_shape=INPUT, ema=ema))


def _state(dropout=0., ema=True):
  return _init_fn(dropout, ema)(jax.random.PRNGKey(0))


@functools.lru_cache(maxsize=None)
def _step_fn(dropout=0., accum_steps=1, ema_decay=0.9):
  return jax.jit(train_step.make_train_step(_model(dropout), TX, lr_schedule=SCHEDULE, accum_steps=accum_steps,
                                            ema_decay=ema_decay))


def _allclose(a, b, **kw):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


@pytest.mark.slow
def test_create_train_state():
  state = _state()
  assert int(state.step) == 0 and state.rng.dtype == jnp.uint32
  typed = _init_fn()(jax.random.key(0))  # a typed key is stored as its raw uint32 data
  assert typed.rng.dtype == jnp.uint32 and np.array_equal(typed.rng, state.rng)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  _allclose(state.ema_params, state.params, rtol=0)
  assert jax.eval_shape(functools.partial(train_step.create_train_state, _model(), TX, input_shape=INPUT),
                        jax.random.PRNGKey(0)).ema_params is None


@pytest.mark.slow
def test_accumulation_equals_full_batch_step():
  state, batch = _state(), _batch(16)
  s1, m1 = _step_fn()(state, batch)
  s4, m4 = _step_fn(accum_steps=4)(state, batch)
  for key in ('loss', 'grad_norm', 'param_norm', 'lr'):
    np.testing.assert_allclose(m1[key], m4[key], rtol=1e-5)
  _allclose(s1.params, s4.params, rtol=1e-5, atol=1e-7)
  _allclose(s1.opt_state, s4.opt_state, rtol=1e-4, atol=1e-7)  # the momentum holds the gradient itself
  with pytest.raises(ValueError, match='accum_steps'):
    jax.eval_shape(train_step.make_train_step(_model(), TX, accum_steps=3), state, batch)


@pytest.mark.slow
def test_randomness_is_a_function_of_seed_and_step():
  state, batch = _state(dropout=0.5), _batch(16)
  loss = lambda s: float(_step_fn(dropout=0.5)(s, batch)[1]['loss'])
  assert loss(state) == loss(state)
  assert loss(state) != loss(state.replace(step=jnp.asarray(5, jnp.int32)))  # other dropout masks
  assert loss(state) != loss(state.replace(rng=jax.random.PRNGKey(7)))


@pytest.mark.slow
def test_metrics_and_ema():
  state, batch = _state(), _batch(16)
  model = _model()
  logits_fn = lambda p: model.apply({'params': p}, batch['image'], train=True, rngs={'dropout': state.rng})
  loss_fn = lambda p: jnp.mean(losses.softmax_xent(logits_fn(p), batch['label']))
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  p0 = jax.device_get(state.params)

  s1, metrics = _step_fn()(state, batch)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics['grad_norm'], optax.global_norm(grads), rtol=1e-5)
  np.testing.assert_allclose(metrics['param_norm'], optax.global_norm(s1.params), rtol=1e-6)
  np.testing.assert_allclose(metrics['lr'], SCHEDULE(1), rtol=0)
  assert int(s1.step) == 1
  # EMA: e_1 = 0.9 e_0 + 0.1 p_1 with e_0 = p_0, then e_2 = 0.9 e_1 + 0.1 p_2.
  p1, e1 = jax.device_get((s1.params, s1.ema_params))
  _allclose(e1, jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, p0, p1), rtol=1e-6, atol=1e-8)
  s2, _ = _step_fn()(s1, batch)
  _allclose(s2.ema_params, jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, e1, jax.device_get(s2.params)),
            rtol=1e-6, atol=1e-8)
  with pytest.raises(ValueError, match='ema=True'):
    jax.eval_shape(_step_fn(), state.replace(ema_params=None), batch)


def test_nan_shows_in_metrics():
  state, batch = _state(), _batch(16)
  batch['image'][3, 0, 0, 0] = np.nan
  _, metrics = _step_fn()(state, batch)
  assert not np.isfinite(metrics['loss']) and not np.isfinite(metrics['grad_norm'])


@pytest.mark.slow
def test_eval_step_counts_each_real_example_once():
  model, params = _model(), _state().params
  real = _batch(5, seed=3)
  padded = {'image': np.concatenate([real['image'], np.zeros((3,) + INPUT[1:], np.float32)]),
            'label': np.concatenate([real['label'], np.eye(NUM_CLASSES, dtype=np.float32)[[0, 0, 0]]]),
            'mask': np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)}
  got = jax.jit(train_step.make_eval_step(model))(params, padded)
  logits = np.asarray(model.apply({'params': params}, real['image'], train=False))
  label = real['label'].argmax(-1)
  ranks = (-logits).argsort(-1)
  np.testing.assert_allclose(got['loss_sum'], losses.softmax_xent(logits, real['label']).sum(), rtol=1e-5)
  assert float(got['count']) == 5
  assert float(got['top1']) == (ranks[:, 0] == label).sum()
  assert float(got['top5']) == sum(label[i] in ranks[i, :5] for i in range(5))


@functools.lru_cache(maxsize=None)
def _sharded_run(mesh_shape, rules, steps=3, activation_rules=False):
  """Losses and final state of `steps` donated, sharded steps of the dropout model under `mesh_shape`/`rules`."""
  model = _model(dropout=0.1)
  mesh = sharding.make_mesh(dict(mesh_shape))
  step_rules = dict(mesh=mesh, rules=rules) if activation_rules else {}
  init = functools.partial(train_step.create_train_state, model, TX, input_shape=INPUT, ema=True)
  state_shardings = train_step.train_state_shardings(model, TX, INPUT, mesh, rules, ema=True)
  state = jax.jit(init, out_shardings=state_shardings)(jax.random.PRNGKey(0))
  step = jax.jit(train_step.make_train_step(model, TX, lr_schedule=SCHEDULE, ema_decay=0.99, **step_rules),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  losses_ = []
  for i in range(steps):
    batch = jax.device_put(_batch(16, seed=i), sharding.batch_sharding(mesh))
    state, metrics = step(state, batch)
    losses_.append(float(metrics['loss']))
  return losses_, state


@pytest.mark.slow
def test_dp_and_fsdp_train_identically():
  dp_losses, dp_state = _sharded_run((('data', 8),), 'dp')
  fsdp_losses, fsdp_state = _sharded_run((('data', 2), ('fsdp', 4)), 'fsdp')
  kernel = fsdp_state.params['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', None)  # really sharded
  assert len(dp_losses) == 3 and len(set(dp_losses)) == 3
  np.testing.assert_allclose(dp_losses, fsdp_losses, rtol=1e-5)
  _allclose(jax.device_get(dp_state.params), jax.device_get(fsdp_state.params), rtol=1e-5, atol=1e-6)
  _allclose(jax.device_get(dp_state.ema_params), jax.device_get(fsdp_state.ema_params), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_activation_rules_in_the_step():
  """`mesh`/`rules` put the model's activation constraints in the step; numerics unchanged."""
  mesh_shape = (('data', 2), ('fsdp', 4))
  mesh = sharding.make_mesh(dict(mesh_shape))
  step = train_step.make_train_step(_model(), TX, mesh=mesh, rules='fsdp')
  hlo = jax.jit(step).lower(_state(), _batch(16)).as_text()
  assert '"data", "fsdp"' in hlo  # activations: batch over both axes
  losses_, _ = _sharded_run(mesh_shape, 'fsdp', steps=1, activation_rules=True)
  np.testing.assert_allclose(losses_, _sharded_run((('data', 8),), 'dp')[0][:1], rtol=1e-5)


# Golden first steps: seed 0, the dropout model, optimizer and batches above, mesh {'data': 8}. Updating these
# values is legitimate only for an intended change of numerics (model init or computation, optimizer, loss, rng
# folding, batch generation) or a jax/XLA upgrade; say which in the commit message. Any other change that moves
# them is a bug.
GOLDEN_LOSSES = [2.4624434, 2.5935411]


def test_golden_first_steps():
  got, _ = _sharded_run((('data', 8),), 'dp')
  np.testing.assert_allclose(got[:2], GOLDEN_LOSSES, rtol=1e-6)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_params_and_bf16_momentum():
  model = models.get_model('testing', num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
  tx, schedule = optim.make_optimizer({**OPTIMIZER, 'optimizer': 'adam', 'mu_dtype': 'bfloat16'})
  state = jax.jit(functools.partial(train_step.create_train_state, model, tx, input_shape=INPUT))(
      jax.random.PRNGKey(0))
  step = jax.jit(train_step.make_train_step(model, tx, losses.sigmoid_xent, lr_schedule=schedule, accum_steps=2),
                 donate_argnums=0)
  state, metrics = step(state, _batch(8))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  adam = state.opt_state[1]
  assert {x.dtype for x in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
  assert all(v.dtype == jnp.float32 and np.isfinite(v) for v in metrics.values())


@pytest.mark.slow  # a tiny model compiled a few times
def test_uint8_batches_are_finished_and_mixed_in_the_step_from_seed_and_step():
  """With batch_ops the step takes uint8 images and int32 labels and equals the float step on the batch that
  mixing.train_batch makes with the key fold_in(fold_in(rng, step), MIX_STREAM); eval likewise."""
  from vit_jax.data import mixing  # pylint: disable=g-import-not-at-top
  ops = mixing.BatchOps(num_classes=NUM_CLASSES, label_smoothing=0.1, mixup=0.5, cutmix=1.)
  rs = np.random.RandomState(3)
  raw = {'image': rs.randint(0, 256, (16,) + INPUT[1:]).astype(np.uint8),
         'label': rs.randint(0, NUM_CLASSES, 16).astype(np.int32)}
  model = _model()
  fused = jax.jit(train_step.make_train_step(model, TX, lr_schedule=SCHEDULE, ema_decay=0.9, batch_ops=ops))
  state = _state()
  state = _step_fn()(state, _batch(16))[0]  # at step 1, so the step number reaches the key
  got_state, got = fused(state, raw)
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), train_step.MIX_STREAM)
  finished = jax.jit(lambda b, k: mixing.train_batch(b, k, ops))(raw, key)
  want_state, want = _step_fn()(state, finished)
  _allclose(got, want, rtol=1e-6)
  _allclose(got_state.params, want_state.params, rtol=1e-6, atol=1e-7)
  later = fused(got_state, raw)[1]  # the next step draws another mix of the same examples
  assert float(later['loss']) != float(got['loss'])
  eval_raw = {**raw, 'mask': np.ones(16, np.float32)}
  fused_eval = jax.jit(train_step.make_eval_step(model, batch_ops=ops))(state.params, eval_raw)
  plain_eval = jax.jit(train_step.make_eval_step(model))(state.params, mixing.eval_batch(eval_raw, ops))
  _allclose(fused_eval, plain_eval, rtol=1e-6)
