"""Configs written for google-research/vision_transformer (its `vit.py:b16,cifar10`, `augreg.py:R_Ti_16`, its
colabs' `common.get_config()` edits) rewritten into ours, so that they run through our loop unchanged.

`adopt(config)` is called once by `training.config_checks.validate`, before any check. It is a no-op on our own
configs. On one of the reference's it rewrites the config in place:
  - its nested `config.model` (`model_name`, `patches`, `hidden_size`, `transformer`, ...) becomes `model_name` plus
    our `config.model` overrides;
  - `pretrained_dir` + `model_or_filename` (or the model's name) become `model_init` (`<dir>/<name>.npz`; a bare
    AugReg model name picks its best i21k checkpoint from `<dir>/index.csv`, as the reference does), unless
    `model_init` is given;
  - `optim_dtype` becomes `optim.mu_dtype`; `accum_steps=0` (the reference's "off") becomes 1;
  - the reference's trainer has one recipe, which is that of our `configs/finetune.py`: SGD with momentum 0.9, no
    weight decay, resize to `pp.resize` then a random `pp.crop` window and a flip for training, a resize to
    `pp.crop` for evaluation, bfloat16 compute;
  - `shuffle_buffer`, `prefetch`, `tfds_manual_dir` have no meaning here and are dropped with one logged line each.
What cannot be mapped (an MLP-Mixer, the inference-time trainer, an unknown model key) is one `ConfigError` line.
The mapping table is docs/migration.md.
"""
import csv
import logging
from typing import Any, Dict, Optional, Tuple

import ml_collections
from etils import epath

from vit_jax.configs import common
from vit_jax.models import registry

# The reference's keys that ours lacks, with what each becomes (None: dropped with a logged line).
REFERENCE_KEYS = ('pretrained_dir', 'model_or_filename', 'optim_dtype', 'shuffle_buffer', 'prefetch',
                  'tfds_manual_dir', 'trainer')
_NO_MEANING = {
    'shuffle_buffer': 'examples are read in a fresh random order each epoch (random access), no buffer needed',
    'prefetch': 'the loop always prefetches two batches onto the devices',
    'tfds_manual_dir': 'TFDS datasets are prepared beforehand (tfds build --manual_dir=...), not at training time',
}
_MODEL_KEYS = ('model_name', 'patches', 'hidden_size', 'transformer', 'classifier', 'representation_size',
               'resnet', 'head_bias_init')
_TRANSFORMER_KEYS = ('num_layers', 'num_heads', 'mlp_dim', 'dropout_rate', 'attention_dropout_rate')
# The reference's pp keys (crop, and resize in augreg.py) and the rest of the reference trainer's preprocessing.
FINETUNE_PP = dict(train_crop='resize_crop', eval_crop='resize', flip=True)


class ReferenceConfigError(ValueError):
  """A reference config item with no counterpart here; config_checks turns it into its ConfigError line."""


def is_reference_model(model: Any) -> bool:
  """Whether `config.model` is the reference's model section (a `MODEL_CONFIGS` entry), not our overrides."""
  return model is None or (hasattr(model, 'keys') and bool({'transformer', 'patches', 'model_name'} & set(model)))


def _plain(value: Any) -> Any:
  return value.to_dict() if hasattr(value, 'to_dict') else value


