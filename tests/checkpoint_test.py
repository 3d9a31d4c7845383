"""Tests for vit_jax.checkpoint: published and big_vision layouts, round trip, load_pretrained, timm cross-check."""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

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


def _random_params(model, images, seed=1):
  """Random non-zero float32 params for every leaf, head included, scaled by fan-in like a real initialisation."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1], train=False)['params'])
  rng = np.random.RandomState(seed)

  def draw(key, leaf):
    shape = leaf.shape
    if key.endswith('/scale'):
      # The last norm of a residual branch is small, as after training from its zero init.
      value = 0.1 * rng.normal(size=shape) if '/gn3/' in key else 1 + 0.2 * rng.normal(size=shape)
    elif '/conv' in key or key.startswith('conv'):
      # Weight-standardised, so the scale does not change the function; a large one makes the eps of the
      # standardisation (std + 1e-5 here, sqrt(var + 1e-8) in timm) vanish.
      value = 1e3 * rng.normal(size=shape)
    elif key.endswith('/kernel'):
      fan_in = shape[0] if re.search(r'/(query|key|value)/kernel$', key) else np.prod(shape[:-1])
      value = rng.normal(size=shape) / np.sqrt(fan_in)
    else:  # biases, class token, position embeddings, MAP probe
      value = 0.2 * rng.normal(size=shape)
    return value.astype(np.float32)

  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  return flax.traverse_util.unflatten_dict({k: draw(k, v) for k, v in flat.items()}, sep='/')


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _assert_trees_equal(a, b):
  a, b = _flat(a), _flat(b)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k


def _logits(model, images, *params):
  """Logits for each param tree, from one compiled program (op-by-op dispatch is slow to compile on CPU)."""
  apply = jax.jit(lambda p: model.apply({'params': p}, images, train=False))
  outs = [np.asarray(apply(p)) for p in params]
  return outs if len(outs) > 1 else outs[0]


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
  ours, theirs = _logits(model, images, loaded, params)
  np.testing.assert_array_equal(ours, theirs)


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


@pytest.mark.slow
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
  params_10 = _random_params(models.VisionTransformer(num_classes=10, **cfg), images, seed=3)
  params = checkpoint.load_pretrained(pretrained_path='ViT-B_16.npz', init_params=params_10, model_config=cfg)
  # ---
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, base.apply({'params': checkpoint.load('ViT-B_16.npz')}, images, train=False))
  assert np.abs(np.asarray(logits)).max() > 0.1
  np.testing.assert_array_equal(params['head']['kernel'], params_10['head']['kernel'])
  np.testing.assert_array_equal(params['embedding']['kernel'], checkpoint.load('ViT-B_16.npz')['embedding']['kernel'])
  # The reference's posemb helper keeps its name.
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_array_equal(checkpoint.interpolate_posembed(posemb, 1 + 9, True),
                                checkpoint.resample_posemb(posemb, (3, 3), 1))


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
  np.testing.assert_array_equal(flat[checkpoint.POSEMB_KEY],
                                checkpoint.resample_posemb(src_flat[checkpoint.POSEMB_KEY], (6, 6), 1))
  for k in src_flat:
    if not k.startswith('head/') and k != checkpoint.POSEMB_KEY:
      np.testing.assert_array_equal(flat[k], src_flat[k], err_msg=k)


# --------------------------------------------------------------------------- cross-check against timm (PyTorch)


def _timm_logits(path, images, *, hidden, depth, heads, mlp_dim, patch, num_classes, global_pool, class_token,
                 hybrid_layers=None, no_embed_class=False):
  """timm's VisionTransformer with the published numerics, reading `path` with timm's npz reader.

  It runs in a subprocess (tests/timm_reference.py): PyTorch beside the TensorFlow that TFDS tests import can crash.
  """
  for module in ('torch', 'timm'):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f'{module} is not installed (pip install -r requirements-test.txt)')
  tmp = pathlib.Path(path).parent
  np.save(tmp / 'timm_images.npy', images)
  spec = {'npz': str(path), 'images': str(tmp / 'timm_images.npy'), 'out': str(tmp / 'timm_logits.npy'),
          'hybrid_layers': hybrid_layers,
          'kwargs': dict(patch_size=patch, num_classes=num_classes, global_pool=global_pool, embed_dim=hidden,
                         depth=depth, num_heads=heads, mlp_ratio=mlp_dim / hidden, class_token=class_token,
                         no_embed_class=no_embed_class)}
  (tmp / 'timm_spec.json').write_text(json.dumps(spec))
  script = pathlib.Path(__file__).with_name('timm_reference.py')
  subprocess.run([sys.executable, str(script), str(tmp / 'timm_spec.json')], check=True)
  return np.load(tmp / 'timm_logits.npy')


@pytest.mark.slow
@pytest.mark.parametrize('classifier,global_pool', [('token', 'token'), ('gap', 'avg'), ('map', 'map')])
def test_logits_match_timm(tmp_path, classifier, global_pool):
  model, images = _model(classifier=classifier), _images((32, 32))
  params = _random_params(model, images)
  checkpoint.save_npz(params, tmp_path / 'm.npz')
  theirs = _timm_logits(tmp_path / 'm.npz', images, hidden=32, depth=2, heads=4, mlp_dim=128, patch=8,
                        num_classes=5, global_pool=global_pool, class_token=classifier == 'token')
  ours = _logits(model, images, params)
  diff = np.abs(ours - theirs).max()
  print(f'timm {classifier}: max |logit diff| {diff:.3g} (max |logit| {np.abs(ours).max():.3g})')
  assert np.abs(ours).max() > 0.5  # non-trivial logits
  assert diff <= 1e-5


@pytest.mark.slow
def test_representation_size_logits_match_timm_trunk(tmp_path):
  # timm's ViT has no representation layer (its npz reader skips pre_logits), so timm computes the pooled features
  # and the pre_logits Dense + tanh and the head are applied here from the saved file.
  model, images = _model(representation_size=16), _images((32, 32))
  params = _random_params(model, images)
  checkpoint.save_npz(params, tmp_path / 'm.npz')
  features = _timm_logits(tmp_path / 'm.npz', images, hidden=32, depth=2, heads=4, mlp_dim=128, patch=8,
                          num_classes=0, global_pool='token', class_token=True)
  with np.load(tmp_path / 'm.npz') as f:
    pre_logits = np.tanh(features @ f['pre_logits/kernel'] + f['pre_logits/bias'])
    theirs = pre_logits @ f['head/kernel'] + f['head/bias']
  ours = _logits(model, images, params)
  diff = np.abs(ours - theirs).max()
  print(f'timm trunk + numpy pre_logits/head: max |logit diff| {diff:.3g} (max |logit| {np.abs(ours).max():.3g})')
  assert np.abs(ours).max() > 0.5
  assert diff <= 1e-5


@pytest.mark.slow
def test_hybrid_logits_match_timm(tmp_path):
  """R26+ViT-S/32 (the published ResNet-26 root, 2 of the 12 transformer blocks) at 64 px against timm's hybrid."""
  model = models.get_model('R26+ViT-S_32', num_classes=5, transformer={'num_layers': 2})
  images = _images((64, 64))
  params = _random_params(model, images)
  checkpoint.save_npz(params, tmp_path / 'm.npz')
  theirs = _timm_logits(tmp_path / 'm.npz', images, hidden=384, depth=2, heads=6, mlp_dim=1536, patch=1,
                        num_classes=5, global_pool='token', class_token=True, hybrid_layers=(2, 2, 2, 2))
  ours = _logits(model, images, params)
  diff = np.abs(ours - theirs).max()
  print(f'timm R26+ViT-S/32: max |logit diff| {diff:.3g} (max |logit| {np.abs(ours).max():.3g})')
  assert np.abs(ours).max() > 0.5
  assert diff <= 1e-5


