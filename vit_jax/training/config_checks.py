"""Config validation before anything compiles: every mistake becomes ONE line naming the key and the fix.

`validate(config)` checks types, enums, divisibility (batch by devices, image size by patch size), paths and
the dataset; `explain_flag_error` turns ml_collections' flag-parsing errors (unknown key, unparsable value)
into the same kind of line. Both raise or return `ConfigError`, which `main` prints without a traceback.
"""
import difflib
import re
from typing import Any, Dict, Iterable, NamedTuple, Optional

import jax
from etils import epath

from vit_jax.configs import reference_compat
from vit_jax.models import build
from vit_jax.models import registry


class ConfigError(ValueError):
  """A user mistake in the config; the message is one line naming the key and the fix."""


_POSITIVE_INTS = ('total_steps', 'batch', 'batch_eval', 'accum_steps', 'eval_every', 'progress_every',
                  'checkpoint_every', 'keep_checkpoints')
_NON_NEGATIVE_INTS = ('warmup_steps', 'keep_checkpoint_every', 'profile_steps', 'seed',
                      'fewshot.every')
_ENUMS = {
    'decay_type': ('cosine', 'linear', 'rsqrt', 'constant'),
    'loss': ('softmax_xent', 'sigmoid_xent'),
    'optim.optimizer': ('adam', 'adamw', 'sgd', 'adafactor'),
    'model.dtype': ('float32', 'bfloat16', 'float16'),
    'model.attention_impl': ('xla', 'dot_product', 'cudnn', 'auto'),
    'model.remat_policy': ('none', 'full', 'dots', 'dots_no_batch'),
    'model.classifier': (None, 'token', 'gap', 'map', 'unpooled', 'token_unpooled'),
    'model.posemb': ('learn', 'sincos2d'),
}


def nearest(key: str, candidates: Iterable[str]) -> Optional[str]:
  """The candidate closest to `key` (difflib), or None."""
  match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.5)
  return match[0] if match else None


def _flat_keys(cfg: Any, prefix: str = '') -> list:
  keys = []
  for k, v in cfg.items():
    keys.append(prefix + k)
    if hasattr(v, 'items') and not isinstance(v, (str, bytes)):
      keys.extend(_flat_keys(v, prefix + k + '.'))
  return keys


def _get(cfg: Any, dotted: str) -> Any:
  for part in dotted.split('.'):
    cfg = cfg[part]
  return cfg


def explain_flag_error(error: Exception, argv: Iterable[str], config: Any = None) -> ConfigError:
  """One line for an unknown key or an unparsable value given as `--config.<key>=<value>`."""
  overrides = [a[len('--config.'):].split('=', 1) for a in argv if a.startswith('--config.')]
  text = str(error).replace('\\n', ' ').replace('\n', ' ')
  if config is not None:
    valid = _flat_keys(config)
    for parts in overrides:
      key = parts[0]
      if key not in valid:
        guess = nearest(key, valid)
        hint = f'did you mean config.{guess}?' if guess else 'see vit_jax/configs/common.py for the keys.'
        return ConfigError(f'Unknown config key config.{key}: {hint}')
  m = re.search(r'flag --config\.([\w.]+)=(\S*): (.*)', text)
  if m:
    key, value, why = m.groups()
    expected = ''
    if config is not None:
      try:
        current = _get(config, key)
        expected = f' expects a {type(current).__name__} like {current!r};'
      except (KeyError, AttributeError):
        pass
    return ConfigError(f'Bad value for config.{key}={value!r}:{expected} {why.strip()}')
  return ConfigError(f'Bad --config flags: {text.strip()}')


def _check_int(config: Any, key: str, minimum: int) -> None:
  value = _get(config, key)
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f'config.{key} must be an int, got {value!r} ({type(value).__name__}); e.g. '
                      f'--config.{key}={max(minimum, 1)}.')
  if value < minimum:
    raise ConfigError(f'config.{key}={value} must be >= {minimum}; change it.')


def _patch_grid_divisor(config: Any) -> Optional[int]:
  """How many pixels each token covers along one side, or None when the model is unknown."""
  try:
    model_cfg = registry.get_config(config.model_name)
  except ValueError as e:
    raise ConfigError(f'config.model_name={config.model_name!r}: {e}') from None
  patch = config.model.patch_size or model_cfg['patches']['size'][0]
  resnet = model_cfg.get('resnet')
  stages = build.resnet_override(config.model)
  if stages is None and resnet is not None:
    stages = resnet['num_layers']
  if stages is not None:  # The ResNet root downsamples 4x, then 2x per stage after the first.
    patch *= 4 * 2 ** max(len(stages) - 1, 0)
  return patch


