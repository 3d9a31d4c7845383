"""Losses and correctness counts against hand-computed numpy."""
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.training import losses

LOGITS = np.array([[2., 1., 0.1, -1.], [0.5, 0.5, 3., 0.]], np.float32)


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_softmax_xent_one_hot_and_soft():
  one_hot = np.eye(4, dtype=np.float32)[[0, 3]]
  want = -_np_log_softmax(LOGITS)[[0, 1], [0, 3]]
  np.testing.assert_allclose(losses.softmax_xent(LOGITS, one_hot), want, rtol=1e-6)
  soft = np.array([[0.7, 0.3, 0., 0.], [0.25, 0.25, 0.25, 0.25]], np.float32)
  want = -(soft * _np_log_softmax(LOGITS)).sum(-1)
  np.testing.assert_allclose(losses.softmax_xent(LOGITS, soft), want, rtol=1e-6)


def test_sigmoid_xent_sums_over_classes():
  labels = np.array([[1., 0., 1., 0.], [0., 0., 0., 1.]], np.float32)
  p = 1. / (1. + np.exp(-LOGITS.astype(np.float64)))
  want = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(-1)
  np.testing.assert_allclose(losses.sigmoid_xent(LOGITS, labels), want, rtol=1e-6)


def test_sigmoid_xent_stable_for_large_logits():
  logits = jnp.array([[100., -100.]])
  np.testing.assert_allclose(losses.sigmoid_xent(logits, jnp.array([[1., 0.]])), [0.], atol=1e-6)
  np.testing.assert_allclose(losses.sigmoid_xent(logits, jnp.array([[0., 1.]])), [200.], rtol=1e-6)


def test_topk_correct():
  # Row 0 ranks classes 0, 1, 2, 3; row 1 ranks 2, then 0/1 (tie), then 3.
  one_hot = np.eye(4, dtype=np.float32)[[1, 3]]
  np.testing.assert_array_equal(losses.topk_correct(LOGITS, one_hot, 1), [0., 0.])
  np.testing.assert_array_equal(losses.topk_correct(LOGITS, one_hot, 2), [1., 0.])
  np.testing.assert_array_equal(losses.topk_correct(LOGITS, one_hot, 5), [1., 1.])  # k clipped to 4 classes
  multi_hot = np.array([[0., 1., 0., 1.], [1., 0., 1., 0.]], np.float32)
  np.testing.assert_array_equal(losses.topk_correct(LOGITS, multi_hot, 1), [0., 1.])
  mixed = np.array([[0.4, 0.6, 0., 0.], [0., 0., 0., 0.]], np.float32)  # dominant class counts; no label: miss
  np.testing.assert_array_equal(losses.topk_correct(LOGITS, mixed, 1), [0., 0.])
  np.testing.assert_array_equal(losses.topk_correct(LOGITS, mixed, 2), [1., 0.])


def test_get_loss_fn():
  assert losses.get_loss_fn('sigmoid_xent') is losses.sigmoid_xent
  with pytest.raises(ValueError, match='config.loss'):
    losses.get_loss_fn('mse')