# ------------------------------------------------------------------------------------------- big_vision layouts


def _big_vision_flat(params, scanned):
  """Our params in big_vision's layout, by hand: `params/` prefix, top-level pos_embedding without a class-token
  slot, optionally scanned blocks."""
  flat = {k: np.asarray(v) for k, v in _flat(params).items()}
  pe = flat.pop(checkpoint.POSEMB_KEY)
  flat['pos_embedding'] = pe[:, 1:] if 'cls' in flat else pe
  if scanned:
    blocks = sorted({k.split('/')[1] for k in flat if k.startswith('Transformer/encoderblock_')})
    subs = sorted({k.split('/', 2)[2] for k in flat if k.startswith('Transformer/encoderblock_0/')})
    for sub in subs:
      flat[f'Transformer/encoderblock/{sub}'] = np.stack([flat.pop(f'Transformer/{b}/{sub}') for b in blocks])
  return {f'params/{k}': v for k, v in flat.items()}


@pytest.mark.slow
@pytest.mark.parametrize('classifier,scanned', [('token', True), ('map', False)])
def test_load_big_vision_layouts(tmp_path, classifier, scanned):
  model, images = _model(classifier=classifier), _images((32, 32))
  params = _random_params(model, images)
  if classifier == 'token':  # big_vision adds no position embedding to the class token
    params['Transformer']['posembed_input']['pos_embedding'][:, 0] = 0
  np.savez(tmp_path / 'bv.npz', **_big_vision_flat(params, scanned))
  with np.load(tmp_path / 'bv.npz') as f:
    assert ('params/Transformer/encoderblock/LayerNorm_0/scale' in f.files) == scanned
  loaded = checkpoint.load(tmp_path / 'bv.npz')
  _assert_trees_equal(loaded, params)
  # timm reads big_vision files as big_vision means them (its no_embed_class: no position embedding on cls).
  theirs = _timm_logits(tmp_path / 'bv.npz', images, hidden=32, depth=2, heads=4, mlp_dim=128, patch=8,
                        num_classes=5, global_pool='token' if classifier == 'token' else 'map',
                        class_token=classifier == 'token', no_embed_class=True)
  diff = np.abs(_logits(model, images, loaded) - theirs).max()
  print(f'timm big_vision {classifier} scanned={scanned}: max |logit diff| {diff:.3g}')
  assert diff <= 1e-5


