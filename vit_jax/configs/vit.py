"""google-research/vision_transformer's `configs/vit.py`: fine-tune a published ViT on a preset dataset.

`get_config('b16,cifar10')` is `common.with_dataset(common.get_config(), 'cifar10')` with the reference's model
section of `models.get_b16_config()`; `python -m vit_jax.main --config=vit_jax/configs/vit.py:b16,cifar10
--workdir=DIR --config.pretrained_dir=DIR_WITH_NPZ` fine-tunes as configs/finetune.py:cifar10 does
(docs/migration.md).
"""
import ml_collections

from vit_jax.configs import common
from vit_jax.configs import models


def get_config(model_dataset: str) -> ml_collections.ConfigDict:
  """'<model>,<dataset>': a `models.get_<model>_config` suffix and a `common.DATASET_PRESETS` name."""
  model, _, dataset = model_dataset.partition(',')
  config = common.with_dataset(common.get_config(), dataset)
  config.model = getattr(models, f'get_{model}_config')()
  if (model, dataset) == ('b16', 'cifar10'):
    config.base_lr = 0.01  # the reference's tuned value for this pair
  return config
