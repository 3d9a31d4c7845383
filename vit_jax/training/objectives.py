"""Training objectives: what one (micro-)batch's loss is, given the params, the finished batch and a key.

An `Objective` is `loss(params, images, labels, rng, frozen) -> scalar`: the batch mean that the train step
differentiates with respect to `params`. `images` are float images in the model's value range and `labels` the
(smoothed, mixed) targets, both finished on the devices (`vit_jax.data.mixing`); `rng` is the micro-batch's key
(`fold_in(fold_in(state.rng, step), micro)`), so whatever an objective draws from it (dropout, masks) is a function
of (seed, step) and a resumed run stays exact; `frozen` is what the step was handed besides the state and is never
differentiated (a distillation teacher's params), None when there is nothing.

`classification` is the supervised loss every preset trains with; other objectives live in their own modules and
are picked by `config.objective` in the loop.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.training import losses

Array = jax.Array
Objective = Callable[[Any, Array, Array, Array, Optional[Any]], Array]


def classification(model: nn.Module, loss_fn: losses.LossFn = losses.softmax_xent) -> Objective:
  """The mean of `loss_fn(model(images), labels)`, dropout drawn from `rng`."""

  def loss(params: Any, images: Array, labels: Array, rng: Array, frozen: Optional[Any] = None) -> Array:
    del frozen
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    return jnp.mean(loss_fn(logits, labels))

  return loss