def test_save_scanned_params_writes_looped_published_layout(tmp_path):
  model, images = _model(scan=True), _images((32, 32))
  params = _random_params(model, images)
  assert params['Transformer']['encoderblock']['LayerNorm_0']['scale'].shape == (2, 32)
  checkpoint.save_npz(params, tmp_path / 'm.npz')
  looped = {k: v for k, v in params.items() if k != 'Transformer'}
  looped['Transformer'] = {k: v for k, v in params['Transformer'].items() if k != 'encoderblock'}
  for i in range(2):
    stacked = params['Transformer']['encoderblock']
    looped['Transformer'][f'encoderblock_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  with np.load(tmp_path / 'm.npz') as f:
    assert sorted(f.files) == PUBLISHED_KEYS
    for k, v in _published_flat(looped).items():
      np.testing.assert_array_equal(f[k], v, err_msg=k)


def test_groupnorm_stored_as_1x1x1xc_is_squeezed(tmp_path):
  model = _model(patch=2, resnet={'num_layers': (1,), 'width_factor': 0.5})
  params = _random_params(model, _images((32, 32)))
  flat = _published_flat(params)
  gn_keys = [k for k in flat if re.search(r'(gn_root|gn\d|gn_proj)/(scale|bias)$', k)]
  assert len(gn_keys) == 2 * 5  # gn_root + unit1's gn1, gn2, gn3, gn_proj
  np.savez(tmp_path / 'old.npz', **{k: v.reshape(1, 1, 1, -1) if k in gn_keys else v for k, v in flat.items()})
  with np.load(tmp_path / 'old.npz') as f:
    assert f['gn_root/scale'].shape == (1, 1, 1, 32)
  _assert_trees_equal(checkpoint.load(tmp_path / 'old.npz'), params)


def test_load_accepts_prefixes_file_objects_and_bfloat16(tmp_path):
  ml_dtypes = pytest.importorskip('ml_dtypes')
  model, images = _model(), _images((32, 32))
  params = _random_params(model, images)
  flat = {f'opt/target/{k}': v.astype(ml_dtypes.bfloat16) for k, v in _published_flat(params).items()}
  np.savez(tmp_path / 'bf16.npz', **flat)
  with open(tmp_path / 'bf16.npz', 'rb') as f:
    loaded = checkpoint.load(f)
  expected = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  _assert_trees_equal(loaded, expected)


def test_load_errors_are_one_clear_line(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.npz not found'):
    checkpoint.load(tmp_path / 'nope.npz')
  np.save(tmp_path / 'single.npy', np.zeros(3))
  with pytest.raises(ValueError, match='single array'):
    checkpoint.load(tmp_path / 'single.npy')
  (tmp_path / 'junk.npz').write_bytes(b'not a zip file at all')
  with pytest.raises(ValueError, match='Cannot read checkpoint'):
    checkpoint.load(tmp_path / 'junk.npz')
  np.savez(tmp_path / 'other.npz', **{'conv1/kernel': np.zeros(3)})
  with pytest.raises(ValueError, match='not a ViT checkpoint') as e:
    checkpoint.load(tmp_path / 'other.npz')
  assert '\n' not in str(e.value)


def test_save_is_atomic(tmp_path, monkeypatch):
  model, images = _model(), _images((32, 32))
  path = tmp_path / 'm.npz'
  checkpoint.save_npz(_random_params(model, images, seed=1), path)
  before = path.read_bytes()

  def crash(f, **arrays):
    f.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(np, 'savez', crash)
  with pytest.raises(OSError, match='disk full'):
    checkpoint.save_npz(_random_params(model, images, seed=2), path)
  assert path.read_bytes() == before and os.listdir(tmp_path) == ['m.npz']


# ------------------------------------------------------------------------------------------------ load_pretrained


def _pretrained(tmp_path, src_model, dst_model, src_size=(32, 32), dst_size=(32, 32), config=None, **kwargs):
  """Saves random params of src_model, load_pretrained()s them into random init params of dst_model."""
  src = _random_params(src_model, _images(src_size), seed=1)
  init = _random_params(dst_model, _images(dst_size), seed=2)
  checkpoint.save_npz(src, tmp_path / 'src.npz')
  config = config or {'classifier': dst_model.classifier, 'representation_size': dst_model.representation_size,
                      'transformer': dst_model.transformer}
  restored = checkpoint.load_pretrained(pretrained_path=tmp_path / 'src.npz', init_params=init,
                                        model_config=config, **kwargs)
  return _flat(src), _flat(init), _flat(restored)


def _assert_from(restored, source, keys):
  for k in keys:
    np.testing.assert_array_equal(restored[k], source[k], err_msg=k)


def test_load_pretrained_head(tmp_path):
  src, init, out = _pretrained(tmp_path, _model(num_classes=5), _model(num_classes=5))
  _assert_from(out, src, src)  # same head: kept
  src, init, out = _pretrained(tmp_path, _model(num_classes=5), _model(num_classes=5), reset_head=True)
  _assert_from(out, init, ['head/kernel', 'head/bias'])
  _assert_from(out, src, [k for k in src if not k.startswith('head/')])
  with pytest.raises(ValueError, match='reset_head=False'):
    _pretrained(tmp_path, _model(num_classes=5), _model(num_classes=7), reset_head=False)
  src, init, out = _pretrained(tmp_path, _model(num_classes=5), _model(num_classes=0))  # features only
  assert sorted(out) == sorted(k for k in src if not k.startswith('head/'))


def test_load_pretrained_drops_or_keeps_pre_logits(tmp_path):
  src, init, out = _pretrained(tmp_path, _model(num_classes=5, representation_size=16), _model(num_classes=7))
  assert not any(k.startswith('pre_logits/') for k in out) and sorted(out) == sorted(init)
  _assert_from(out, init, ['head/kernel', 'head/bias'])
  _assert_from(out, src, [k for k in init if not k.startswith('head/')])
  src, init, out = _pretrained(tmp_path, _model(num_classes=5, representation_size=16),
                               _model(num_classes=7, representation_size=16))
  _assert_from(out, src, ['pre_logits/kernel', 'pre_logits/bias'])
  _assert_from(out, init, ['head/kernel', 'head/bias'])
  with pytest.raises(ValueError, match='representation_size=None but init_params have pre_logits'):
    _pretrained(tmp_path, _model(), _model(representation_size=16), config={'representation_size': None})


def test_load_pretrained_scanned_and_boxed_targets(tmp_path):
  src_model, images = _model(), _images((32, 32))
  src = _random_params(src_model, images)
  checkpoint.save_npz(src, tmp_path / 'src.npz')
  dst = _model(num_classes=7, scan=True)
  # Boxed (logically partitioned) like models.init_with_axes's output, with random values.
  rng = np.random.RandomState(3)
  boxed = jax.eval_shape(lambda: models.init_with_axes(dst, jax.random.key(0), images[:1], train=False)['params'])
  boxed = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), boxed)
  out = checkpoint.load_pretrained(pretrained_path=tmp_path / 'src.npz', init_params=boxed,
                                   model_config={'classifier': 'token', 'representation_size': None})
  assert nn.get_partition_spec(out) == nn.get_partition_spec(boxed)
  out = nn.meta.unbox(out)
  np.testing.assert_array_equal(out['Transformer']['encoderblock']['MlpBlock_0']['Dense_0']['kernel'], np.stack(
      [src['Transformer'][f'encoderblock_{i}']['MlpBlock_0']['Dense_0']['kernel'] for i in range(2)]))
  np.testing.assert_array_equal(out['head']['kernel'], nn.meta.unbox(boxed)['head']['kernel'])
  # Abstract init params (jax.eval_shape) work when nothing needs re-initialising, and say so when it does.
  abstract = jax.eval_shape(lambda: src_model.init(jax.random.key(0), images[:1], train=False))
  out = checkpoint.load_pretrained(pretrained_path=tmp_path / 'src.npz', init_params=abstract['params'],
                                   model_config={'classifier': 'token', 'representation_size': None})
  _assert_trees_equal(out, src)
  abstract = jax.eval_shape(lambda: dst.init(jax.random.key(0), images[:1], train=False))
  with pytest.raises(ValueError, match='abstract'):
    checkpoint.load_pretrained(pretrained_path=tmp_path / 'src.npz', init_params=abstract['params'],
                               model_config={'classifier': 'token', 'representation_size': None})


