"""Config validation before anything compiles: every mistake becomes ONE line naming the key and the fix.

`validate(config)` checks types, enums, divisibility (batch by devices, image size by patch size), every
`config.model` and `config.optim` key against its range (the tables `MODEL_RULES`, `OPTIM_RULES`, which
`check_section` and `check_model` apply to any mapping, e.g. a section translated from another config layout),
paths and the dataset; `explain_flag_error` turns ml_collections' flag-parsing errors (unknown key, unparsable value)
into the same kind of line. Both raise or return `ConfigError`, which `main` prints without a traceback.
"""
import difflib
import math
import re
from typing import Any, Callable, Dict, Iterable, Mapping, NamedTuple, Optional

import jax
from etils import epath

from vit_jax.models import build
from vit_jax.models import layers
from vit_jax.models import registry
from vit_jax.models import resnet
from vit_jax.models import vit
from vit_jax.training import optim
from vit_jax.training import sharding


class ConfigError(ValueError):
  """A user mistake in the config; the message is one line naming the key and the fix."""


_POSITIVE_INTS = ('total_steps', 'batch', 'batch_eval', 'accum_steps', 'eval_every', 'progress_every',
                  'checkpoint_every', 'keep_checkpoints')
_NON_NEGATIVE_INTS = ('warmup_steps', 'keep_checkpoint_every', 'profile_steps', 'seed',
                      'fewshot.every')
_ENUMS = {
    'decay_type': optim.DECAY_TYPES,
    'loss': ('softmax_xent', 'sigmoid_xent'),
    'objective': ('classification', 'mae', 'distill'),
}


class Rule(NamedTuple):
  """What a section key accepts: `ok(value)`, and `allowed`, the range as the error message states it."""
  ok: Callable[[Any], bool]
  allowed: str


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # v == v: not NaN


def _int(minimum: int, optional: bool = False) -> Rule:
  none = 'None or ' if optional else ''
  return Rule(lambda v: (optional and v is None) or (_is_int(v) and v >= minimum), f'{none}an int >= {minimum}')


def _number(low: float, high: Optional[float] = None, *, open_low: bool = False, closed_high: bool = False,
            optional: bool = False) -> Rule:
  """A number in [low, high) (or (low, ...] with the flags); high=None: no upper bound."""
  def ok(v):
    if optional and v is None:
      return True
    if not _is_number(v) or v < low or (open_low and v == low):
      return False
    return high is None or v < high or (closed_high and v == high)
  none = 'None or ' if optional else ''
  if high is None:
    return Rule(ok, f'{none}a number {">" if open_low else ">="} {low:g}')
  return Rule(ok, f'{none}a number in {"(" if open_low else "["}{low:g}, {high:g}{"]" if closed_high else ")"}')


def _one_of(*values: Any) -> Rule:
  return Rule(lambda v: v in values, 'one of ' + ', '.join(map(repr, values)))


def _regexes(v: Any) -> bool:
  if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)):
    return False
  try:
    for pattern in v:
      re.compile(pattern)
  except (re.error, TypeError):
    return False
  return True


def _regex_multipliers(v: Any) -> bool:
  if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)):
    return False
  pairs = [p for p in v if isinstance(p, (tuple, list)) and len(p) == 2 and _is_number(p[1])]
  return len(pairs) == len(v) and _regexes([p for p, _ in pairs])


def _stages(v: Any) -> bool:
  return v is None or all(s is None for s in v) or (
      isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(s) and s >= 1 for s in v))


def _rgb(v: Any) -> bool:
  return v is None or (isinstance(v, (tuple, list)) and len(v) == 3 and all(_is_number(x) for x in v))


_BOOL = Rule(lambda v: isinstance(v, bool), 'True or False')
_PROBABILITY = _number(0., 1., optional=True)

