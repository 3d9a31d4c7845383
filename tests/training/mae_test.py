"""MAE: the loss against a numpy implementation, the visible-token encoder against full attention with a key mask,
the masks, exact resume, eval, fine-tuning from and exporting an MAE workdir."""
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loop_testlib as lib
from vit_jax import checkpoint
from vit_jax.export import export
from vit_jax.models import mae as mae_model
from vit_jax.models import vit
from vit_jax.tools import inference
from vit_jax.training import config_checks
from vit_jax.training import loop
from vit_jax.training import mae

P, IMG = 4, 16  # a 4x4 grid of patches


@pytest.fixture(scope='module')
def tiny():
  """(model, params, images): a 2-block MAE on 16x16 images, params perturbed so that no term hides behind an init
  zero (biases, LayerNorm, mask token)."""
  encoder = vit.VisionTransformer(num_classes=0, patches={'size': (P, P)}, hidden_size=16, classifier='token_unpooled',
                                  transformer={'num_layers': 2, 'num_heads': 2, 'mlp_dim': 24})
  model = mae_model.MaskedAutoencoder(encoder=encoder, mask_ratio=0.75, decoder_num_layers=1,
                                      decoder_hidden_size=8, decoder_num_heads=2)

  @jax.jit
  def make():
    images = jax.random.uniform(jax.random.PRNGKey(1), (3, IMG, IMG, 3), minval=-1, maxval=1)
    params = model.init({'params': jax.random.PRNGKey(0)}, images, train=False)['params']
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]), images

  params, images = make()
  return model, jax.tree.map(np.asarray, params), np.asarray(images, np.float64)