def test_load_pretrained_resamples_posemb_to_non_square_grid(tmp_path):
  src, init, out = _pretrained(tmp_path, _model(), _model(), dst_size=(48, 80), new_grid=(6, 10))
  pe = out[checkpoint.POSEMB_KEY]
  assert pe.shape == (1, 1 + 60, 32)
  expected = checkpoint.resample_posemb(src[checkpoint.POSEMB_KEY], (6, 10), 1)
  np.testing.assert_array_equal(pe, expected)
  with pytest.raises(ValueError, match=r'pass new_grid=\(h, w\)'):
    _pretrained(tmp_path, _model(), _model(), dst_size=(48, 80))
  # Same number of positions, other arrangement: 4x4 -> 2x8 is still resampled.
  src, init, out = _pretrained(tmp_path, _model(), _model(), dst_size=(16, 64), new_grid=(2, 8))
  np.testing.assert_array_equal(out[checkpoint.POSEMB_KEY],
                                checkpoint.resample_posemb(src[checkpoint.POSEMB_KEY], (2, 8), 1))
  assert not np.array_equal(out[checkpoint.POSEMB_KEY], src[checkpoint.POSEMB_KEY])


def test_load_pretrained_mismatch_is_one_error_naming_the_keys(tmp_path):
  with pytest.raises(ValueError) as e:
    _pretrained(tmp_path, _model(), _model(transformer={**TINY['transformer'], 'num_layers': 3}))
  msg = str(e.value)
  assert '\n' not in msg
  assert 'missing 16: [Transformer/encoderblock_2/LayerNorm_0/bias' in msg
  assert 'the checkpoint has 2 encoder blocks, the model 3' in msg and 'wrong model name' in msg
  with pytest.raises(ValueError) as e:
    _pretrained(tmp_path, _model(), _model(hidden_size=48, classifier='gap'))
  msg = str(e.value)
  assert 'unexpected 1: [cls]' in msg
  assert 'Transformer/encoder_norm/bias (32,) vs model (48,)' in msg
  assert 'hidden size 32 in the checkpoint, 48 in the model' in msg
  assert 'the checkpoint has class token, the model has none' in msg
  assert 'mis-shaped' in msg and 'missing' not in msg
  with pytest.raises(ValueError, match="classifier='gap' but init_params have a class token"):
    _pretrained(tmp_path, _model(), _model(), config={'classifier': 'gap', 'representation_size': None,
                                                       'transformer': {}})


