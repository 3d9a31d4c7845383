"""google-research/vision_transformer's `vit_jax.inference_time`: images per second per device of a registered model.

`inference_time(config, workdir)` reads its config keys (`model_name`, `batch`, `num_classes`, `image_size`,
`initial_steps`, `steps`); for the full table of models, batch sizes and MFU use scripts/benchmark.py.
"""
import json
import logging
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from vit_jax.models import registry
from vit_jax.perf import benchmarking


def inference_time(config: Any, workdir: str) -> Dict[str, float]:
  """Times `config.steps` forward passes of a batch of `config.batch` images after `config.initial_steps` warm-up
  ones; logs and returns (and writes `<workdir>/inference_time.json`) the images/s per device."""
  for key in ('batch', 'num_classes', 'image_size'):
    if not config[key] or config[key] <= 0:
      raise ValueError(f'config.{key}={config[key]!r} must be > 0, e.g. --config.{key}=...')
  model = registry.get_model(config.model_name, num_classes=config.num_classes)
  images = jnp.ones((config.batch, config.image_size, config.image_size, 3), jnp.float32)
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), images[:1], train=False))()
  forward = jax.jit(lambda p, x: model.apply(p, x, train=False))
  times = benchmarking.time_calls(lambda: forward(params, images), steps=1, reps=config.steps,
                                  warmup=config.initial_steps)
  per_core = config.batch / jax.device_count() / np.array(times)
  stats = {f'imgs_sec_core_{name}': float(fn(per_core)) for name, fn in
           (('min', np.min), ('max', np.max), ('mean', np.mean), ('std', np.std))}
  logging.info('%s: %s', config.model_name, stats)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  (epath.Path(workdir) / 'inference_time.json').write_text(json.dumps(stats))
  return stats
