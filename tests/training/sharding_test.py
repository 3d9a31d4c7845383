"""Mesh construction and golden shardings of named params under each rule table (8 fake CPU devices)."""
import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from vit_jax import models
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training import train_step

BLOCK = 'Transformer/encoderblock_0/'


def _model(**kw):
  return models.get_model('B/8', num_classes=10, hidden_size=16, **kw,
                          transformer={'mlp_dim': 32, 'num_heads': 4, 'num_layers': 2})


def _boxed_state(model, tx):
  return jax.eval_shape(functools.partial(train_step.create_train_state, model, tx, input_shape=(1, 16, 16, 3),
                                          ema=True, unbox=False), jax.random.PRNGKey(0))


def _by_path(tree):
  is_leaf = lambda x: isinstance(x, (P, jax.sharding.NamedSharding))
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
  return {optim.path_str(p): getattr(x, 'spec', x) for p, x in leaves}


def test_make_mesh_shapes():
  assert dict(sharding.make_mesh({'data': -1}).shape) == {'data': 8, 'fsdp': 1, 'tensor': 1}
  assert dict(sharding.make_mesh({'data': 2, 'fsdp': -1}).shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert mesh.axis_names == ('data', 'fsdp', 'tensor') and mesh.devices.size == 8
  assert dict(sharding.make_mesh({'fsdp': 4}, devices=jax.devices()[:4]).shape)['fsdp'] == 4


@pytest.mark.parametrize('shape,match', [
    ({'data': 3}, 'has 3 devices but there are 8'),
    ({'data': 3, 'fsdp': -1}, 'does not divide the 8 devices'),
    ({'data': -1, 'fsdp': -1}, 'at most one -1'),
    ({'model': 8}, 'Unknown mesh axes'),
])
def test_make_mesh_errors(shape, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(shape)


def _ids(mesh):
  return [[d.id for d in row] for row in mesh.devices.reshape(mesh.devices.shape[0], -1)]


# Fake CPUs have no slice_index: the tests say which granule (TPU slice, GPU node) each device is in. Even and odd
# ids make the hybrid order differ from jax's order, so a mesh that ignored the granules would fail.
def _parity(device):
  return device.id % 2


def test_hybrid_mesh_puts_each_granule_in_one_block_of_data():
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 4}, granule_of=_parity)  # default dcn: data over the granules
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}
  assert _ids(mesh) == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_hybrid_mesh_splits_fsdp_over_granules_when_asked():
  shape = {'data': 2, 'fsdp': 4, 'dcn': {'data': 1, 'fsdp': 2}}
  mesh = sharding.make_mesh(shape, granule_of=_parity)
  # Each data row spans both granules: fsdp positions 0-1 in granule 0 (even ids), 2-3 in granule 1.
  assert _ids(mesh) == [[0, 2, 1, 3], [4, 6, 5, 7]]
  tensor = sharding.make_mesh({'fsdp': 4, 'tensor': 2, 'dcn': {'data': 1, 'tensor': 2}}, granule_of=_parity)
  assert [d.id % 2 for d in tensor.devices[0, :, 1]] == [1] * 4  # the tensor axis is the one that crosses


def test_single_granule_mesh_is_jax_order_without_warning(caplog):
  with caplog.at_level('WARNING'):
    mesh = sharding.make_mesh({'data': 2, 'fsdp': -1})
  assert _ids(mesh) == [[0, 1, 2, 3], [4, 5, 6, 7]] and not caplog.records


@pytest.mark.parametrize('shape,granule_of,reason', [
    ({'data': 1, 'fsdp': -1}, _parity, 'config.mesh.data=1 cannot be split over config.mesh.dcn.data=2 granules'),
    ({'data': -1, 'dcn': {'data': 4}}, _parity, "config.mesh.dcn={'data': 4} has 4 granules but there are 2"),
    ({'data': -1, 'dcn': {'data': 2}}, lambda d: 0, "config.mesh.dcn={'data': 2} has 2 granules but there are 1"),
    ({'data': -1}, lambda d: int(d.id < 6), 'the granules hold 2/6 devices, not 4 each'),
])
def test_unbuildable_device_order_warns_with_the_reason(shape, granule_of, reason, caplog):
  with caplog.at_level('WARNING'):
    mesh = sharding.make_mesh(shape, granule_of=granule_of)
  assert len(caplog.records) == 1 and reason in caplog.records[0].getMessage(), caplog.text
  assert [d.id for d in mesh.devices.flat] == list(range(8))  # the flat fallback: jax's order


