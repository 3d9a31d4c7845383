"""Tests for vit_jax.fewshot: ridge few-shot and kNN on features with known answers, and the evaluator on digits."""
import numpy as np
import pytest

from vit_jax import fewshot as fewshot_cli
from vit_jax.data import pipeline
from vit_jax.evaluation import fewshot
from vit_jax.tools import inference
import tiny_checkpoint


def _separable(n_per_class, num_classes=10, dim=32, seed=0):
  """Each class a far-apart prototype plus small noise: linearly separable by construction."""
  rng = np.random.default_rng(seed)
  protos = rng.normal(size=(num_classes, dim)) * 3
  y = np.repeat(np.arange(num_classes), n_per_class)
  return protos[y] + 0.1 * rng.normal(size=(len(y), dim)), y


def test_ridge_primal_and_dual_agree():
  rng = np.random.default_rng(0)
  x, t = rng.normal(size=(6, 9)), rng.normal(size=(6, 3))
  dual = fewshot._ridge_weights(x, t, 2.)  # N < D: the dual form.
  primal = np.linalg.solve(x.T @ x + 2. * np.eye(9), x.T @ t)
  np.testing.assert_allclose(dual, primal, rtol=1e-8, atol=1e-10)


def test_separable_features_score_100_percent():
  train, test = _separable(30, seed=0), _separable(20, seed=0)
  test = (test[0] + 0.1 * np.random.default_rng(1).normal(size=test[0].shape), test[1])
  metrics = fewshot.evaluate_features(train, test, 10, num_draws=3, knn_k=(1, 10))
  assert set(metrics) == {'fewshot/1shot', 'fewshot/5shot', 'fewshot/10shot', 'fewshot/25shot', 'knn/k1',
                          'knn/k10'}
  assert all(v == 1.0 for v in metrics.values()), metrics


def test_random_labels_score_near_chance():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.normal(size=(1000, 32)), rng.normal(size=(2000, 32))
  train_y, test_y = rng.integers(0, 10, 1000), rng.integers(0, 10, 2000)
  metrics = fewshot.evaluate_features((train_x, train_y), (test_x, test_y), 10, num_draws=3, knn_k=(10,))
  for key, value in metrics.items():
    assert 0.05 < value < 0.16, (key, value)  # Chance is 0.1; 2000 test examples give a std of ~0.007.


def test_shots_are_distinct_and_balanced_and_unfillable_counts_skipped():
  labels = np.array([0] * 5 + [1] * 3)
  idx = fewshot.sample_shots(labels, 3, 2, np.random.default_rng(0))
  assert len(set(idx)) == 6 and np.bincount(labels[idx]).tolist() == [3, 3]
  x = np.random.default_rng(0).normal(size=(8, 4))
  assert set(fewshot.evaluate_features((x, labels), (x, labels), 2, shots=(1, 5), knn_k=())) == {'fewshot/1shot'}


@pytest.mark.slow
def test_evaluator_and_cli_on_digits(tmp_path, capsys):
  # Digits are 8x8: a 'mu/4' model sees them as a 2x2 grid. Even random features carry the digits' shape.
  path, model, params = tiny_checkpoint.save_checkpoint(str(tmp_path), size=8)
  evaluator = fewshot.FewShotEvaluator(model, 'digits', {'crop': 8}, shots=(1, 10), num_draws=2, knn_k=(5,))
  feats, labels, num_classes = evaluator.features(params, 'test')
  assert feats.shape == (297, 32) and num_classes == 10 and np.bincount(labels).min() > 20
  metrics = evaluator.run(params)
  assert set(metrics) == {'fewshot/digits/1shot', 'fewshot/digits/10shot', 'knn/digits/k5'}
  assert metrics['fewshot/digits/10shot'] > 0.3 and metrics['knn/digits/k5'] > 0.3  # Chance is 0.1.
  assert inference.run_cli(fewshot_cli.main, ['--model', tiny_checkpoint.MODEL, '--checkpoint', path, '--dataset',
                                          'digits', '--shots', '10', '--draws', '2', '--knn_k', '5',
                                          '--batch_size', '256']) == 0
  printed = dict(line.split() for line in capsys.readouterr().out.strip().split('\n'))
  assert float(printed['fewshot/digits/10shot']) == pytest.approx(metrics['fewshot/digits/10shot'], abs=1e-4)


# Not (-1, 1): an evaluator that ignored pp.value_range on the devices would give other features.
UINT8_PP = {'crop': 8, 'value_range': (0., 1.)}


@pytest.fixture(scope='module')
def uint8_features():
  """The evaluator's features of digits' test split, and the dtypes and shapes of every batch it handed to the
  devices: (model, params, (features, labels, num_classes), [{key: (dtype, shape)}, ...])."""
  model, params = tiny_checkpoint.random_params(size=8, num_classes=10)
  evaluator = fewshot.FewShotEvaluator(model, 'digits', UINT8_PP, batch_size=128)
  seen, apply = [], evaluator._apply

  def recorded(params, batch, *args):
    seen.append({k: (v.dtype.name, v.shape) for k, v in batch.items()})
    return apply(params, batch, *args)
  evaluator._apply = recorded
  return model, params, evaluator.features(params, 'test'), seen


def test_evaluator_hands_the_devices_uint8_images_and_int32_labels(uint8_features):
  *_, seen = uint8_features
  assert len(seen) == 3  # 297 test digits in global batches of 128
  assert all(s == {'image': ('uint8', (128, 8, 8, 3)), 'label': ('int32', (128,)), 'mask': ('float32', (128,)),
                   'id': ('int32', (128,))} for s in seen), seen


def test_features_from_uint8_batches_equal_the_host_float_path(uint8_features):
  model, params, (feats, labels, num_classes), _ = uint8_features
  features_model = model.clone(num_classes=0)
  ref_feats, ref_labels, ids = [], [], []
  for b in pipeline.make_eval_iterator('digits', UINT8_PP, global_batch=128, with_ids=True, uint8=False):
    keep = b['mask'] > 0  # float images in pp.value_range and one-hot rows, made on the host
    ref_feats.append(np.asarray(features_model.apply({'params': params}, b['image'], train=False))[keep])
    ref_labels.append(np.argmax(b['label'], axis=-1)[keep])
    ids.append(b['id'][keep])
  order = np.argsort(np.concatenate(ids))
  assert num_classes == 10 and feats.shape == (297, 32)
  np.testing.assert_array_equal(labels, np.concatenate(ref_labels)[order])
  # The two paths scale the pixels by the same formula, on the device and on the host: they may differ by an ulp
  # of the inputs, which a one-layer model carries to the features as float32 rounding.
  np.testing.assert_allclose(feats, np.concatenate(ref_feats)[order], rtol=1e-5, atol=1e-5)
