"""google-research/vision_transformer's `vit_jax.utils`, as its colabs call it: the learning-rate schedule (ours,
`vit_jax.training.optim.make_schedule`, the same formula), gradient accumulation and a log file in the workdir."""
import logging
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
from etils import epath

from vit_jax.training import optim


def create_learning_rate_schedule(total_steps: int, base: float, decay_type: str, warmup_steps: int,
                                  linear_end: float = 1e-5) -> Callable[[Any], jax.Array]:
  """lr(step): linear warmup to `base` over `warmup_steps`, then 'cosine' or 'linear' decay to `total_steps`."""
  return optim.make_schedule(dict(base_lr=base, total_steps=total_steps, decay_type=decay_type,
                                  warmup_steps=warmup_steps, linear_end=linear_end))


def accumulate_gradient(loss_and_grad_fn: Callable[..., Tuple[Any, Any]], params: Any, images: jax.Array,
                        labels: jax.Array, accum_steps: int) -> Tuple[Any, Any]:
  """(loss, grads) of `loss_and_grad_fn(params, images, labels)` averaged over `accum_steps` consecutive slices of
  the batch, computed one slice at a time (a fraction of the activation memory)."""
  if not accum_steps or accum_steps == 1:
    return loss_and_grad_fn(params, images, labels)
  if images.shape[0] % accum_steps:
    raise ValueError(f'Batch size {images.shape[0]} is not divisible by accum_steps={accum_steps}.')
  split = lambda x: x.reshape((accum_steps, -1) + x.shape[1:])

  def add(total, micro):
    loss, grads = loss_and_grad_fn(params, *micro)
    return jax.tree.map(jnp.add, total, (loss, grads)), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(loss_and_grad_fn, params, *map(
      lambda x: x[:x.shape[0] // accum_steps], (images, labels))))
  total, _ = jax.lax.scan(add, zeros, (split(images), split(labels)))
  return jax.tree.map(lambda x: x / accum_steps, total)


def add_gfile_logger(workdir: str, *, basename: str = 'train', level: int = logging.INFO) -> logging.Handler:
  """Appends the Python log to `<workdir>/<basename>.log` (local paths; a bucket cannot be appended to)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  handler = logging.FileHandler(f'{workdir}/{basename}.log', mode='a')
  handler.setLevel(level)
  logging.getLogger('').addHandler(handler)
  return handler