def test_topology_failure_warns_instead_of_silently_falling_back(monkeypatch, caplog):
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise ValueError('cannot map the mesh onto the 2x2x2 torus')
  monkeypatch.setattr(mesh_utils, 'create_device_mesh', refuse)
  devices = [type('TpuDevice', (), dict(id=i, platform='tpu', device_kind='TPU v4', process_index=0,
                                        slice_index=0))() for i in range(8)]
  with caplog.at_level('WARNING'):
    grid = sharding._hybrid_grid(devices, {'data': 8, 'fsdp': 1, 'tensor': 1}, sharding.DCN_DEFAULT,
                                 sharding.granule)
  assert [d.id for d in grid.flat] == list(range(8))
  assert 'cannot map the mesh onto the 2x2x2 torus' in caplog.text and 'TPU v4' in caplog.text


def test_granule_is_the_slice_else_the_process():
  device = type('D', (), dict(process_index=3))()
  assert sharding.granule(device) == 3
  device.slice_index = 1
  assert sharding.granule(device) == 1


def test_unknown_rules():
  with pytest.raises(ValueError, match='config.sharding_rules'):
    sharding.get_rules('zero3')
  assert sharding.get_rules([['embed', ['fsdp']]]) == (('embed', ('fsdp',)),)


# Golden shardings. Updating these is legitimate only when the rule tables or the model's logical axis names change
# on purpose; then say so in the commit.
GOLDEN = {
    'dp': ({'data': 8}, {
        BLOCK + 'MlpBlock_0/Dense_0/kernel': P(None, None),
        BLOCK + 'MultiHeadDotProductAttention_0/query/kernel': P(None, None, None),
        'Transformer/posembed_input/pos_embedding': P(None, None, None),
        'head/kernel': P(None, None),
    }),
    'fsdp': ({'data': 2, 'fsdp': 4}, {
        BLOCK + 'MlpBlock_0/Dense_0/kernel': P('fsdp', None),
        BLOCK + 'MlpBlock_0/Dense_0/bias': P(None),
        BLOCK + 'MlpBlock_0/Dense_1/kernel': P(None, 'fsdp'),
        BLOCK + 'MultiHeadDotProductAttention_0/query/kernel': P('fsdp', None, None),
        BLOCK + 'MultiHeadDotProductAttention_0/out/kernel': P(None, None, 'fsdp'),
        BLOCK + 'LayerNorm_0/scale': P('fsdp'),
        'embedding/kernel': P(None, None, None, 'fsdp'),
        'cls': P(None, None, 'fsdp'),
        'Transformer/posembed_input/pos_embedding': P(None, None, 'fsdp'),
        'head/kernel': P('fsdp', None),
        'head/bias': P(None),
    }),
    'tp': ({'data': 2, 'fsdp': 2, 'tensor': 2}, {
        BLOCK + 'MlpBlock_0/Dense_0/kernel': P('fsdp', 'tensor'),
        BLOCK + 'MlpBlock_0/Dense_0/bias': P('tensor'),
        BLOCK + 'MlpBlock_0/Dense_1/kernel': P('tensor', 'fsdp'),
        BLOCK + 'MultiHeadDotProductAttention_0/query/kernel': P('fsdp', 'tensor', None),
        BLOCK + 'MultiHeadDotProductAttention_0/query/bias': P('tensor', None),
        BLOCK + 'MultiHeadDotProductAttention_0/out/kernel': P('tensor', None, 'fsdp'),
        BLOCK + 'LayerNorm_0/scale': P('fsdp'),
        'head/kernel': P('fsdp', None),
    }),
}


