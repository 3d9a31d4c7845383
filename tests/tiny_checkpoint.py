"""Tiny random ViT checkpoints and image files for the research tools' tests (not a test module itself)."""
import functools
import os
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import checkpoint
from vit_jax.models import registry

# 'mu/4': width 32, one layer, two heads, 4x4 patches; 16x16 inputs make a 4x4 patch grid (17 tokens).
MODEL = 'mu/4'
SIZE = 16


def random_params(name: str = MODEL, size: int = SIZE, num_classes: int = 5, seed: int = 0,
                  **overrides: Any) -> Tuple[nn.Module, Dict[str, Any]]:
  """A model and random plain-numpy params, with a non-zero head so predictions differ between classes.

  Cached (the tests share one process), so every test file reuses the same compiled init; do not modify the
  returned params in place.
  """
  return _random_params(name, size, num_classes, seed, tuple(sorted(overrides.items())))


@functools.lru_cache(maxsize=None)
def _random_params(name, size, num_classes, seed, overrides):
  model = registry.get_model(name, num_classes=num_classes, head_zeroinit=False, **dict(overrides))
  init = jax.jit(lambda: model.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)), train=False))
  params = init()['params']
  return model, jax.tree.map(np.asarray, params)


def save_checkpoint(directory: str, name: str = MODEL, **kwargs: Any) -> Tuple[str, nn.Module, Dict[str, Any]]:
  """Saves a random tiny model as a published-layout .npz; returns (path, model, params)."""
  model, params = random_params(name, **kwargs)
  path = os.path.join(directory, 'tiny.npz')
  checkpoint.save_npz(params, path)
  return path, model, params


def write_image(path: str, width: int = 40, height: int = 30, seed: int = 0) -> str:
  """A random RGB image file (format from the extension)."""
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  return path


@functools.lru_cache(maxsize=None)
def trained_workdir(base: str) -> str:
  """A workdir of the embedded default config trained for 4 steps (checkpoints at 2 and 4), under `base`."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from vit_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.total_steps, config.warmup_steps, config.batch = 4, 1, 32
  config.progress_every, config.checkpoint_every, config.eval_every = 1, 2, 2
  config.tensorboard = False
  workdir = os.path.join(base, 'tools_workdir')
  loop.train_and_evaluate(config, workdir)
  return workdir
