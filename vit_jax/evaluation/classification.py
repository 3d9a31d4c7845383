"""Evaluation over a padded, masked eval iterator: loss, top-1, top-5, every example counted exactly once."""
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp


def evaluate(eval_step: Callable[[Any, Mapping[str, jax.Array]], Dict[str, jax.Array]], params: Any,
             batches: Iterable[Mapping[str, jax.Array]], what: str = 'config.pp.test') -> Dict[str, float]:
  """{'loss', 'top1', 'top5', 'count'} over `batches` (global arrays with 'mask'), from `eval_step`'s sums.

  Every sum the step returns becomes its mean per example ('loss_sum' -> 'loss'), so a step without top-k counts
  (MAE's reconstruction loss) reports just its loss.

  Sums stay on the device until the end, so there is one host transfer per evaluation, not per batch. `what`
  names the split's setting in the errors.
  """
  totals = None
  for batch in batches:
    sums = eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError(f'The eval split is empty: check {what}.')
  totals = jax.device_get(totals)
  count = float(totals['count'])
  if count <= 0:
    raise ValueError(f'The eval split has no unmasked example: check {what}.')
  means = {k.removesuffix('_sum'): float(v) / count for k, v in totals.items() if k != 'count'}
  return {**means, 'count': count}


def evaluate_all(eval_step: Callable[..., Dict[str, jax.Array]], state: Any,
                 make_batches: Callable[[], Iterable[Mapping[str, jax.Array]]], prefix: str = 'val',
                 what: str = 'config.pp.test') -> Dict[str, float]:
  """'<prefix>/...' metrics of the raw params, plus '<prefix>_ema/...' of the EMA params when the state has them."""
  out = {f'{prefix}/{k}': v for k, v in evaluate(eval_step, state.params, make_batches(), what).items()
         if k != 'count'}
  if getattr(state, 'ema_params', None) is not None:
    ema = evaluate(eval_step, state.ema_params, make_batches(), what)
    out.update({f'{prefix}_ema/{k}': v for k, v in ema.items() if k != 'count'})
  return out


def evaluate_params(model: Any, params: Any, dataset: str, pp: Mapping[str, Any], *, batch_size: int,
                    data_dir: Optional[str] = None, loss: str = 'softmax_xent',
                    what: str = '--split') -> Dict[str, float]:
  """`evaluate` of `model` with host `params` on a dataset split (pp['test']), batches sharded over all devices."""
  from vit_jax.data import mixing  # pylint: disable=g-import-not-at-top  (only this entry reads data)
  from vit_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from vit_jax.training import losses  # pylint: disable=g-import-not-at-top
  from vit_jax.training import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_step  # pylint: disable=g-import-not-at-top
  num_classes = pipeline.get_dataset_info(dataset, pp, data_dir=data_dir).num_classes
  if num_classes != model.num_classes:
    raise ValueError(f'{dataset!r} has {num_classes} classes but the model {model.num_classes}; evaluate it on a '
                     'dataset with its label space.')
  mesh = sharding.make_mesh({'data': -1})
  replicated = sharding.replicated(mesh)
  # uint8 images and integer labels cross to the devices; the eval step scales them and makes the targets.
  batch_ops = mixing.BatchOps.from_pp(pp, num_classes)
  eval_step = jax.jit(train_step.make_eval_step(model, losses.get_loss_fn(loss), batch_ops=batch_ops),
                      out_shardings=replicated)
  params = jax.device_put(params, replicated)
  batches = pipeline.prefetch_to_mesh(
      pipeline.make_eval_iterator(dataset, pp, global_batch=batch_size, data_dir=data_dir, uint8=True),
      sharding.batch_sharding(mesh))
  try:
    return evaluate(eval_step, params, batches, what)
  finally:
    batches.close()