@pytest.mark.parametrize('rules', sorted(GOLDEN))
def test_golden_param_and_optimizer_state_shardings(rules):
  mesh_shape, want = GOLDEN[rules]
  mesh = sharding.make_mesh(mesh_shape)
  tx, _ = optim.make_optimizer({'base_lr': 1e-3, 'total_steps': 10, 'optimizer': 'adam'})
  shardings = sharding.param_shardings(_boxed_state(_model(), tx), mesh, rules)
  params, mu, nu, ema = (_by_path(t) for t in (shardings.params, shardings.opt_state[0].mu,
                                                shardings.opt_state[0].nu, shardings.ema_params))
  for name, spec in want.items():
    assert params[name] == spec, (rules, name, params[name])
    assert mu[name] == nu[name] == ema[name] == spec, name  # optimizer state and EMA shard like their params
  assert shardings.step.spec == P() and shardings.rng.spec == P()
  assert shardings.opt_state[0].count.spec == P()


def test_shardings_match_unboxed_state_structure():
  tx, _ = optim.make_optimizer({'base_lr': 1e-3, 'total_steps': 10, 'freeze': ['embedding/.*'],
                                'weight_decay': 0.1, 'lr_mults': [('head/.*', 2.)]})
  model = _model()
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  shardings = sharding.param_shardings(_boxed_state(model, tx), mesh, 'fsdp')
  unboxed = jax.eval_shape(functools.partial(train_step.create_train_state, model, tx, input_shape=(1, 16, 16, 3),
                                             ema=True), jax.random.PRNGKey(0))
  assert jax.tree.structure(shardings) == jax.tree.structure(unboxed)
  # A frozen param's (absent) optimizer state stays absent; the trainable ones are sharded.
  mu = _by_path(shardings.opt_state.inner_states['trainable'].inner_state[0].mu)
  assert not any(name.startswith('embedding') for name in mu)
  assert mu[BLOCK + 'MlpBlock_0/Dense_0/kernel'] == P('fsdp', None)


def test_indivisible_dims_are_replicated():
  model = models.get_model('testing', num_classes=10)  # hidden_size 10: not divisible by fsdp=4
  tx, _ = optim.make_optimizer({'base_lr': 1e-3, 'total_steps': 10})
  specs = _by_path(sharding.param_shardings(_boxed_state(model, tx), sharding.make_mesh({'data': 2, 'fsdp': 4}),
                                            'fsdp').params)
  assert specs[BLOCK + 'MlpBlock_0/Dense_0/kernel'] == P(None, None)
  assert specs['cls'] == P(None, None, None)


def test_scanned_layers_axis_is_not_sharded():
  tx, _ = optim.make_optimizer({'base_lr': 1e-3, 'total_steps': 10})
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  specs = _by_path(sharding.param_shardings(_boxed_state(_model(scan=True), tx), mesh, 'tp').params)
  assert specs['Transformer/encoderblock/MlpBlock_0/Dense_0/kernel'] == P(None, 'fsdp', 'tensor')
  assert specs['Transformer/encoderblock/LayerNorm_0/scale'] == P(None, 'fsdp')


def test_batch_sharding():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  x = jax.device_put(jnp.zeros((16, 4, 4, 3)), sharding.batch_sharding(mesh))
  assert x.sharding.spec == P(('data', 'fsdp'))
  assert {s.data.shape for s in x.addressable_shards} == {(2, 4, 4, 3)}


def test_activation_constraints_under_axis_rules():
  """With the loop's mesh + rules the model's logical activation constraints reach the lowered step; without, none."""
  model = _model()
  tx, _ = optim.make_optimizer({'base_lr': 1e-3, 'total_steps': 10})
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  state = jax.eval_shape(functools.partial(train_step.create_train_state, model, tx, input_shape=(1, 16, 16, 3)),
                         jax.random.PRNGKey(0))
  batch = {'image': jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32, sharding=sharding.batch_sharding(mesh)),
           'label': jax.ShapeDtypeStruct((8, 10), jnp.float32, sharding=sharding.batch_sharding(mesh))}

  def constraints(**kw):
    text = jax.jit(train_step.make_train_step(model, tx, **kw)).lower(state, batch).as_text()
    return text.count('sharding_constraint')
  assert constraints() == 0
  assert constraints(mesh=mesh, rules='fsdp') >= 2 * 2  # >= 2 per encoder block, forward and backward
