"""What code written against google-research/vision_transformer relies on: its config functions, plain `init`
params (its `.npz` writer round-trips through our loader), and the published GroupNorm shapes in what we write.
Its parameter table (every registered model's count, and a test failing on a model missing from the table) is
pinned in tests/models/models_test.py (PARAM_COUNTS: the reference's numbers)."""
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.configs import models as config_lib


def _vit(name, patch, size, dropout=0., classifier='token', resnet=None):
  hidden, mlp, heads, layers = {'testing': (10, 10, 2, 1), 'Ti': (192, 768, 3, 12), 'S': (384, 1536, 6, 12),
                                'B': (768, 3072, 12, 12), 'L': (1024, 4096, 16, 24),
                                'H': (1280, 5120, 16, 32)}[size]
  cfg = {'model_name': name, 'patches': {'size': (patch, patch)}, 'hidden_size': hidden,
         'transformer': {'mlp_dim': mlp, 'num_heads': heads, 'num_layers': layers,
                         'attention_dropout_rate': 0., 'dropout_rate': dropout},
         'classifier': classifier, 'representation_size': None}
  if resnet is not None:
    cfg['resnet'] = {'num_layers': resnet, 'width_factor': 1}
  return cfg


# Every ViT and hybrid config function of the reference's vit_jax/configs/models.py, with the values it returns,
# transcribed from that file.
REFERENCE_CONFIGS = {
    'get_testing_config': _vit('testing', 16, 'testing', dropout=0.1),
    'get_testing_unpooled_config': _vit('testing-unpooled', 16, 'testing', dropout=0.1, classifier='unpooled'),
    'get_ti16_config': _vit('ViT-Ti_16', 16, 'Ti'),
    'get_s16_config': _vit('ViT-S_16', 16, 'S'),
    'get_b16_config': _vit('ViT-B_16', 16, 'B'),
    'get_l16_config': _vit('ViT-L_16', 16, 'L', dropout=0.1),
    'get_h14_config': _vit('ViT-H_14', 14, 'H', dropout=0.1),
    'get_s16_gap_norep_config': _vit('ViT-S_16-gap-norep', 16, 'S', classifier='gap'),
    'get_b16_gap_norep_config': _vit('ViT-B_16-gap-norep', 16, 'B', classifier='gap'),
    'get_b8_config': _vit('ViT-B_8', 8, 'B'),
    'get_s32_config': _vit('ViT-S_32', 32, 'S'),
    'get_b32_config': _vit('ViT-B_32', 32, 'B'),
    'get_l32_config': _vit('ViT-L_32', 32, 'L'),
    'get_s32_gap_norep_config': _vit('ViT-S_32-gap-norep', 32, 'S', classifier='gap'),
    'get_b32_gap_norep_config': _vit('ViT-B_32-gap-norep', 32, 'B', classifier='gap'),
    'get_r_ti16_config': _vit('R+ViT-Ti_16', 8, 'Ti', resnet=()),
    'get_r50_b16_config': _vit('R50+ViT-B_16', 1, 'B', dropout=0.1, resnet=(3, 4, 9)),
    'get_r26_b32_config': _vit('R26+ViT-B_32', 1, 'B', resnet=(2, 2, 2, 2)),
    'get_r26_s32_config': _vit('R26+ViT-S_32', 1, 'S', resnet=(2, 2, 2, 2)),
    'get_r50_l32_config': _vit('R50+ViT-L_32', 1, 'L', dropout=0.1, resnet=(3, 4, 6, 3)),
}


# ---------------------------------------------------------------------------------------- 1. config functions


@pytest.mark.parametrize('fn', sorted(REFERENCE_CONFIGS))
def test_reference_config_functions_return_the_reference_values(fn):
  cfg = getattr(config_lib, fn)()
  assert isinstance(cfg, ml_collections.ConfigDict) and not cfg.is_locked
  assert cfg.to_dict() == REFERENCE_CONFIGS[fn]
  assert cfg.to_dict() == config_lib.MODEL_CONFIGS[cfg.model_name].to_dict()
  cfg.transformer.dropout_rate = 0.5  # a fresh copy each call, as the reference's
  assert getattr(config_lib, fn)().transformer.dropout_rate == REFERENCE_CONFIGS[fn]['transformer']['dropout_rate']