# ------------------------------------------------------------------ an independent numpy MAE (float64)
def _ln(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _block(x, p, key_mask=None):
  """Pre-LN block on (T, D); `key_mask` (T,) bool: keys that may be attended to."""
  a = p['MultiHeadDotProductAttention_0']
  y = _ln(x, p['LayerNorm_0'])
  q, k, v = (np.einsum('td,dhe->the', y, a[n]['kernel']) + a[n]['bias'] for n in ('query', 'key', 'value'))
  logits = np.einsum('qhe,khe->hqk', q, k) / math.sqrt(q.shape[-1])
  if key_mask is not None:
    logits = np.where(key_mask[None, None], logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  x = x + np.einsum('qhe,hed->qd', np.einsum('hqk,khe->qhe', w, v), a['out']['kernel']) + a['out']['bias']
  m = p['MlpBlock_0']
  h = _gelu(_ln(x, p['LayerNorm_1']) @ m['Dense_0']['kernel'] + m['Dense_0']['bias'])
  return x + h @ m['Dense_1']['kernel'] + m['Dense_1']['bias']


def _patches(img):
  """(H, W, C) -> (N, p*p*C), row-major patches, each (row, col, channel)."""
  g = img.shape[0] // P
  return np.stack([img[i * P:(i + 1) * P, j * P:(j + 1) * P].reshape(-1) for i in range(g) for j in range(g)])


def _np_tokens(params, img):
  """Class token + all patch tokens with position embeddings, (1 + N, D)."""
  kernel = params['embedding']['kernel'].reshape(-1, params['embedding']['kernel'].shape[-1])
  x = _patches(img) @ kernel + params['embedding']['bias']
  return np.concatenate([params['cls'][0], x]) + params['Transformer']['posembed_input']['pos_embedding'][0]


def _np_encoder(params, x, key_mask=None):
  t = params['Transformer']
  for i in range(2):
    x = _block(x, t[f'encoderblock_{i}'], key_mask)
  return _ln(x, t['encoder_norm'])


def _sincos(g, d):
  """2-D sin-cos embeddings: for each patch (row y, column x), [sin(x w), cos(x w), sin(y w), cos(y w)]."""
  w = 1. / 10_000 ** (np.arange(d // 4) / (d // 4 - 1))
  rows = []
  for y in range(g):
    for x in range(g):
      rows.append(np.concatenate([np.sin(x * w), np.cos(x * w), np.sin(y * w), np.cos(y * w)]))
  return np.stack(rows)


def _np_mae_loss(params, img, keep, norm_pix):
  """One example's MAE loss from scratch: visible-only encoder, decoder over mask tokens, MSE on masked patches."""
  n = (img.shape[0] // P) ** 2
  tokens = _np_tokens(params, img)
  enc = _np_encoder(params, np.concatenate([tokens[:1], tokens[1:][keep]]))
  d = params['decoder']
  x = enc @ d['embed']['kernel'] + d['embed']['bias']
  full = np.tile(d['mask_token'][0], (n, 1))
  full[keep] = x[1:]
  x = np.concatenate([x[:1], full + _sincos(img.shape[0] // P, x.shape[-1])])
  x = _ln(_block(x, d['Transformer']['encoderblock_0']), d['Transformer']['encoder_norm'])
  pred = (x @ d['pred']['kernel'] + d['pred']['bias'])[1:]
  target = _patches(img)
  if norm_pix:
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
  masked = np.setdiff1d(np.arange(n), keep)
  return np.mean((pred[masked] - target[masked]) ** 2)


@pytest.mark.parametrize('norm_pix', [True, False])
def test_mae_loss_matches_numpy(tiny, norm_pix):
  model, params, images = tiny
  rng = jax.random.PRNGKey(7)
  loss = jax.jit(mae.objective(model, norm_pix))(params, jnp.asarray(images, jnp.float32), None, rng)
  keep, _ = jax.jit(mae_model.random_masks, static_argnums=(1, 2, 3))(jax.random.split(rng)[0], 3, 16, 0.75)
  want = np.mean([_np_mae_loss(params, images[i], np.asarray(keep[i]), norm_pix) for i in range(3)])
  assert abs(float(loss) - want) < 1e-5, (float(loss), want)


def test_visible_token_encoder_equals_full_encoder_with_masked_keys(tiny):
  model, params, images = tiny
  keep, masked = mae_model.random_masks(jax.random.PRNGKey(3), 3, 16, 0.75)
  encode = jax.jit(lambda p, x, k: model.encoder.apply({'params': p}, x, train=False, keep=k))
  got = encode(params, jnp.asarray(images, jnp.float32), keep)
  for i in range(3):
    key_mask = np.concatenate([[True], ~np.asarray(masked[i])])  # the class token and the visible patches
    full = _np_encoder(params, _np_tokens(params, images[i]), key_mask)
    want = full[key_mask]  # outputs of the visible tokens
    np.testing.assert_allclose(np.asarray(got[i]), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_masks_exact_count_per_example_distinct_and_a_function_of_seed_and_step():
  def step_key(seed, step):  # the train step's micro-batch key: fold_in(fold_in(base, step), micro 0)
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step), 0)
  keep, masked = mae_model.random_masks(step_key(0, 5), 8, 196, 0.75)
  assert keep.shape == (8, 49) and np.all(np.sum(masked, axis=1) == 196 - 49)
  assert np.all(np.diff(np.asarray(keep), axis=1) > 0)  # distinct indices, ascending
  assert np.all(~np.take_along_axis(np.asarray(masked), np.asarray(keep), axis=1))
  assert len({tuple(k) for k in np.asarray(keep)}) == 8  # a different mask for each example
  again, _ = mae_model.random_masks(step_key(0, 5), 8, 196, 0.75)
  np.testing.assert_array_equal(keep, again)
  fewer, _ = mae_model.random_masks(step_key(0, 5), 3, 196, 0.75)  # example i's mask ignores the batch size
  np.testing.assert_array_equal(keep[:3], fewer)
  assert not np.array_equal(keep, mae_model.random_masks(step_key(0, 6), 8, 196, 0.75)[0])
  assert not np.array_equal(keep, mae_model.random_masks(step_key(1, 5), 8, 196, 0.75)[0])


@pytest.mark.parametrize('override,culprit', [
    ({'objective': 'mea'}, 'config.objective'),
    ({'objective': 'mae', 'model.mask_ratio': 1.0}, 'config.model.mask_ratio'),
    ({'objective': 'mae', 'model.mask_ratio': 0.0}, 'config.model.mask_ratio'),
])
def test_bad_objective_or_mask_ratio_is_one_line(override, culprit):
  with pytest.raises(config_checks.ConfigError, match=re.escape(culprit)) as e:
    config_checks.validate(lib.tiny_config(**{k.replace('.', '__'): v for k, v in override.items()}),
                           num_devices=8, check_data=False)
  assert '\n' not in str(e.value)


def test_hybrid_sees_no_masked_pixel_through_its_stem():
  """A hybrid's token is a 4x4-pixel square (stem stride 4, patch 1): whatever the masked squares hold, the
  prediction is the same bit for bit, while one visible pixel changes it."""
  encoder = vit.VisionTransformer(num_classes=0, patches={'size': (1, 1)}, hidden_size=16, classifier='unpooled',
                                  resnet={'num_layers': (1,), 'width_factor': 0.5},
                                  transformer={'num_layers': 1, 'num_heads': 2, 'mlp_dim': 24})
  model = mae_model.MaskedAutoencoder(encoder=encoder, mask_ratio=0.75, decoder_num_layers=1,
                                      decoder_hidden_size=8, decoder_num_heads=2)
  assert model.patch == 4
  images = jax.random.uniform(jax.random.PRNGKey(1), (2, IMG, IMG, 3), minval=-1, maxval=1)
  params = model.init({'params': jax.random.PRNGKey(0)}, images, train=False)['params']
  apply = jax.jit(lambda x: model.apply({'params': params}, x, train=False))  # the fixed eval masks
  pred, masked = apply(images)
  assert pred.shape == (2, 16, 4 * 4 * 3) and np.asarray(masked).sum() == 2 * 12
  # The masked squares' pixels, (B, 16, 16, 1), computed here rather than by the model's own helper.
  hidden = np.repeat(np.repeat(np.asarray(masked).reshape(2, 4, 4), 4, axis=1), 4, axis=2)[..., None]
  noise = jax.random.uniform(jax.random.PRNGKey(3), images.shape, minval=-1, maxval=1)
  np.testing.assert_array_equal(apply(jnp.where(hidden, noise, images))[0], pred)
  square = int(np.flatnonzero(~np.asarray(masked[0]))[0])  # a visible square of example 0
  row, col = 4 * (square // 4), 4 * (square % 4)
  assert np.abs(apply(images.at[0, row + 1, col + 1].add(0.5))[0][0] - pred[0]).max() > 1e-4


def test_hybrid_mae_validates():
  config = lib.load_config()  # the default preset: a ResNet stem
  config.objective = 'mae'
  config_checks.validate(config, num_devices=8, check_data=False)


MAE = {'objective': 'mae', 'pp.mixup': 0., 'model.decoder_num_layers': 1, 'model.decoder_hidden_size': 8,
       'model.decoder_num_heads': 2, 'model.mask_ratio': 0.5}


def mae_config(**overrides):
  return lib.apply(lib.tiny_config(**overrides), MAE)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """An uninterrupted in-process MAE run of the tiny config: (workdir, final metrics)."""
  workdir = str(tmp_path_factory.mktemp('mae'))
  return workdir, loop.train_and_evaluate(mae_config(total_steps=24), workdir)


@pytest.mark.slow
def test_mae_run_reports_the_reconstruction_loss_and_no_accuracy(pretrained):
  _, final = pretrained
  assert 0 < final['val/loss'] < 10 and not any('top' in k for k in final), final
  losses = lib.train_losses(pretrained[0])
  assert sorted(losses) == list(range(1, 25)) and losses[24] < losses[1]


@pytest.mark.slow
def test_mae_exact_resume_after_sigkill(pretrained, tmp_path):
  """Killed from outside once a checkpoint is on disk, then run to the end: every loss (the redone steps' too)
  bit-identical to the uninterrupted run's."""
  ref_dir, _ = pretrained
  workdir = str(tmp_path / 'killed')
  overrides = {**MAE, 'total_steps': 24}
  lib.run_main_killed(workdir, overrides, after_checkpoint=6)
  done = lib.run_main(workdir, overrides)
  assert done.returncode == 0 and 'Resumed from step' in done.stdout, done.stderr[-2000:]
  assert lib.train_losses(workdir) == lib.train_losses(ref_dir)


@pytest.mark.slow
def test_model_init_from_an_mae_workdir_takes_the_encoder_and_export_writes_it_alone(pretrained, tmp_path, capsys):
  ref_dir, _ = pretrained
  encoder = inference.load_params(ref_dir)
  assert 'decoder' not in encoder and 'head' not in encoder and 'posembed_input' in encoder['Transformer']
  npz = export(ref_dir, str(tmp_path / 'encoder.npz'))
  jax.tree.map(np.testing.assert_array_equal, checkpoint.load(npz), encoder)  # an ordinary ViT .npz
  # Fine-tune with lr 0: after one step the params are the MAE encoder's, with a fresh (zero) head.
  workdir = str(tmp_path / 'finetune')
  loop.train_and_evaluate(lib.tiny_config(model_init=ref_dir, base_lr=0., warmup_steps=0, decay_type='constant',
                                          total_steps=1, optim__layer_decay=0.75), workdir)
  assert f'Initialised the params from {ref_dir}.' in capsys.readouterr().out
  tuned = inference.load_params(workdir)
  assert not np.any(tuned.pop('head')['kernel'])
  jax.tree.map(np.testing.assert_array_equal, tuned, encoder)
  assert os.path.exists(npz)
