"""Host cost of a training batch: what the pipeline's batch stage and the synthetic source spend per batch.

  python scripts/bench_feed.py [--batch 512] [--crop 224] [--classes 1000 21843] [--steps 5] [--device]

For each number of classes it times `next()` of the training iterator exactly as the loop builds it
(`make_train_iterator(..., uint8=True)`, one process) on the 'synthetic' source, without and with mixup 0.5
(the AugReg preset's), and prints milliseconds of wall time and of this process's CPU time per batch, and the
bytes per batch that cross to the devices. The mixup row minus the plain row is what mixing costs the host.
`--device` also times what replaced the host's work: the jitted `mixing.train_batch` (value range, targets,
mixup) on a device-resident batch, on JAX's default backend (one device).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(pp: dict, batch: int, steps: int) -> dict:
  """ms (wall and CPU) per batch and bytes per batch of the synthetic training iterator under `pp`."""
  from vit_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  it = pipeline.make_train_iterator('synthetic', pp, global_batch=batch, seed=0, process_index=0,
                                    process_count=1, uint8=True)
  first = next(it)  # Anything made once (a pool) is paid here, not per batch.
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  nbytes = sum(np.asarray(v).nbytes for v in first.values())
  dtypes = {k: str(np.asarray(v).dtype) for k, v in first.items()}
  return {'wall_ms': 1e3 * wall / steps, 'cpu_ms': 1e3 * cpu / steps, 'MB': nbytes / 1e6, 'dtypes': dtypes}


def measure_device(batch: int, crop: int, classes: int, steps: int) -> float:
  """ms per batch of the devices' batch stage (mixing.train_batch with mixup 0.5) on JAX's default backend."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.data import mixing  # pylint: disable=g-import-not-at-top
  ops = mixing.BatchOps(num_classes=classes, mixup=0.5)
  rng = np.random.default_rng(0)
  raw = jax.device_put({'image': rng.integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8),
                        'label': rng.integers(0, classes, batch).astype(np.int32)})
  fn = jax.jit(lambda b, k: mixing.train_batch(b, k, ops))
  jax.block_until_ready(fn(raw, jax.random.PRNGKey(0)))
  start = time.perf_counter()
  for i in range(steps):
    out = fn(raw, jax.random.PRNGKey(i))
  jax.block_until_ready(out)
  return 1e3 * (time.perf_counter() - start) / steps


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, default=512)
  p.add_argument('--crop', type=int, default=224)
  p.add_argument('--classes', type=int, nargs='+', default=[1000, 21843])
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--device', action='store_true', help='also time the devices\' batch stage (jitted mixing)')
  args = p.parse_args(argv)
  print(f'batch {args.batch}, {args.crop} px, {os.cpu_count()} CPUs; per batch:')
  for k in args.classes:
    for name, extra in (('synthetic', {}), ('synthetic + mixup 0.5', {'mixup': 0.5})):
      r = measure({'crop': args.crop, 'num_classes': k, **extra}, args.batch, args.steps)
      print(f'  {k:>6} classes, {name:<22} {r["wall_ms"]:8.1f} ms wall {r["cpu_ms"]:8.1f} ms CPU '
            f'{r["MB"]:8.3f} MB to the devices {r["dtypes"]}', flush=True)
  if args.device:
    import jax  # pylint: disable=g-import-not-at-top
    ms = measure_device(args.batch, args.crop, args.classes[0], args.steps)
    print(f'  devices ({jax.devices()[0].device_kind}, {jax.device_count()}): mixing.train_batch with mixup 0.5, '
          f'{args.classes[0]} classes: {ms:.1f} ms', flush=True)


if __name__ == '__main__':
  main()