def test_model_configs_are_the_reference_models():
  # Exactly the reference's ViT and hybrid names: its test_all_tested wants each in its parameter table.
  names = {getattr(config_lib, f)().model_name for f in dir(config_lib) if re.fullmatch(r'get_\w+_config', f)}
  assert names == set(config_lib.MODEL_CONFIGS) == {c['model_name'] for c in REFERENCE_CONFIGS.values()}
  assert set(models.MODEL_CONFIGS) - names == {'ViT-g_14'}  # ours only: vit_jax.models.get_model('ViT-g_14')
  assert config_lib.AUGREG_CONFIGS['R26_S_32'].to_dict() == REFERENCE_CONFIGS['get_r26_s32_config']
  assert not {'testing', 'testing-unpooled', 'L_32', 'R50_B_16', 'H_14'} & set(config_lib.AUGREG_CONFIGS)


def test_mixer_and_lit_configs_are_one_line_errors():
  with pytest.raises(AttributeError, match='get_mixer_b16_config: vit_jax has no MLP-Mixer or LiT models'):
    config_lib.get_mixer_b16_config()  # pylint: disable=expression-not-assigned
  with pytest.raises(AttributeError, match="has no attribute 'get_nothing'"):
    config_lib.get_nothing  # pylint: disable=pointless-statement


# ------------------------------------------------------------------------------------- 2. plain init params


@pytest.mark.slow
def test_init_gives_plain_arrays_and_init_with_axes_the_logical_names():
  model = models.get_model('testing', num_classes=3, scan=True)
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), x, train=False))()['params']
  assert all(isinstance(leaf, jax.Array) for leaf in flax.traverse_util.flatten_dict(params).values())
  state = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(params), sep='/')
  assert not [k for k in state if k.endswith('/value')]
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert "['head']['kernel']" in paths and not [p for p in paths if p.endswith("['value']")]

  boxed = jax.jit(lambda: models.init_with_axes(model, jax.random.PRNGKey(0), x, train=False))()['params']
  assert isinstance(boxed['head']['kernel'], nn.LogicallyPartitioned)
  assert boxed['Transformer']['encoderblock']['MlpBlock_0']['Dense_0']['kernel'].names == ('layers', 'embed', 'mlp')
  assert jax.tree.structure(nn.meta.unbox(boxed)) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(nn.meta.unbox(boxed)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # the same values: only the boxes differ


@pytest.mark.slow
def test_reference_writer_output_loads_as_the_params_it_wrote_and_fine_tunes(tmp_path):
  """The reference's writer of `model.init` params (flax.serialization.to_state_dict, '/'-joined names, np.savez)
  -> our `load` gives them back bitwise, and `load_pretrained` adapts them to 32 px and 2 classes, as its
  checkpoint test does."""
  cfg = config_lib.get_testing_config()
  model = models.VisionTransformer(num_classes=1, **cfg)
  params = model.init(jax.random.PRNGKey(0), jnp.ones([1, 16, 16, 3], jnp.float32), train=False)['params']
  flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(params), sep='/')
  np.savez(tmp_path / 'testing.npz', **{k: np.asarray(v) for k, v in flat.items()})
  with np.load(tmp_path / 'testing.npz') as f:
    assert 'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel' in f.files
    assert not [k for k in f.files if k.endswith('/value')]
  loaded = checkpoint.load(tmp_path / 'testing.npz')
  want, have = (flax.traverse_util.flatten_dict(t, sep='/') for t in (params, loaded))
  assert sorted(have) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(have[k], want[k], err_msg=k)

  target = models.VisionTransformer(num_classes=2, **cfg)
  init = target.init(jax.random.PRNGKey(1), jnp.ones([1, 32, 32, 3], jnp.float32), train=False)['params']
  tuned = checkpoint.load_pretrained(pretrained_path=str(tmp_path / 'testing.npz'), init_params=init,
                                     model_config=cfg)
  assert tuned['Transformer']['posembed_input']['pos_embedding'].shape == (1, 1 + 2 * 2, 10)  # 1x1 -> 2x2 grid
  np.testing.assert_array_equal(tuned['head']['kernel'], init['head']['kernel'])  # the head is the fresh one
  np.testing.assert_array_equal(tuned['embedding']['kernel'], params['embedding']['kernel'])


