"""Tests for vit_jax.data.mixing: the devices' batch stage equals the host's former one.

The `_old_*` functions below are the host mixing that vit_jax.data.preprocess did before it moved to the devices
(mix_partner, mixup, cutmix, mix_batch's draws), kept here as the reference: given the same lam, box and pairs the
formulas agree exactly, and the draws agree in distribution.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vit_jax.data import mixing
from vit_jax.data import preprocess


# ---------------------------------------------------------------------------- the former host mixing (reference)
def _old_partner(x):
  return np.roll(x, len(x) // 2, axis=0)


def _old_mixup(batch, lam):
  lam = np.float32(lam)
  return {k: lam * batch[k] + (1 - lam) * _old_partner(batch[k]) for k in ('image', 'label')}


def _old_box(lam, cy, cx, h, w):
  ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
  return max(cy - ch // 2, 0), min(cy + ch - ch // 2, h), max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)


def _old_cutmix(batch, lam, cy, cx):
  img = batch['image']
  _, h, w, _ = img.shape
  y0, y1, x0, x1 = _old_box(lam, cy, cx, h, w)
  out = img.copy()
  out[:, y0:y1, x0:x1] = _old_partner(img)[:, y0:y1, x0:x1]
  kept = np.float32(1 - (y1 - y0) * (x1 - x0) / (h * w))
  return {'image': out, 'label': kept * batch['label'] + (1 - kept) * _old_partner(batch['label'])}


def _old_label_weight(rng, pp, h, w):
  """The label weight mix_batch drew for one batch: 1 unmixed, lam for mixup, the kept area for cutmix."""
  alphas = [(k, pp[k]) for k in ('mixup', 'cutmix') if pp.get(k)]
  if not alphas or rng.random() >= pp.get('mix_prob', 1.):
    return 'none', 1.
  kind, alpha = alphas[int(rng.integers(0, len(alphas)))]
  lam = rng.beta(alpha, alpha)
  if kind == 'mixup':
    return kind, float(np.float32(lam))
  y0, y1, x0, x1 = _old_box(lam, int(rng.integers(0, h)), int(rng.integers(0, w)), h, w)
  return kind, 1 - (y1 - y0) * (x1 - x0) / (h * w)


def _host_batch(n=8, size=6, k=5, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          'label': rng.integers(0, k, n).astype(np.int32)}


# ------------------------------------------------------------------------------------------------------ tests
def test_targets_equal_the_host_labels_one_hot_and_packed_multi_hot():
  labels = np.array([0, 4, 2, 4], np.int32)
  for s in (0., 0.1):
    got = np.asarray(mixing.targets(jnp.asarray(labels), 5, s))
    np.testing.assert_array_equal(got, preprocess.dense_labels(labels, 5, s))
    np.testing.assert_allclose(got.sum(1), 1, rtol=1e-6)
  np.testing.assert_allclose(preprocess.dense_labels(labels, 5, 0.1)[0], [0.92, 0.02, 0.02, 0.02, 0.02], rtol=1e-6)
  sets = [[0, 3], [], [9], list(range(10))]
  bits = np.stack([preprocess.label_bits(s, 10) for s in sets])
  assert bits.dtype == np.uint8 and bits.shape == (4, 2)  # 10 classes in 2 bytes
  want = np.zeros((4, 10), np.float32)
  for i, s in enumerate(sets):
    want[i, s] = 1
  np.testing.assert_array_equal(np.asarray(mixing.targets(jnp.asarray(bits), 10)), want)
  np.testing.assert_allclose(np.asarray(mixing.targets(jnp.asarray(bits), 10, 0.2)), want * 0.8 + 0.1, rtol=1e-6)
  np.testing.assert_array_equal(preprocess.dense_labels(bits, 10, 0.2), np.asarray(mixing.targets(bits, 10, 0.2)))


@pytest.mark.parametrize('processes', [1, 2, 4])
def test_partners_are_stream_positions_half_a_global_batch_apart_for_any_process_count(processes):
  # Process p holds stream positions p, p + P, ...; the global array stacks the processes' shares in order.
  b = 16
  stream = np.arange(b)
  global_rows = np.concatenate([stream[p::processes] for p in range(processes)])
  got = np.asarray(mixing.partner(jnp.asarray(global_rows), processes))
  np.testing.assert_array_equal(got, (global_rows + b // 2) % b)
  # Each share's partners are the former host's roll of that share.
  for p in range(processes):
    share = slice(p * b // processes, (p + 1) * b // processes)
    np.testing.assert_array_equal(got[share], _old_partner(global_rows[share]))
  odd = np.arange(6)  # 3 per process: rolled by 1, as the host did
  np.testing.assert_array_equal(np.asarray(mixing.partner(jnp.asarray(odd), 2)), [2, 0, 1, 5, 3, 4])


def test_mix_formula_equals_the_former_host_mixup_and_cutmix():
  raw = _host_batch(size=12)
  h, w = 12, 12
  host = {'image': preprocess.value_range(raw['image']), 'label': preprocess.dense_labels(raw['label'], 5)}
  part = {k: _old_partner(v) for k, v in host.items()}
  rng = np.random.default_rng(3)
  for lam in np.float32(rng.uniform(0, 1, 20)):
    want = _old_mixup(host, lam)
    got = mixing.mix(host['image'], part['image'], host['label'], part['label'], jnp.full((h, w), lam), lam)
    np.testing.assert_array_equal(np.asarray(got[0]), want['image'])
    np.testing.assert_array_equal(np.asarray(got[1]), want['label'])
  for _ in range(50):
    lam, cy, cx = np.float32(rng.uniform()), int(rng.integers(0, h)), int(rng.integers(0, w))
    want = _old_cutmix(host, float(lam), cy, cx)
    pixel, label = mixing.cutmix_weights(lam, cy, cx, h, w)
    got = mixing.mix(host['image'], part['image'], host['label'], part['label'], pixel, label)
    np.testing.assert_array_equal(np.asarray(got[0]), want['image'])  # pixels are copied: bit-exact
    # The kept fraction is computed in float32 here, in float64 then rounded there: within an ulp of 1.
    np.testing.assert_allclose(np.asarray(got[1]), want['label'], rtol=0, atol=2 ** -23)


@pytest.mark.slow  # compiling Beta samplers: ~10 s on a busy 2-core machine
def test_mixed_batches_match_the_former_host_draws_in_distribution():
  n, h, w = 4000, 32, 32
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  configs = ({'mixup': 0.5}, {'cutmix': 1.}, {'mixup': 0.8, 'cutmix': 1., 'mix_prob': 0.6})
  draws = jax.jit(lambda ks: [jax.vmap(lambda k, c=c: mixing.sample_mix(
      k, mixing.BatchOps(num_classes=10, **c), h, w))(ks) for c in configs])(keys)  # one compilation

  def label_weights(**pp):
    pixel, label = draws[configs.index(pp)]
    return np.asarray(pixel), np.asarray(label)

  def old_weights(**pp):
    rng = np.random.default_rng(0)
    return [_old_label_weight(rng, pp, h, w) for _ in range(n)]

  # Kolmogorov-Smirnov at the 0.1% level (c = 1.95): n = 4000 draws, one sample against Beta and two samples.
  one_sample, two_sample = 1.95 / math.sqrt(n), 1.95 * math.sqrt(2 / n)
  _, lam = label_weights(mixup=0.5)  # the AugReg preset's
  assert stats.kstest(lam, stats.beta(0.5, 0.5).cdf).statistic < one_sample
  old = np.array([v for _, v in old_weights(mixup=0.5)])
  assert stats.ks_2samp(lam, old).statistic < two_sample
  pixel, kept = label_weights(cutmix=1.)
  old = np.array([v for _, v in old_weights(cutmix=1.)])
  assert stats.ks_2samp(kept, old).statistic < two_sample
  np.testing.assert_allclose(kept, pixel.mean(axis=(1, 2)), rtol=1e-6)  # labels mix by the box's actual area
  # Both on, mixed with probability 0.6: each kind's share within 4 standard errors of its probability.
  pixel, label = label_weights(mixup=0.8, cutmix=1., mix_prob=0.6)
  none = np.all(pixel == 1, axis=(1, 2)) & (label == 1)
  cut = np.any(pixel == 0, axis=(1, 2))
  kinds = {'none': none.mean(), 'cutmix': cut.mean(), 'mixup': (~none & ~cut).mean()}
  old = [k for k, _ in old_weights(mixup=0.8, cutmix=1., mix_prob=0.6)]
  for kind, p in (('none', 0.4), ('mixup', 0.3), ('cutmix', 0.3)):
    tol = 4 * math.sqrt(p * (1 - p) / n)
    assert abs(kinds[kind] - p) < tol, (kind, kinds[kind])
    assert abs(old.count(kind) / n - p) < tol, kind


@pytest.mark.slow
def test_train_batch_is_the_former_host_formula_with_the_drawn_weights():
  raw = _host_batch(n=8, size=10, seed=1)
  ops = mixing.BatchOps(num_classes=5, value_range=(0., 1.), label_smoothing=0.1, mixup=0.5, cutmix=1.)
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  got, (pixels, labels) = jax.jit(jax.vmap(
      lambda k: (mixing.train_batch(raw, k, ops), mixing.sample_mix(k, ops, 10, 10))))(keys)
  assert got['image'].dtype == jnp.float32 and got['label'].shape == (6, 8, 5)
  x = preprocess.value_range(raw['image'], 0., 1.)
  y = preprocess.dense_labels(raw['label'], 5, 0.1)
  assert len({float(v) for v in labels}) == 6  # six different mixes
  for i, (pixel, label) in enumerate(zip(np.asarray(pixels), np.asarray(labels))):
    w = pixel[None, :, :, None]
    np.testing.assert_allclose(np.asarray(got['image'][i]), w * x + (1 - w) * _old_partner(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got['label'][i]), label * y + (1 - label) * _old_partner(y), rtol=0,
                               atol=1e-6)


def test_eval_batch_equals_the_host_finish():
  raw = {**_host_batch(n=8, size=6, seed=2), 'mask': np.ones(8, np.float32)}
  pp = {'value_range': (-1., 1.), 'label_smoothing': 0.3, 'mixup': 1.}  # eval neither smooths nor mixes
  got = jax.jit(lambda b: mixing.eval_batch(b, mixing.BatchOps.from_pp(pp, 5)))(raw)
  want = preprocess.finish_batch(raw, pp, 5)
  np.testing.assert_allclose(np.asarray(got['image']), want['image'], rtol=0, atol=1e-6)  # an FMA may fuse
  np.testing.assert_array_equal(np.asarray(got['label']), want['label'])
  np.testing.assert_array_equal(np.asarray(got['mask']), raw['mask'])


def test_sigmoid_xent_over_21k_classes_from_integer_labels():
  """ImageNet-21k's loss from int32 labels on the devices: the targets of the former dense host rows."""
  from vit_jax.training import losses  # pylint: disable=g-import-not-at-top
  k = 21_843
  labels = np.array([0, 21_842, 5, 5], np.int32)
  logits = np.random.default_rng(0).normal(size=(4, k)).astype(np.float32)
  dense = preprocess.dense_labels(labels, k, 0.1)
  got = jax.jit(lambda z, y: losses.sigmoid_xent(z, mixing.targets(y, k, 0.1)))(logits, labels)
  np.testing.assert_allclose(np.asarray(got), np.asarray(losses.sigmoid_xent(logits, dense)), rtol=1e-6)
