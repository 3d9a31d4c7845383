"""Representation quality of a ViT: few-shot linear evaluation (closed-form ridge regression) and kNN on the
pre-logits features, as in the ViT paper and big_vision's fewshot evaluator.

The command line is `python -m vit_jax.fewshot` (vit_jax/fewshot.py).

Few-shot: for each shot count and each of `num_draws` random draws, `shots` training examples per class; features
whitened with the draw's mean and std, a constant bias feature appended, targets in {-1, 1}, and the ridge
solution (X^T X + l2 I)^-1 X^T Y (or its dual when there are fewer examples than features) classifies the whole
test split; the metric is the mean test accuracy over draws. kNN: cosine similarity to every training example,
majority vote of the k nearest.

During training: `FewShotEvaluator(model, 'digits', pp).run(params)` returns the same metrics as a dict.
"""
import logging
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.data import mixing
from vit_jax.training import sharding


BIAS_FEATURE = 100.  # Large, so the bias is hardly regularised (as in big_vision).
DEFAULT_SHOTS = (1, 5, 10, 25)


# ------------------------------------------------------------------------------------------------ few-shot
def _ridge_weights(x: np.ndarray, t: np.ndarray, l2_reg: float) -> np.ndarray:
  """argmin_w |x w - t|^2 + l2_reg |w|^2, by the primal (N >= D) or dual (N < D) normal equations."""
  n, d = x.shape
  if n >= d:
    return np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ t)
  return x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), t)


def ridge_fewshot_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                           num_classes: int, l2_reg: float = 2.**10) -> float:
  """Test accuracy of the closed-form ridge-regression classifier fitted on (train_x, train_y)."""
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-5
  whiten = lambda x: np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_FEATURE)
  targets = 2. * np.eye(num_classes)[np.asarray(train_y)] - 1.
  w = _ridge_weights(whiten(train_x), targets, l2_reg)
  return float(np.mean(np.argmax(whiten(test_x) @ w, axis=-1) == np.asarray(test_y)))


