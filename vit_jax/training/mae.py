"""The MAE objective: mean squared error of the predicted pixels on the masked patches (`config.objective='mae'`).

Targets are the image's patches in the model's value range, flattened (row, column, channel) within a patch, patches
in row-major order; with `norm_pix_loss` each patch is normalised by its own mean and variance (population
variance, eps 1e-6) as in the paper. Masks come from the objective's key (a function of seed, step, micro-batch
and example index: `models.mae.random_masks`), so a resumed run draws the same masks.
"""
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp

from vit_jax.data import mixing
from vit_jax.models import mae as mae_model
from vit_jax.training import objectives
from vit_jax.training import sharding as sharding_lib

Array = jax.Array


def patchify(images: Array, patch: int) -> Array:
  """(B, H, W, C) -> (B, H/p * W/p, p*p*C), patches row-major, each flattened (row, column, channel)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def targets(images: Array, patch: int, norm_pix_loss: bool) -> Array:
  """The pixels each patch must reconstruct, per-patch normalised when `norm_pix_loss`."""
  t = patchify(images.astype(jnp.float32), patch)
  if norm_pix_loss:
    mean = t.mean(axis=-1, keepdims=True)
    var = t.var(axis=-1, keepdims=True)
    t = (t - mean) / jnp.sqrt(var + 1e-6)
  return t


def per_example_loss(pred: Array, target: Array, masked: Array) -> Array:
  """(B,) mean over each example's masked patches of the per-patch mean squared error."""
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  m = masked.astype(jnp.float32)
  return jnp.sum(per_patch * m, axis=1) / jnp.sum(m, axis=1)


def objective(model: mae_model.MaskedAutoencoder, norm_pix_loss: bool = True) -> objectives.Objective:
  """The batch mean of `per_example_loss`; masks and dropout drawn from the micro-batch's key, labels unused."""

  def loss(params: Any, images: Array, labels: Array, rng: Array, frozen: Optional[Any] = None) -> Array:
    del labels, frozen
    mask_rng, dropout_rng = jax.random.split(rng)
    pred, masked = model.apply({'params': params}, images, train=True, mask_rng=mask_rng,
                               rngs={'dropout': dropout_rng})
    return jnp.mean(per_example_loss(pred, targets(images, model.patch, norm_pix_loss), masked))

  return loss


def make_eval_step(model: mae_model.MaskedAutoencoder, norm_pix_loss: bool = True, *,
                   mesh: Optional[jax.sharding.Mesh] = None, rules: Any = None,
                   batch_ops: Optional[mixing.BatchOps] = None) -> Callable[[Any, Dict[str, Array]], Dict[str, Array]]:
  """eval_step(params, batch) -> {'loss_sum', 'count'}: the reconstruction loss of the real examples under the
  fixed eval masks (the same at every evaluation, so evaluations compare)."""

  def eval_step(params: Any, batch: Dict[str, Array]) -> Dict[str, Array]:
    if batch_ops is not None:
      batch = mixing.eval_batch(batch, batch_ops)
    images = batch['image']
    with sharding_lib.axis_rules(mesh, rules):
      pred, masked = model.apply({'params': params}, images, train=False)
    per_example = per_example_loss(pred, targets(images, model.patch, norm_pix_loss), masked)
    weight = batch['mask'].astype(jnp.float32) if 'mask' in batch else jnp.ones(images.shape[:1], jnp.float32)
    return {'loss_sum': jnp.sum(per_example * weight), 'count': jnp.sum(weight)}

  return eval_step
