"""Checks the train-memory model of `vit_jax.perf.benchmarking.train_memory_model` against XLA's memory analysis.

  JAX_PLATFORMS=cpu python scripts/memory_check.py --model ViT-g_14 --depths 1,2 --batches 4,8 --remat none,full

Compiles (never runs) the gradient of the loss for two depths and two batches of a scaled-down model; the double
difference of XLA's temp bytes over depth and batch is the activation memory per layer and image, the number
`benchmarking.train_memory_model` extrapolates to the full depth and batch (the state term is exact: a test
counts the params). Prints one JSON line per remat policy and a table.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax.perf import benchmarking  # pylint: disable=g-import-not-at-top,wrong-import-position


def grad_temp_bytes(cfg: benchmarking.BenchConfig) -> float:
  """XLA temp bytes of value_and_grad(loss) alone: activations kept for the backward pass + workspace."""
  model = benchmarking.build_model(cfg)
  x = jax.ShapeDtypeStruct((cfg.batch, cfg.resolution, cfg.resolution, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((cfg.batch, cfg.num_classes), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False)['params'])

  def loss(p, x, y):
    logits = model.apply({'params': p}, x, train=False)
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), -1))
  m = jax.jit(jax.value_and_grad(loss)).lower(params, x, y).compile().memory_analysis()
  return float(m.temp_size_in_bytes)


def main() -> None:
  """Per-layer, per-image activation bytes: XLA (double difference over depth and batch) vs the model."""
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--model', default='ViT-g_14')
  p.add_argument('--depths', default='1,2')
  p.add_argument('--batches', default='4,8')
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--remat', default='none,full')
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--attention_impl', default='xla')
  args = p.parse_args()
  (l1, l2), (b1, b2) = ((int(v) for v in text.split(',')) for text in (args.depths, args.batches))
  rows = []
  for remat in args.remat.split(','):
    cfg = lambda depth, batch: benchmarking.BenchConfig(
        model=args.model, num_layers=depth, batch=batch, remat_policy=remat, resolution=args.resolution,
        dtype=args.dtype, attention_impl=args.attention_impl, mesh='data=1')
    temp = {(l, b): grad_temp_bytes(cfg(l, b)) for l in (l1, l2) for b in (b1, b2)}
    # Batch- and depth-independent terms (weights, their float32 copies, weight grads) cancel out.
    xla = (temp[l2, b2] - temp[l1, b2] - temp[l2, b1] + temp[l1, b1]) / ((l2 - l1) * (b2 - b1))
    model = [benchmarking.train_memory_model(cfg(l, b))['activation_bytes'] for l, b in ((l2, b2), (l1, b2))]
    predicted = (model[0] - model[1]) / ((l2 - l1) * b2)  # per layer and image (remat 'full': the kept part)
    row = {'remat': remat, 'xla_MB_per_layer_img': xla / 1e6, 'model_MB_per_layer_img': predicted / 1e6,
           'ratio': xla / predicted}
    rows.append(row)
    print(json.dumps(row), flush=True)
  print(f'\n{args.model} at {args.resolution} px, {args.dtype}, {args.attention_impl} attention, depths {l1},{l2}, '
        f'batches {b1},{b2}:')
  print('| remat | XLA MB / layer / image | model MB / layer / image | XLA / model |\n|---|---|---|---|')
  for r in rows:
    print(f'| {r["remat"]} | {r["xla_MB_per_layer_img"]:.2f} | {r["model_MB_per_layer_img"]:.2f} | '
          f'{r["ratio"]:.2f} |')


if __name__ == '__main__':
  main()