def sample_shots(labels: np.ndarray, shots: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of `shots` distinct examples of every class, or a ValueError naming a class that has fewer."""
  picks = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) < shots:
      raise ValueError(f'Class {c} has {len(members)} training examples, fewer than {shots} shots.')
    picks.append(rng.choice(members, shots, replace=False))
  return np.concatenate(picks)


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int, k: int = 10, chunk: int = 1024) -> float:
  """Test accuracy of a k-nearest-neighbour majority vote under cosine similarity (ties: the more similar)."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  train_x, test_x = unit(np.asarray(train_x, np.float32)), unit(np.asarray(test_x, np.float32))
  train_y = np.asarray(train_y)
  k = min(k, len(train_y))
  correct = 0
  for start in range(0, len(test_x), chunk):
    sim = test_x[start:start + chunk] @ train_x.T
    nearest = np.argpartition(-sim, k - 1, axis=-1)[:, :k]
    near_sim = np.take_along_axis(sim, nearest, axis=-1)
    votes = np.zeros((len(sim), num_classes))
    rows = np.arange(len(sim))[:, None]
    np.add.at(votes, (rows, train_y[nearest]), 1. + 1e-3 * near_sim)  # Similarity only breaks ties.
    correct += int(np.sum(np.argmax(votes, axis=-1) == np.asarray(test_y)[start:start + chunk]))
  return correct / len(test_x)


def evaluate_features(train: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                      num_classes: int, *, shots: Sequence[int] = DEFAULT_SHOTS, num_draws: int = 5,
                      l2_reg: float = 2.**10, knn_k: Sequence[int] = (10,), seed: int = 0,
                      name: str = '') -> Dict[str, float]:
  """{'fewshot/[name/]{n}shot': mean accuracy over draws, ..., 'knn/[name/]k{k}': accuracy} from features.

  Shot counts that some class cannot fill are left out (with a log line), so small datasets still report.
  The draws are a function of (seed, shots).
  """
  (train_x, train_y), (test_x, test_y) = train, test
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  tag = f'{name}/' if name else ''
  metrics = {}
  for n in shots:
    rng = np.random.default_rng([seed, n])  # The draws of n shots do not depend on the other shot counts.
    try:
      draws = [sample_shots(train_y, n, num_classes, rng) for _ in range(num_draws)]
    except ValueError as e:
      logging.warning('Skipping %d-shot evaluation: %s', n, e)
      continue
    accs = [ridge_fewshot_accuracy(train_x[i], train_y[i], test_x, test_y, num_classes, l2_reg) for i in draws]
    metrics[f'fewshot/{tag}{n}shot'] = float(np.mean(accs))
  for k in knn_k:
    metrics[f'knn/{tag}k{k}'] = knn_accuracy(train_x, train_y, test_x, test_y, num_classes, k)
  return metrics


# ------------------------------------------------------------------------------------------------ features
def _eval_batches(dataset: str, pp: Mapping[str, Any], split: str, batch_size: int,
                  data_dir: Optional[str]) -> Tuple[Iterator[Dict[str, np.ndarray]], int]:
  """(this process's share of `split` in padded batches of uint8 images, integer labels, a `mask` and the example
  `id`; the number of classes). The devices finish the batches (`mixing.eval_batch`), as in the eval step."""
  from vit_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  it = input_pipeline.make_eval_iterator(dataset, {**pp, 'test': split}, global_batch=batch_size,
                                         data_dir=data_dir, with_ids=True, uint8=True)
  return ({**batch, 'id': batch['id'].astype(np.int32)} for batch in it), it.num_classes


class FewShotEvaluator:
  """Few-shot ridge and kNN evaluation of a model's pre-logits features on one dataset.

  `model`: the (classifier) VisionTransformer being trained; its features come from the same module with
  `num_classes=0`, applied to the same params. `pp`: the data pipeline's preprocessing section; `pp['crop']` must
  be the model's resolution. Training examples come from `train_split` (default `pp['train']`), test examples
  from `test_split` (default `pp['test']`), both with eval preprocessing. `mesh`: the batches are global arrays
  sharded over its data axes, as in the eval step (default: all devices along one axis); `batch_size` is global.
  As in the eval step, only uint8 images and integer labels cross to the devices, which scale the pixels to
  `pp['value_range']` (`mixing.eval_batch`).
  """

  def __init__(self, model, dataset: str, pp: Mapping[str, Any], *, train_split: Optional[str] = None,
               test_split: Optional[str] = None, batch_size: int = 256, shots: Sequence[int] = DEFAULT_SHOTS,
               num_draws: int = 5, l2_reg: float = 2.**10, knn_k: Sequence[int] = (10,), seed: int = 0,
               data_dir: Optional[str] = None, name: Optional[str] = None,
               mesh: Optional[jax.sharding.Mesh] = None):
    self.features_model = model.clone(num_classes=0)
    self.dataset, self.pp, self.data_dir = dataset, dict(pp), data_dir
    self.train_split = train_split or self.pp.get('train', 'train')
    self.test_split = test_split or self.pp.get('test', 'test')
    self.batch_size = batch_size
    self.options = dict(shots=tuple(shots), num_draws=num_draws, l2_reg=l2_reg, knn_k=tuple(knn_k), seed=seed,
                        name=dataset if name is None else name)
    self.mesh = sharding.make_mesh({'data': -1}) if mesh is None else mesh

    def apply(params, batch, batch_ops: mixing.BatchOps):
      batch = mixing.eval_batch(batch, batch_ops)  # uint8 -> pp.value_range, labels -> one-/multi-hot rows
      feats = self.features_model.apply({'params': params}, batch['image'], train=False)
      return feats, jnp.argmax(batch['label'], axis=-1), batch['mask'] > 0, batch['id']
    # Replicated outputs: XLA gathers every process's examples, so each process reads all of them.
    self._apply = jax.jit(apply, static_argnums=2, out_shardings=sharding.replicated(self.mesh))

  def features(self, params: Any, split: str) -> Tuple[np.ndarray, np.ndarray, int]:
    """(features, integer labels, number of classes) of every example of `split` in split order, on every
    process."""
    from vit_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
    batches, num_classes = _eval_batches(self.dataset, self.pp, split, self.batch_size, self.data_dir)
    batch_ops = mixing.BatchOps.from_pp(self.pp, num_classes)
    outs = []
    for batch in input_pipeline.prefetch_to_mesh(batches, sharding.batch_sharding(self.mesh)):
      outs.append([np.asarray(x.addressable_data(0)) for x in self._apply(params, batch, batch_ops)])
    feats, labels, masks, ids = (np.concatenate(x) for x in zip(*outs))
    order = np.argsort(ids[masks])  # Each process read its own examples: back to the split's order.
    return feats[masks][order], labels[masks][order], num_classes

  def run(self, params: Any) -> Dict[str, float]:
    """The few-shot and kNN metrics of `params` (see `evaluate_features`)."""
    train_x, train_y, num_classes = self.features(params, self.train_split)
    test_x, test_y, _ = self.features(params, self.test_split)
    return evaluate_features((train_x, train_y), (test_x, test_y), num_classes, **self.options)


def evaluate_all(evaluators: Sequence[FewShotEvaluator], state: Any) -> Dict[str, float]:
  """Every evaluator's metrics of the raw params, plus 'fewshot_ema/...', 'knn_ema/...' of the EMA params when the
  state has them (as classification's 'val/' and 'val_ema/')."""
  out = {k: v for e in evaluators for k, v in e.run(state.params).items()}
  if getattr(state, 'ema_params', None) is not None:
    out.update({k.replace('/', '_ema/', 1): v for e in evaluators for k, v in e.run(state.ema_params).items()})
  return out