# Every `config.model` key and what it accepts: the checks `VisionTransformer` makes on its own arguments (it
# raises too late, at the first trace) and the ranges within which its arguments mean something. Keys that need
# the registered model (heads dividing the width, ...) are checked after these in `check_model`.
MODEL_RULES: Dict[str, Rule] = {
    'patch_size': _int(1, optional=True),
    'hidden_size': _int(1, optional=True),
    'num_layers': _int(1, optional=True),
    'num_heads': _int(1, optional=True),
    'mlp_dim': _int(1, optional=True),
    'dropout_rate': _PROBABILITY,
    'attention_dropout_rate': _PROBABILITY,
    'classifier': _one_of(None, *vit.CLASSIFIERS),
    'representation_size': _int(0, optional=True),
    'resnet_num_layers': Rule(_stages, 'None or a non-empty tuple of ints >= 1, e.g. (3, 4, 9)'),
    'posemb': _one_of(*vit.POSEMBS),
    'head_bias_init': Rule(_is_number, 'a number'),
    'head_zeroinit': _BOOL,
    'stochastic_depth': _number(0., 1.),
    'dtype': _one_of('float32', 'bfloat16', 'float16'),
    'attention_impl': _one_of(*vit.ATTENTION_IMPLS),
    'scan': _BOOL,
    'remat_policy': _one_of(*vit.REMAT_POLICIES),
    'num_registers': _int(0),
    'layer_scale_init': _number(0., open_low=True, optional=True),
    'qk_norm': _BOOL,
    'parallel_block': _BOOL,
    'use_bias': _BOOL,
    'patch_dropout': _number(0., 1.),
    'mup_base_width': _int(1, optional=True),
    # Options of checkpoints trained elsewhere (vit_jax.interop sets them from a timm / HF checkpoint).
    'mlp_activation': _one_of(*layers.ACTIVATIONS),
    'norm_eps': _number(0., open_low=True),
    'pre_norm': _BOOL,
    'fc_norm': _BOOL,
    'projection_dim': _int(1, optional=True),
    'pixel_mean': Rule(_rgb, 'None or three numbers (r, g, b), e.g. (0.485, 0.456, 0.406)'),
    'pixel_std': Rule(lambda v: _rgb(v) and (v is None or min(v) > 0),
                      'None or three positive numbers (r, g, b), e.g. (0.229, 0.224, 0.225)'),
    # MAE pretraining (config.objective='mae').
    'mask_ratio': Rule(lambda v: _is_number(v) and 0 < v < 1, 'a number in (0, 1)'),
    'decoder_num_layers': _int(1),
    'decoder_hidden_size': _int(1),
    'decoder_num_heads': _int(1),
    'norm_pix_loss': _BOOL,
    'distill_token': _BOOL,
}

# `config.distill` (vit_jax.training.distill).
DISTILL_RULES: Dict[str, Rule] = {
    'temperature': _number(0., open_low=True),
    'alpha': _number(0., 1., closed_high=True),
}

# Every `config.optim` key and what it accepts (vit_jax.training.optim; the schedule keys are top-level).
OPTIM_RULES: Dict[str, Rule] = {
    'optimizer': _one_of(*optim.OPTIMIZERS),
    'weight_decay': _number(0.),
    'b1': _number(0., 1., optional=True),  # None: adafactor without momentum
    'b2': _number(0., 1.),
    'eps': _number(0.),
    'momentum': _number(0., 1., optional=True),
    'nesterov': _BOOL,
    'mu_dtype': _one_of(None, 'float32', 'bfloat16', 'float16'),
    'linear_end': _number(0.),
    'rsqrt_timescale': _number(0., open_low=True),
    'adafactor_decay_rate': _number(0., open_low=True),
    'adafactor_b2_cap': _number(0., 1., open_low=True, closed_high=True),
    'adafactor_min_dim_to_factor': _int(1),
    'lr_mults': Rule(_regex_multipliers, "a list of (regex, number) pairs, e.g. (('head/.*', 10.),)"),
    'freeze': Rule(_regexes, "a list of regexes over param paths, e.g. ('embedding/.*',)"),
    'layer_decay': _number(0., 1., open_low=True, closed_high=True, optional=True),
}


def check_section(section: Mapping[str, Any], rules: Mapping[str, Rule], prefix: str) -> None:
  """ConfigError naming `prefix.key`, its value and the allowed range for the first key that breaks its rule."""
  for key, value in section.items():
    rule = rules.get(key)
    if rule is None:
      guess = nearest(key, rules)
      hint = f'did you mean {prefix}.{guess}?' if guess else f'the keys are {", ".join(rules)}.'
      raise ConfigError(f'Unknown config key {prefix}.{key}: {hint}')
    if not rule.ok(value):
      raise ConfigError(f'{prefix}.{key}={value!r} is out of range: it must be {rule.allowed}; change it.')


