"""A tiny image folder and a tiny published-layout checkpoint, for the google-research/vision_transformer
migration tests (not a test module)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import checkpoint
from vit_jax import models
from vit_jax.configs import models as models_config


def image_folder(root, per_class=(8, 5)) -> str:
  """root/{train,test}/{cat,dog}/*.jpg (40x48 random images), the folder layout the reference reads."""
  for split, n in zip(('train', 'test'), per_class):
    for c in ('cat', 'dog'):
      os.makedirs(f'{root}/{split}/{c}', exist_ok=True)
      for i in range(n):
        pixels = np.random.default_rng(i + 100 * (c == 'dog')).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(f'{root}/{split}/{c}/{i}.jpg')
  return str(root)


def testing_npz(directory, name, num_classes=7):
  """`testing` params (32 px init) written by save_npz to <directory>/<name>.npz; returns them."""
  model = models.VisionTransformer(num_classes=num_classes, **models_config.get_testing_config())
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))()['params']
  checkpoint.save_npz(params, os.path.join(directory, f'{name}.npz'))
  return params