# ---------------------------------------------------------------------------------------------- resample_posemb


@pytest.mark.parametrize('prefix,old,new', [(1, (14, 14), (24, 24)), (0, (14, 14), (24, 24)),
                                            (1, (14, 14), (12, 20)), (0, (6, 8), (9, 5))])
def test_resample_posemb_shapes_and_linear_ramps(prefix, old, new):
  """A grid linear in (row, col) stays linear, with corners mapped to corners (scipy.ndimage.zoom, order=1)."""
  (gh, gw), (nh, nw), dim = old, new, 3
  rng = np.random.RandomState(0)
  a, b, c = rng.normal(size=(3, dim))
  rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing='ij')
  grid = rows[..., None] * a + cols[..., None] * b + c
  tokens = rng.normal(size=(1, prefix, dim))
  posemb = np.concatenate([tokens, grid.reshape(1, gh * gw, dim)], axis=1).astype(np.float32)
  out = checkpoint.resample_posemb(posemb, new, prefix, old_grid=None if gh == gw else old)
  assert out.shape == (1, prefix + nh * nw, dim) and out.dtype == np.float32
  np.testing.assert_array_equal(out[:, :prefix], posemb[:, :prefix])
  rows, cols = np.meshgrid(np.arange(nh) * (gh - 1) / (nh - 1), np.arange(nw) * (gw - 1) / (nw - 1), indexing='ij')
  expected = rows[..., None] * a + cols[..., None] * b + c
  np.testing.assert_allclose(out[0, prefix:].reshape(nh, nw, dim), expected, atol=1e-5)


