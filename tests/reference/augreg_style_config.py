"""A config file written as google-research/vision_transformer's configs/augreg.py is (a tiny model): the tests
run it through `python -m vit_jax.main` unchanged. Not a test module.

python -m vit_jax.main --config=tests/reference/augreg_style_config.py:testing-tiny --workdir=DIR \
    --config.pretrained_dir=DIR_WITH_testing-tiny.npz --config.dataset=IMAGE_FOLDER
"""
import ml_collections

from vit_jax.configs import common
from vit_jax.configs import models


def get_config(model_or_filename):
  """`testing` fine-tuned from `<pretrained_dir>/<model_or_filename>.npz`, in the reference's key names."""
  config = common.get_config()
  config.pretrained_dir = '.'
  config.model_or_filename = model_or_filename
  config.model = models.get_testing_config()
  config.model.transformer.dropout_rate = 0
  config.base_lr = 0.01
  config.total_steps = 3
  config.warmup_steps = 1
  config.batch = 16
  config.batch_eval = 8
  config.accum_steps = 2
  config.optim_dtype = 'float32'
  config.eval_every = 3
  config.progress_every = 1
  config.tensorboard = False
  config.pp = ml_collections.ConfigDict()
  config.pp.train = 'train'
  config.pp.test = 'test'
  config.pp.resize = 36
  config.pp.crop = 32
  config.dataset = ''
  return config