def _model_section(model: Any) -> Tuple[str, ml_collections.ConfigDict]:
  """(model_name, our config.model) for the reference's model section."""
  if model is None:
    raise ReferenceConfigError('config.model is None: set it to a model config, e.g. '
                               'vit_jax.configs.models.get_b16_config().')
  model = {k: _plain(v) for k, v in model.items()}
  unknown = sorted(set(model) - set(_MODEL_KEYS))
  if unknown:
    raise ReferenceConfigError(f'config.model.{unknown[0]} has no counterpart here; the model keys are '
                               f'{", ".join(_MODEL_KEYS)}.')
  name = model.get('model_name')
  if name not in registry.MODEL_CONFIGS:
    raise ReferenceConfigError(f'config.model.model_name={name!r} is not a registered model; start from one of '
                               f'{", ".join(registry.MODEL_CONFIGS)} (vit_jax.configs.models).')
  ours = common.get_config().model
  size = tuple((model.get('patches') or {}).get('size', registry.get_config(name)['patches']['size']))
  if len(size) != 2 or size[0] != size[1]:
    raise ReferenceConfigError(f'config.model.patches.size={size} is not square; only square patches are built.')
  ours.patch_size = int(size[0])
  if model.get('hidden_size') is not None:
    ours.hidden_size = int(model['hidden_size'])
  transformer = model.get('transformer') or {}
  for key in _TRANSFORMER_KEYS:
    if transformer.get(key) is not None:
      ours[key] = float(transformer[key]) if key.endswith('rate') else int(transformer[key])
  unknown = sorted(set(transformer) - set(_TRANSFORMER_KEYS))
  if unknown:
    raise ReferenceConfigError(f'config.model.transformer.{unknown[0]} has no counterpart here.')
  if model.get('classifier'):
    ours.classifier = model['classifier']
  ours.representation_size = model.get('representation_size') or 0  # reference None = no pre-logits layer
  resnet = model.get('resnet')
  if resnet is not None:
    width = registry.get_config(name).get('resnet', {}).get('width_factor', 1)
    if resnet.get('width_factor', 1) != width:
      raise ReferenceConfigError(f'config.model.resnet.width_factor={resnet.get("width_factor")} differs from '
                                 f'{name!r}\'s ({width}); only the number of units per stage can change here.')
    ours.resnet_num_layers = tuple(resnet.get('num_layers') or ())
  if model.get('head_bias_init') is not None:
    ours.head_bias_init = float(model['head_bias_init'])
  ours.dtype = 'bfloat16'  # configs/finetune.py's compute dtype (the params and the logits stay float32)
  ours.attention_impl = 'auto'  # configs/finetune.py's: cuDNN on GPUs that run it, XLA elsewhere
  return name, ours


def augreg_best_filename(directory: str, model: str) -> str:
  """The reference's choice for a bare AugReg model name: its i21k checkpoint with the best final validation
  accuracy, from `<directory>/index.csv` (the AugReg index, downloaded beside the .npz files)."""
  index = epath.Path(directory) / 'index.csv'
  if not index.exists():
    raise ReferenceConfigError(f'config.model_or_filename={model!r} needs the AugReg index {index} to pick a '
                               'checkpoint; copy gs://vit_models/augreg/index.csv there or give the full file name.')
  with index.open() as f:
    rows = [r for r in csv.DictReader(f) if r['filename'].split('-')[0] == model and r['ds'] == 'i21k']
  if not rows:
    raise ReferenceConfigError(f'{index} lists no i21k checkpoint of {model!r}; give the full file name in '
                               'config.model_or_filename.')
  return max(rows, key=lambda r: float(r['final_val']))['filename']


def _model_init(config: Any, reference_model: bool, model_name: str) -> Optional[str]:
  """The checkpoint path that `pretrained_dir` + `model_or_filename` name, or None when they name none."""
  directory, filename = config.get('pretrained_dir'), config.get('model_or_filename')
  if not reference_model and directory is None and filename is None:
    return None
  if config.get('model_init'):  # ours, given explicitly: it wins over what the reference's file names
    logging.warning('config.model_init=%r is used; config.pretrained_dir and model_or_filename are not.',
                    config.model_init)
    return None
  directory = '.' if directory is None else directory  # the reference's default
  if not filename:
    filename = model_name
  elif '-' not in filename:
    filename = augreg_best_filename(directory, filename)
    logging.warning('config.model_or_filename: picked %s (best final_val of the i21k runs in the index).', filename)
  path = epath.Path(directory) / f'{filename}.npz'
  if not path.exists():
    raise ReferenceConfigError(f'config.pretrained_dir={directory!r}: {path} does not exist; download it '
                               '(gs://vit_models/...) or point --config.pretrained_dir at its folder.')
  return str(path)


