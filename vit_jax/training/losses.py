"""Classification losses and correctness counts on logits (B, C) and float targets (B, C).

Every loss returns one value per example (B,); callers take the mean over the batch (train) or the masked sum
(eval), so padding and gradient accumulation stay the caller's business.
"""
from typing import Callable, Dict

import jax
import jax.numpy as jnp

Array = jax.Array
LossFn = Callable[[Array, Array], Array]


def softmax_xent(logits: Array, labels: Array) -> Array:
  """Softmax cross-entropy per example, -sum_c labels_c log softmax(logits)_c; labels one-hot or soft."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(labels * logp, axis=-1)


def sigmoid_xent(logits: Array, labels: Array) -> Array:
  """Sigmoid (multi-label) cross-entropy per example, SUMMED over classes as in big_vision.

  Summing (not averaging) over the classes keeps the loss scale, and so the learning rate, of big_vision's
  ImageNet-21k recipes; the per-class mean would be this divided by C.
  """
  logits = logits.astype(jnp.float32)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  return -jnp.sum(labels * log_p + (1. - labels) * log_not_p, axis=-1)


LOSSES: Dict[str, LossFn] = {'softmax_xent': softmax_xent, 'sigmoid_xent': sigmoid_xent}


def get_loss_fn(name: str) -> LossFn:
  """The per-example loss registered as `name` ('softmax_xent' or 'sigmoid_xent')."""
  if name not in LOSSES:
    raise ValueError(f'Unknown loss {name!r}; set config.loss to one of {", ".join(LOSSES)}.')
  return LOSSES[name]


def topk_correct(logits: Array, labels: Array, k: int = 1) -> Array:
  """1. where one of the k highest logits is a class with the example's highest (positive) label, else 0.

  For one-hot labels this is top-k accuracy; for multi-hot labels (ImageNet-21k) it is big_vision's prec@k
  (a top-k prediction is one of the true labels); for mixed labels the dominant class counts. k is clipped to
  the number of classes.
  """
  k = min(k, logits.shape[-1])
  _, idx = jax.lax.top_k(logits, k)
  picked = jnp.take_along_axis(labels, idx, axis=-1)
  best = jnp.max(labels, axis=-1, keepdims=True)
  hit = jnp.any((picked == best) & (best > 0), axis=-1)
  return hit.astype(jnp.float32)