# ----------------------------------------------------------------------------- 3. published GroupNorm shapes


def _published_hybrid_shapes():
  """Keys and shapes of the published layout for `testing` on a 2-stage ResNet root of width 32, 10 classes,
  32 px, written out from the reference's models_resnet.py / models_vit.py (pre-Linen block names; GroupNorm
  params (1, 1, 1, C) as flax < 0.3.6 stored them)."""
  shapes = {'conv_root/kernel': (7, 7, 3, 32), 'gn_root/scale': (1, 1, 1, 32), 'gn_root/bias': (1, 1, 1, 32)}
  for block, (cin, width) in (('block1', (32, 32)), ('block2', (128, 64))):
    unit = f'{block}/unit1/'
    shapes.update({unit + 'conv_proj/kernel': (1, 1, cin, 4 * width), unit + 'conv1/kernel': (1, 1, cin, width),
                   unit + 'conv2/kernel': (3, 3, width, width), unit + 'conv3/kernel': (1, 1, width, 4 * width)})
    for gn, c in (('gn_proj', 4 * width), ('gn1', width), ('gn2', width), ('gn3', 4 * width)):
      shapes.update({unit + gn + '/scale': (1, 1, 1, c), unit + gn + '/bias': (1, 1, 1, c)})
  blk = 'Transformer/encoderblock_0/'
  shapes.update({
      'embedding/kernel': (1, 1, 256, 10), 'embedding/bias': (10,), 'cls': (1, 1, 10),
      'Transformer/posembed_input/pos_embedding': (1, 1 + 4 * 4, 10),
      'Transformer/encoder_norm/scale': (10,), 'Transformer/encoder_norm/bias': (10,),
      'head/kernel': (10, 3), 'head/bias': (3,),
      blk + 'MlpBlock_3/Dense_0/kernel': (10, 10), blk + 'MlpBlock_3/Dense_0/bias': (10,),
      blk + 'MlpBlock_3/Dense_1/kernel': (10, 10), blk + 'MlpBlock_3/Dense_1/bias': (10,),
      blk + 'MultiHeadDotProductAttention_1/out/kernel': (2, 5, 10),
      blk + 'MultiHeadDotProductAttention_1/out/bias': (10,)})
  for ln in ('LayerNorm_0', 'LayerNorm_2'):
    shapes.update({blk + ln + '/scale': (10,), blk + ln + '/bias': (10,)})
  for proj in ('query', 'key', 'value'):
    shapes.update({blk + f'MultiHeadDotProductAttention_1/{proj}/kernel': (10, 2, 5),
                   blk + f'MultiHeadDotProductAttention_1/{proj}/bias': (2, 5)})
  return shapes


@pytest.mark.slow
def test_save_npz_writes_the_published_hybrid_layout(tmp_path):
  model = models.get_model('testing', num_classes=3, patches={'size': (1, 1)},
                           resnet={'num_layers': (1, 1), 'width_factor': 0.5})
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))()['params']
  assert params['gn_root']['scale'].shape == (32,)  # what our (current flax) GroupNorm holds
  checkpoint.save_npz(params, tmp_path / 'hybrid.npz')
  with np.load(tmp_path / 'hybrid.npz') as f:
    written = {k: f[k].shape for k in f.files}
    np.testing.assert_array_equal(f['block2/unit1/gn3/bias'].reshape(-1), params['block2']['unit1']['gn3']['bias'])
  assert written == _published_hybrid_shapes()
  loaded = flax.traverse_util.flatten_dict(checkpoint.load(tmp_path / 'hybrid.npz'), sep='/')
  for k, v in flax.traverse_util.flatten_dict(params, sep='/').items():
    np.testing.assert_array_equal(loaded[k], v, err_msg=k)  # and back to (C,), bitwise
