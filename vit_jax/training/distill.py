"""Knowledge distillation as an `Objective` (`config.objective='distill'`): a frozen teacher's logits as targets.

The teacher (`vit_jax.training.teacher`) sees exactly the images the student sees, the batch already mixed on the
devices (mixup / cutmix, `vit_jax.data.mixing`): "function matching" (Beyer et al. 2022, "Knowledge distillation:
A good teacher is patient and consistent"). Its params arrive as the step's `frozen` argument, never differentiated.

Soft distillation (Hinton et al. 2015): the per-example loss is
    alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * label_loss(student, labels),
the T**2 keeping the gradient's scale independent of T. alpha = 1, T = 1 is the "patient and consistent" recipe;
DeiT's soft variant is alpha = 0.1, T = 3.

With DeiT's distillation token (`config.model.distill_token`; Touvron et al. 2021) the student has two heads: the
class head learns the labels and the distillation head the teacher's hard label (its argmax), mixed as
(1 - alpha) * label_loss(class head) + alpha * xent(distillation head, teacher argmax); DeiT's hard distillation
is alpha = 0.5 (T is unused). At evaluation the model averages the two heads' logits.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.training import losses
from vit_jax.training import objectives

Array = jax.Array


def kl_divergence(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
  """Per-example T**2 * KL(softmax(teacher / T) || softmax(student / T)), shape [B]."""
  log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  return temperature**2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def distill(model: nn.Module, teacher: nn.Module, loss_fn: losses.LossFn = losses.softmax_xent, *,
            temperature: float = 1., alpha: float = 1., distill_token: bool = False) -> objectives.Objective:
  """The batch mean of the module docstring's loss; `frozen` is the teacher's params."""

  def loss(params: Any, images: Array, labels: Array, rng: Array, frozen: Optional[Any] = None) -> Array:
    if frozen is None:
      raise ValueError('The distillation objective needs the teacher\'s params as the step\'s frozen argument.')
    teacher_logits = jax.lax.stop_gradient(teacher.apply({'params': frozen}, images, train=False))
    teacher_logits = teacher_logits.astype(jnp.float32)
    if distill_token:
      class_logits, distill_logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng},
                                                 distill_heads=True)
      hard = jax.nn.one_hot(jnp.argmax(teacher_logits, axis=-1), teacher_logits.shape[-1])
      per_example = alpha * losses.softmax_xent(distill_logits, hard)
      student_logits = class_logits
    else:
      student_logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
      per_example = alpha * kl_divergence(student_logits, teacher_logits, temperature)
    if alpha < 1:
      per_example = per_example + (1. - alpha) * loss_fn(student_logits, labels)
    return jnp.mean(per_example)

  return loss