def test_resample_posemb_is_bilinear_and_identity_at_same_size():
  rng = np.random.RandomState(0)
  posemb = rng.normal(size=(1, 1 + 5 * 7, 2)).astype(np.float32)
  np.testing.assert_array_equal(checkpoint.resample_posemb(posemb, (5, 7), 1, old_grid=(5, 7)), posemb)
  # Against bilinear interpolation with aligned corners, written out.
  grid, (nh, nw) = posemb[0, 1:].reshape(5, 7, 2), (9, 4)
  ys, xs = np.arange(nh) * 4 / (nh - 1), np.arange(nw) * 6 / (nw - 1)
  y0, x0 = np.minimum(ys.astype(int), 3), np.minimum(xs.astype(int), 5)
  wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
  bottom = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
  expected = top * (1 - wy) + bottom * wy
  out = checkpoint.resample_posemb(posemb, (nh, nw), 1, old_grid=(5, 7))
  np.testing.assert_allclose(out[0, 1:].reshape(nh, nw, 2), expected, atol=1e-5)
  with pytest.raises(ValueError, match=r'not a square grid; pass old_grid=\(h, w\)'):
    checkpoint.resample_posemb(posemb, (6, 6), 1)


def test_load_linen_layout_as_written_by_the_reference_save(tmp_path):
  """google-research/vision_transformer's own `save` writes its Linen tree as is (Linen numbering, posembed_input)."""
  model, images = _model(), _images((32, 32))
  params = _random_params(model, images)
  np.savez(tmp_path / 'linen.npz', **{k: np.asarray(v) for k, v in _flat(params).items()})
  _assert_trees_equal(checkpoint.load(tmp_path / 'linen.npz'), params)