def validate(config: Any, *, num_devices: Optional[int] = None, check_data: bool = True) -> Any:
  """Raises ConfigError on the first mistake; returns the dataset info (or None without `check_data`)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  try:  # A google-research/vision_transformer config becomes ours first (in place; a no-op on ours).
    reference_compat.adopt(config)
  except reference_compat.ReferenceConfigError as e:
    raise ConfigError(str(e)) from None
  for key in _POSITIVE_INTS:
    _check_int(config, key, 1)
  for key in _NON_NEGATIVE_INTS:
    _check_int(config, key, 0)
  if not isinstance(config.base_lr, (int, float)) or config.base_lr < 0:
    raise ConfigError(f'config.base_lr must be a non-negative number, got {config.base_lr!r}.')
  for key, allowed in _ENUMS.items():
    value = _get(config, key)
    if value not in allowed:
      raise ConfigError(f'config.{key}={value!r} is not one of {", ".join(map(repr, allowed))}; pick one.')
  if config.warmup_steps >= config.total_steps and config.decay_type in ('cosine', 'linear'):
    raise ConfigError(f'config.warmup_steps={config.warmup_steps} must be below config.total_steps='
                      f'{config.total_steps}; lower warmup_steps.')
  for key in ('batch', 'batch_eval'):
    value = config[key]
    if value % num_devices:
      raise ConfigError(f'config.{key}={value} is not divisible by the {num_devices} devices; use a multiple '
                        f'of {num_devices}, e.g. {max(num_devices, value // num_devices * num_devices)}.')
  per_device = config.batch // num_devices
  if per_device % config.accum_steps:
    raise ConfigError(f'config.batch={config.batch} gives {per_device} examples per device, not divisible by '
                      f'config.accum_steps={config.accum_steps}; change one of them.')
  mesh_sizes = [s for s in config.mesh.values() if s != -1]
  mesh_fixed = 1
  for s in mesh_sizes:
    mesh_fixed *= s
  if any(s == 0 or s < -1 for s in config.mesh.values()) or num_devices % mesh_fixed:
    raise ConfigError(f'config.mesh={dict(config.mesh)} does not fit the {num_devices} devices; make the '
                      'fixed axis sizes divide the device count and set one axis to -1.')
  if isinstance(config.sharding_rules, str) and config.sharding_rules not in ('dp', 'fsdp', 'tp'):
    raise ConfigError(f'config.sharding_rules={config.sharding_rules!r} is not one of dp, fsdp, tp (or a '
                      'list of (logical axis, mesh axes) pairs).')
  for key in ('resume', 'model_init'):
    path = config[key]
    if path and not epath.Path(path).exists():
      raise ConfigError(f'config.{key}={path!r} does not exist; fix the path or unset it.')
  patch = _patch_grid_divisor(config)
  fewshot = fewshot_datasets(config)
  extra_evals = evals(config)[1:]
  if not check_data:
    return None

  from vit_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    info = input_pipeline.get_dataset_info(config.dataset, pp_dict(config.pp), data_dir=config.tfds_data_dir)
  except (ValueError, FileNotFoundError, ImportError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f'config.dataset={config.dataset!r} cannot be loaded: {msg}') from None
  for dataset, train_split, test_split in fewshot:
    pp = {**fewshot_pp(config), 'train': train_split, 'test': test_split}
    try:
      input_pipeline.get_dataset_info(dataset, pp, data_dir=config.tfds_data_dir)
    except (ValueError, FileNotFoundError, ImportError) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(f'config.fewshot.datasets entry {(dataset, train_split, test_split)!r} cannot be loaded: '
                        f'{msg}') from None
  for spec in extra_evals:
    try:
      eval_info = input_pipeline.get_dataset_info(spec.dataset, spec.pp, data_dir=config.tfds_data_dir)
    except (ValueError, FileNotFoundError, ImportError) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(f'config.evals.{spec.name} ({spec.dataset!r}, split {spec.pp["test"]!r}) cannot be loaded: '
                        f'{msg}') from None
    if eval_info.num_classes != info.num_classes:
      raise ConfigError(f'config.evals.{spec.name}: {spec.dataset!r} has {eval_info.num_classes} classes, the model '
                        f'{info.num_classes} (those of config.dataset={config.dataset!r}); evaluate on a dataset '
                        'with the same label space.')
  if info.image_size % patch:
    raise ConfigError(f'Image size {info.image_size} (config.pp.crop) is not divisible by the patch size '
                      f'{patch} of {config.model_name!r}; set config.pp.crop to a multiple of {patch} or '
                      'config.model.patch_size to a divisor of it.')
  return info


def pp_dict(pp: Any) -> dict:
  """The `pp` section as a plain dict without unset (None) keys, as the input pipeline takes it."""
  items = pp.items() if hasattr(pp, 'items') else dict(pp).items()
  return {k: (v.to_dict() if hasattr(v, 'to_dict') else v) for k, v in items if v is not None}


def fewshot_datasets(config: Any) -> tuple:
  """`config.fewshot.datasets` as (dataset, train split, test split) string triples, or a ConfigError."""
  entries = tuple(config.fewshot.datasets or ())
  for entry in entries:
    if not (isinstance(entry, (tuple, list)) and len(entry) == 3 and all(isinstance(x, str) for x in entry)):
      raise ConfigError(f'config.fewshot.datasets entry {entry!r} is not a (dataset, train split, test split) '
                        "triple of strings; write e.g. (('digits', 'train', 'test'),).")
  return tuple(tuple(e) for e in entries)


def fewshot_pp(config: Any) -> dict:
  """The eval preprocessing of `config.pp` for another dataset: its sizes and value range, not its class counts."""
  return {k: v for k, v in pp_dict(config.pp).items() if k not in ('num_classes', 'num_train', 'num_eval')}


class EvalSpec(NamedTuple):
  """One evaluator: metrics `<name>/{top1,top5,loss}` on `dataset` with eval preprocessing `pp` every `every` steps."""
  name: str
  dataset: str
  pp: Dict[str, Any]  # the pipeline's pp; the split evaluated is pp['test']
  every: int


EVAL_KEYS = ('dataset', 'split', 'pp', 'every')
_RESERVED_EVAL_NAMES = ('val', 'train', 'progress', 'fewshot', 'knn')


def evals(config: Any) -> tuple:
  """The run's evaluators: 'val' (config.dataset, config.pp.test, every config.eval_every), then config.evals.

  A `config.evals` entry is a dict with `split` (required), `dataset` (default config.dataset), `pp` (overrides of
  the eval preprocessing of config.pp) and `every` (default config.eval_every); every one runs at the last step.
  """
  pp = pp_dict(config.pp)
  specs = [EvalSpec('val', config.dataset, pp, config.eval_every)]
  if not hasattr(config.evals, 'items'):
    raise ConfigError(f'config.evals must be a dict of name -> dict(split=..., dataset=..., pp=..., every=...), '
                      f'got {config.evals!r}.')
  for name, entry in config.evals.items():
    where = f'config.evals.{name}'
    if not re.fullmatch(r'[A-Za-z][A-Za-z0-9_]*', name) or name in _RESERVED_EVAL_NAMES or name.endswith('_ema'):
      raise ConfigError(f'{where}: the name must be letters, digits and _, not ending in _ema nor one of '
                        f'{", ".join(_RESERVED_EVAL_NAMES)}; rename it.')
    if not hasattr(entry, 'items'):
      raise ConfigError(f'{where}={entry!r} is not a dict; write dict(split=\'validation\', dataset=..., pp=..., '
                        'every=...).')
    entry = dict(entry.items())
    unknown = sorted(set(entry) - set(EVAL_KEYS))
    if unknown:
      raise ConfigError(f'{where} has unknown key(s) {unknown}; the keys are {", ".join(EVAL_KEYS)}.')
    split = entry.get('split')
    if not isinstance(split, str) or not split:
      raise ConfigError(f"{where}.split={split!r} must be a split string such as 'validation' or 'train[99%:]'.")
    dataset = entry.get('dataset') or config.dataset
    if not isinstance(dataset, str):
      raise ConfigError(f'{where}.dataset={dataset!r} must be a dataset name or path.')
    every = config.eval_every if entry.get('every') is None else entry['every']
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
      raise ConfigError(f'{where}.every={every!r} must be a positive int (steps between evaluations).')
    overrides = entry.get('pp') or {}
    if not hasattr(overrides, 'items'):
      raise ConfigError(f'{where}.pp={overrides!r} must be a dict of pp overrides, e.g. dict(resize=256).')
    # Another dataset: keep the sizes and value range, not the class and split counts of config.dataset.
    base = pp if dataset == config.dataset else fewshot_pp(config)
    eval_pp = {**base, **pp_dict(overrides),
               'train': split, 'test': split}  # 'train' too: a test-only set (imagenet_v2) has no train split
    specs.append(EvalSpec(name, dataset, eval_pp, every))
  return tuple(specs)