def check_model(model_name: str, model: Mapping[str, Any]) -> None:
  """The `config.model` section of `model_name`: each key's range, then what the model needs of them together."""
  check_section(model, MODEL_RULES, 'config.model')
  try:
    registered = registry.get_config(model_name)
  except ValueError as e:
    raise ConfigError(f'config.model_name={model_name!r}: {e}') from None
  transformer = registered.get('transformer') or {}
  width = model.get('hidden_size') or registered['hidden_size']
  heads = model.get('num_heads') or transformer.get('num_heads')
  if heads and width % heads:
    raise ConfigError(f'config.model.hidden_size={width} is not divisible by config.model.num_heads={heads} '
                      f'(of {model_name!r} unless set); pick a width that is a multiple of the heads.')
  if model.get('posemb') == 'sincos2d' and width % 4:
    raise ConfigError(f"config.model.posemb='sincos2d' needs config.model.hidden_size divisible by 4, got {width}.")
  if model.get('distill_token') and (model.get('classifier') or registered.get('classifier')) != 'token':
    raise ConfigError("config.model.distill_token needs config.model.classifier='token' (DeiT's class and "
                      'distillation tokens); set it.')
  if heads and model.get('attention_impl') == 'cudnn' and (width // heads) % 8:
    raise ConfigError(f"config.model.attention_impl='cudnn' needs a head dim (hidden_size / num_heads) that is a "
                      f"multiple of 8, got {width // heads}; use 'auto' or 'xla'.")

def _check_mae(model: Mapping[str, Any]) -> None:
  """What MAE needs of the model: decoder heads that divide its width (a hybrid's stem is fed the visible pixels
  only: `models.mae`)."""
  width, heads = model.get('decoder_hidden_size', 512), model.get('decoder_num_heads', 16)
  if width % heads or width % 4:
    raise ConfigError(f'config.model.decoder_hidden_size={width} must be divisible by 4 and by '
                      f'config.model.decoder_num_heads={heads}; change one of them.')


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


def _patch_grid_divisor(config: Any) -> int:
  """How many pixels each token covers along one side (`check_model` has checked the model name)."""
  model_cfg = registry.get_config(config.model_name)  # known: check_model ran first
  patch = config.model.patch_size or model_cfg['patches']['size'][0]
  registered = model_cfg.get('resnet')
  stages = build.resnet_override(config.model)
  if stages is None and registered is not None:
    stages = registered['num_layers']
  if stages is not None:
    patch *= resnet.root_stride(stages)
  return patch


def validate(config: Any, *, num_devices: Optional[int] = None, check_data: bool = True) -> Any:
  """Raises ConfigError on the first mistake; returns the dataset info (or None without `check_data`)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  # Imported here: it needs ml_collections, which the model, the step and the benchmark must not (the GPU machine
  # has none); configs only come from ml_collections anyway.
  from vit_jax.configs import reference_compat  # pylint: disable=g-import-not-at-top
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
  check_model(config.model_name, config.model)
  if _get(config, 'objective') == 'mae':
    _check_mae(config.model)
  check_section(config.optim, OPTIM_RULES, 'config.optim')
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
  try:
    sharding.axis_sizes(config.mesh, num_devices)
    # The granule count is known only on the machines; here: known axes, ints, at most one -1.
    dcn = dict(config.mesh.get('dcn') or {})
    sharding.axis_sizes(dcn, math.prod(s for s in dcn.values() if _is_int(s) and s > 0), 'config.mesh.dcn')
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if isinstance(config.sharding_rules, str) and config.sharding_rules not in ('dp', 'fsdp', 'tp'):
    raise ConfigError(f'config.sharding_rules={config.sharding_rules!r} is not one of dp, fsdp, tp (or a '
                      'list of (logical axis, mesh axes) pairs).')
  _check_distill(config)
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


def _check_distill(config: Any) -> None:
  """`config.distill`'s ranges; with `objective='distill'` a teacher that exists."""
  check_section(config.distill, DISTILL_RULES, 'config.distill')
  if config.objective != 'distill':
    return
  if not config.teacher:
    raise ConfigError("config.objective='distill' needs config.teacher: a workdir, .npz or timm/HF checkpoint.")
  if not epath.Path(config.teacher).exists():
    raise ConfigError(f'config.teacher={config.teacher!r} does not exist; fix the path.')


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