# ------------------------------------------------------------------------------ FlexiViT patch-embedding resize


def _bilinear_matrix(old, new):
  """The bilinear (half-pixel centres, no antialias) resize of an old x old patch to new x new, as a matrix,
  written out from the interpolation weights (independent of jax.image.resize)."""
  def weights_1d(n_old, n_new):
    m = np.zeros((n_new, n_old))
    for i in range(n_new):
      src = np.clip((i + 0.5) * n_old / n_new - 0.5, 0, n_old - 1)
      lo = int(np.floor(src))
      hi = min(lo + 1, n_old - 1)
      m[i, lo] += 1 - (src - lo)
      m[i, hi] += src - lo
    return m
  w = weights_1d(old, new)
  return np.kron(w, w)  # (new*new, old*old): rows and columns resized separately


@pytest.mark.parametrize('old,new', [(8, 16), (4, 6), (8, 12)])
def test_pi_resize_preserves_the_patch_embedding_of_upsampled_patches(old, new):
  rng = np.random.RandomState(0)
  kernel = rng.normal(size=(old, old, 3, 5)).astype(np.float32)
  resized = checkpoint.resample_patchemb(kernel, (new, new))
  assert resized.shape == (new, new, 3, 5)
  b = _bilinear_matrix(old, new)
  x = rng.normal(size=(old * old, 3))                 # a patch, pixels x channels
  x_up = b @ x                                        # the same patch bilinearly upsampled
  ours = np.einsum('pc,pcd->d', x, kernel.reshape(old * old, 3, 5))
  theirs = np.einsum('pc,pcd->d', x_up, resized.reshape(new * new, 3, 5).astype(np.float64))
  np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(checkpoint.resample_patchemb(kernel, (old, old)), kernel)


def test_load_pretrained_into_another_patch_size(tmp_path):
  # 32 px: patch 8 (4x4 grid) -> patch 4 (8x8 grid); the position embeddings follow the grid.
  src, init, out = _pretrained(tmp_path, _model(patch=8), _model(patch=4))
  assert out['embedding/kernel'].shape == (4, 4, 3, 32)
  np.testing.assert_array_equal(out['embedding/kernel'], checkpoint.resample_patchemb(src['embedding/kernel'], (4, 4)))
  np.testing.assert_array_equal(out[checkpoint.POSEMB_KEY],
                                checkpoint.resample_posemb(src[checkpoint.POSEMB_KEY], (8, 8), 1))
  for k in src:
    if k not in ('embedding/kernel', checkpoint.POSEMB_KEY):
      np.testing.assert_array_equal(out[k], src[k], err_msg=k)


def test_new_options_round_trip_through_npz_and_load_pretrained(tmp_path):
  """Registers, LayerScale and QK-norm params survive save_npz / load; load_pretrained resamples around registers."""
  options = dict(num_registers=2, layer_scale_init=0.1, qk_norm=True, use_bias=False)
  model, images = _model(**options), _images((32, 32))
  params = _random_params(model, images)
  checkpoint.save_npz(params, tmp_path / 'm.npz')
  with np.load(tmp_path / 'm.npz') as f:
    assert {'reg', 'Transformer/encoderblock_0/LayerScale_1/scale',
            'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query_norm/scale'} <= set(f.files)
  _assert_trees_equal(checkpoint.load(tmp_path / 'm.npz'), params)
  src, init, out = _pretrained(tmp_path, _model(**options), _model(**options), dst_size=(48, 48))
  pe = out[checkpoint.POSEMB_KEY]
  assert pe.shape == (1, 1 + 2 + 36, 32)
  np.testing.assert_array_equal(pe, checkpoint.resample_posemb(src[checkpoint.POSEMB_KEY], (6, 6), 3))
