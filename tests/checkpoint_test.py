"""Tests for vit_jax.checkpoint: published/big_vision layouts, save/load round trip, load_pretrained, timm cross-check."""
import functools
import os
import zipfile

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax import models

TINY = dict(hidden_size=32, transformer={'mlp_dim': 128, 'num_heads': 4, 'num_layers': 2,
                                         'attention_dropout_rate': 0., 'dropout_rate': 0.})


def _model(num_classes=5, patch=8, **overrides):
  cfg = dict(patches={'size': (patch, patch)}, classifier='token', representation_size=None, **TINY)
  cfg.update(overrides)
  return models.VisionTransformer(num_classes=num_classes, **cfg)


def _images(size=(32, 32), seed=0, batch=2):
  return np.random.RandomState(seed).uniform(-1, 1, (batch, *size, 3)).astype(np.float32)


def _random_params(model, images, seed=1, conv_std=1.):
  """Random non-zero float32 params for every leaf (head included): LayerNorm/GroupNorm scales near 1."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), images[:1], train=False)['params']))
  rng = np.random.RandomState(seed)

  def draw(key, leaf):
    if key.endswith('/scale'):
      value = 1 + 0.2 * rng.normal(size=leaf.shape)
      if '/gn3/' in key:  # the last norm of a residual branch: small, as after training from its zero init
        value = 0.1 * rng.normal(size=leaf.shape)
    elif 'conv' in key:  # weight-standardised: the scale does not matter
      value = conv_std * rng.normal(size=leaf.shape)
    else:
      value = 0.2 * rng.normal(size=leaf.shape)
    return value.astype(np.float32)

  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  return flax.traverse_util.unflatten_dict({k: draw(k, v) for k, v in flat.items()}, sep='/')


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(nn.meta.unbox(tree)), sep='/')


def _assert_trees_equal(a, b):
  a, b = _flat(a), _flat(b)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k


def _logits(model, params, images):
  return np.asarray(model.apply({'params': params}, images, train=False))


# The published (pre-Linen) names of a 2-block token model, written out by hand.
PUBLISHED_KEYS = sorted(
    ['cls', 'embedding/kernel', 'embedding/bias', 'Transformer/posembed_input/pos_embedding',
     'Transformer/encoder_norm/scale', 'Transformer/encoder_norm/bias', 'head/kernel', 'head/bias'] +
    [f'Transformer/encoderblock_{i}/{name}' for i in range(2) for name in (
        'LayerNorm_0/scale', 'LayerNorm_0/bias', 'LayerNorm_2/scale', 'LayerNorm_2/bias',
        'MlpBlock_3/Dense_0/kernel', 'MlpBlock_3/Dense_0/bias', 'MlpBlock_3/Dense_1/kernel', 'MlpBlock_3/Dense_1/bias',
        *[f'MultiHeadDotProductAttention_1/{p}/{w}' for p in ('query', 'key', 'value', 'out')
          for w in ('kernel', 'bias')])])
OURS_TO_PUBLISHED = {'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1', 'LayerNorm_1': 'LayerNorm_2',
                     'MlpBlock_0': 'MlpBlock_3'}


def _published_flat(params):
  """Our params renamed to the published layout by the hand-written table above (independent of save_npz)."""
  out = {}
  for k, v in _flat(params).items():
    parts = k.split('/')
    if parts[0] == 'Transformer' and parts[1].startswith('encoderblock_'):
      parts[2] = OURS_TO_PUBLISHED.get(parts[2], parts[2])
    out['/'.join(parts)] = np.asarray(v)
  return out


def test_save_writes_published_layout(tmp_path):
  model, images = _model(), _images()
  params = _random_params(model, images)
  checkpoint.save_npz(params, tmp_path / 'm.npz')
  with np.load(tmp_path / 'm.npz') as f:
    assert sorted(f.files) == PUBLISHED_KEYS
    expected = _published_flat(params)
    for k in f.files:
      np.testing.assert_array_equal(f[k], expected[k], err_msg=k)
  assert os.listdir(tmp_path) == ['m.npz']  # no temp file left behind


def test_load_published_layout_gives_our_tree_and_logits(tmp_path):
  model, images = _model(), _images()
  params = _random_params(model, images)
  np.savez(tmp_path / 'published.npz', **_published_flat(params))
  loaded = checkpoint.load(tmp_path / 'published.npz')
  _assert_trees_equal(loaded, params)
  np.testing.assert_array_equal(_logits(model, loaded, images), _logits(model, params, images))


def test_save_load_round_trip_is_bitwise(tmp_path):
  model, images = _model(), _images()
  np.savez(tmp_path / 'a.npz', **_published_flat(_random_params(model, images)))
  first = checkpoint.load(tmp_path / 'a.npz')
  checkpoint.save_npz(first, tmp_path / 'b.npz')
  _assert_trees_equal(checkpoint.load(tmp_path / 'b.npz'), first)
  with np.load(tmp_path / 'a.npz') as a, np.load(tmp_path / 'b.npz') as b:
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
      assert a[k].tobytes() == b[k].tobytes() and a[k].shape == b[k].shape, k


def test_compat_snippet_from_google_research_vision_transformer(tmp_path, monkeypatch):
  pytest.importorskip('ml_collections')
  from vit_jax.configs import models as models_config  # pylint: disable=g-import-not-at-top
  base = models.get_model('testing', num_classes=1000)
  images = _images((32, 32))
  checkpoint.save_npz(_random_params(base, images), tmp_path / 'ViT-B_16.npz')
  with np.load(tmp_path / 'ViT-B_16.npz') as f:
    assert 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel' in f.files
  monkeypatch.chdir(tmp_path)
  # --- the snippet, verbatim but for the model name ---
  cfg = models_config.MODEL_CONFIGS['testing']
  model = models.VisionTransformer(num_classes=1000, **cfg)
  params = checkpoint.load('ViT-B_16.npz')
  logits = model.apply({'params': params}, images, train=False)
  # ---
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, _logits(base, params, images), rtol=0, atol=0)
  assert np.abs(np.asarray(logits)).max() > 0.1


def test_load_pretrained_resets_head_and_resamples_posemb(tmp_path):
  src, images = _model(num_classes=5), _images((32, 32))
  params = _random_params(src, images)
  checkpoint.save_npz(params, tmp_path / 'm.npz')
  dst = _model(num_classes=7)
  init = _random_params(dst, _images((48, 48)), seed=7)
  restored = checkpoint.load_pretrained(pretrained_path=tmp_path / 'm.npz', init_params=init,
                                        model_config={'classifier': 'token', 'representation_size': None})
  flat, init_flat, src_flat = _flat(restored), _flat(init), _flat(params)
  for k in ('head/kernel', 'head/bias'):
    np.testing.assert_array_equal(flat[k], init_flat[k])
  assert flat[checkpoint.POSEMB_KEY].shape == (1, 1 + 36, 32)
  np.testing.assert_array_equal(flat[checkpoint.POSEMB_KEY][:, 0], src_flat[checkpoint.POSEMB_KEY][:, 0])
  for k in src_flat:
    if not k.startswith('head/') and k != checkpoint.POSEMB_KEY:
      np.testing.assert_array_equal(flat[k], src_flat[k], err_msg=k)
  assert dst.apply({'params': restored}, _images((48, 48)), train=False).shape == (2, 7)