def _pp_section(pp: Any) -> ml_collections.ConfigDict:
  """Our `pp` from the reference's (train, test, crop, resize), with configs/finetune.py's crops."""
  ours = common.get_config().pp
  given = {k: _plain(v) for k, v in (pp or {}).items() if v is not None}
  unknown = sorted(set(given) - set(ours))
  if unknown:
    raise ReferenceConfigError(f'config.pp.{unknown[0]} has no counterpart here; the pp keys are in '
                               'vit_jax/data/preprocess.py.')
  for key, value in {**FINETUNE_PP, **given}.items():
    ours[key] = value
  return ours


def _check_trainer(config: Any) -> None:
  trainer = config.get('trainer')
  if 'inference_time' in (trainer, config.get('train')):  # its configs/inference_time.py sets `train`
    raise ReferenceConfigError("An inference_time config (trainer='inference_time') is not a training run: "
                               'measure with scripts/benchmark.py, or call '
                               'vit_jax.inference_time.inference_time(config, workdir).')
  if trainer not in (None, 'train'):
    raise ReferenceConfigError(f"config.trainer={trainer!r}: only 'train' runs here.")
  if config.get('model_type', 'ViT') != 'ViT':
    raise ReferenceConfigError(f'config.model_type={config.model_type!r}: vit_jax has no MLP-Mixer or LiT '
                               'models; use a ViT from vit_jax.configs.models.')


def adopt(config: Any) -> bool:
  """Rewrites a google-research/vision_transformer config into ours, in place; returns whether it was one.

  Raises ReferenceConfigError (one line) for what has no counterpart here.
  """
  reference_model = is_reference_model(config.get('model'))
  given = {k: config.get(k) for k in REFERENCE_KEYS if config.get(k) is not None}
  if not reference_model and not given and 'model_type' not in config:
    return False
  _check_trainer(config)
  updates: Dict[str, Any] = {}
  model_name = config.get('model_name')
  if reference_model:
    model_name, updates['model'] = _model_section(config.get('model'))
    updates['model_name'] = model_name
    updates['pp'] = _pp_section(config.get('pp'))
    if config.get('total_steps') is None:
      raise ReferenceConfigError('config.total_steps is None: set it (the reference\'s DATASET_PRESETS do, '
                                 'via with_dataset), e.g. --config.total_steps=500.')
    if not config.get('dataset'):
      raise ReferenceConfigError('config.dataset is empty: set --config.dataset=<TFDS name or image folder>.')
    if config.get('accum_steps') in (None, 0):
      updates['accum_steps'] = 1  # the reference's "no accumulation"
  model_init = _model_init(config, reference_model, model_name)
  for key, why in _NO_MEANING.items():
    if key in given:
      logging.warning('config.%s=%r is ignored: %s.', key, given[key], why)
  with config.unlocked():
    for key, value in updates.items():
      config[key] = value
    if model_init is not None:
      config.model_init = model_init
    if reference_model and config.optim.optimizer == 'adam':  # our default, i.e. not chosen: the reference's SGD
      config.optim.optimizer, config.optim.momentum, config.optim.weight_decay = 'sgd', 0.9, 0.
    if reference_model or 'optim_dtype' in given:
      config.optim.mu_dtype = given.get('optim_dtype', 'bfloat16')  # the reference's default momentum dtype
    for key in REFERENCE_KEYS:
      if key in config:
        config[key] = None  # mapped: a second adopt() is a no-op, and config.json holds our keys only
    if 'model_type' in config:
      del config['model_type']
  logging.warning('Read a google-research/vision_transformer config: model %s, model_init %s, SGD momentum '
                  '(mu_dtype %s); see docs/migration.md.', config.model_name, config.model_init,
                  config.optim.mu_dtype)
  return True
