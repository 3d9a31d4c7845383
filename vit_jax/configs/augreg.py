"""google-research/vision_transformer's `configs/augreg.py`: fine-tune an AugReg checkpoint ("How to train your
ViT?", Steiner et al. 2021).

`get_config('R_Ti_16')` (the model's best i21k checkpoint, chosen from `<pretrained_dir>/index.csv`) or
`get_config('<full file name without .npz>')`; set `--config.dataset` (and usually `--config.pp.train`,
`--config.base_lr`) on the command line. 500 steps, lr 0.03 with 100 warmup steps, 384 px from 448, no dropout.
"""
import ml_collections

from vit_jax.configs import common
from vit_jax.configs import models


def get_config(model_or_filename: str) -> ml_collections.ConfigDict:
  """An AugReg model name (a `models.AUGREG_CONFIGS` key) or a full AugReg file name."""
  model = model_or_filename.split('-')[0]
  if model not in models.AUGREG_CONFIGS:
    raise ValueError(f'Unknown AugReg model {model!r}: use one of {", ".join(sorted(models.AUGREG_CONFIGS))}.')
  config = common.get_config()
  config.pretrained_dir = 'gs://vit_models/augreg'
  config.model_or_filename = model_or_filename
  config.model = models.AUGREG_CONFIGS[model].copy_and_resolve_references()
  config.model.transformer.dropout_rate = 0.  # AugReg regularises pre-training only
  config.base_lr = 0.03
  config.total_steps = 500
  config.warmup_steps = 100
  config.pp = ml_collections.ConfigDict(dict(train='train', test='test', resize=448, crop=384))
  config.dataset = ''  # to be given: --config.dataset=...
  return config
