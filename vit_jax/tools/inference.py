"""A trained ViT for the research tools: parameters from a published .npz or a training workdir, the model that
fits them, eval preprocessing of image files, and the one-line error handling of the tools' command lines.

Shared by `predict`, `visualize`, `fewshot` and `export`, so each of them reads a checkpoint the same way.
"""
import json
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from vit_jax import checkpoint
from vit_jax import extras
from vit_jax import interop
from vit_jax import models
from vit_jax import storage
from vit_jax.data import preprocess
from vit_jax.models import registry

Params = Dict[str, Any]


# ------------------------------------------------------------------------------------------------ checkpoints
def _load_workdir_params(workdir: epath.PathLike, ema: bool = False) -> Params:
  """The params (`ema`: their EMA) of a training workdir's newest checkpoint (`checkpoints/<step>/state`), as host
  numpy arrays.

  Reads the `state` item without a target tree, so neither the model, the optimizer nor the device count of the
  training run is needed; the newest step that reads wins, like the loop's own resume.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from vit_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  directory = checkpointing.checkpoint_dir(workdir)
  steps = sorted((int(d.name) for d in directory.iterdir() if d.name.isdigit()), reverse=True)
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {directory}; train first or pass a published .npz.')
  errors = []
  for step in steps:
    path = directory / str(step) / 'state'
    try:
      with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        tree = getattr(meta, 'item_metadata', meta)  # StepMetadata (newer orbax) or the tree metadata itself.
        tree = getattr(tree, 'tree', tree)
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        state = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
      return state['ema_params' if ema else 'params']
    except Exception as e:  # pylint: disable=broad-except  # Any failure to read: try the previous step.
      errors.append(f'step {step}: {type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e) else ""}')
  raise ValueError(f'No readable checkpoint in {directory} ({"; ".join(errors)}).')


def workdir_model(workdir: epath.PathLike, num_classes: int) -> models.VisionTransformer:
  """The model a workdir was trained with, rebuilt from its `config.json` as the training loop builds it."""
  path = epath.Path(workdir) / 'config.json'
  if not path.is_file():
    raise ValueError(f'{workdir} has no config.json naming its model; pass --model.')
  config = json.loads(path.read_text())
  model = models.build.build_model(config['model_name'], config['model'], num_classes)
  # Inference needs neither the training run's scan (params are loaded looped) nor a GPU-only kernel.
  impl = 'xla' if model.attention_impl == 'cudnn' and jax.default_backend() != 'gpu' else model.attention_impl
  return model.clone(scan=False, remat_policy='none', attention_impl=impl)


def load_params(path: epath.PathLike, *, ema: bool = False) -> Params:
  """Plain numpy params (looped `encoderblock_{i}` layout) from a published .npz or a training workdir (local
  or a URL; an MAE workdir gives its encoder, without the decoder; `ema`: the workdir's EMA params, which a run
  with `config.ema_decay` > 0 keeps)."""
  if not epath.Path(path).exists():
    raise FileNotFoundError(f'Checkpoint {path} does not exist; pass a .npz file or a training workdir.')
  params = _load_workdir_params(path, ema) if epath.Path(path).is_dir() else checkpoint.load(path)
  params = flax.core.unfreeze(params) if isinstance(params, flax.core.FrozenDict) else dict(params)
  params.pop('decoder', None)  # an MAE workdir: the decoder only serves pretraining; the encoder is a plain ViT
  if 'Transformer' in params:
    params = models.unstack_encoder_blocks(params)
  return params


# ------------------------------------------------------------------------------------------------ the model
def build_model(name: str, params: Optional[Params] = None, *, num_classes: Optional[int] = None,
                **overrides: Any) -> models.VisionTransformer:
  """The registered model `name` with as many classes as the checkpoint's head (0 = pre-logits features)."""
  if num_classes is None:
    num_classes = int(params['head']['kernel'].shape[-1]) if params and 'head' in params else 0
  try:
    return registry.get_model(name, num_classes=num_classes, **overrides)
  except ValueError as e:
    raise ValueError(f'--model: {e}') from None


def _total_stride(model: models.VisionTransformer) -> int:
  patch = tuple(model.patches['size'])
  if patch[0] != patch[1]:
    raise ValueError(f'Non-square patches {patch} are not supported by the tools.')
  stride = patch[0]
  if model.resnet is not None:
    stride *= 4 * 2**max(0, len(model.resnet['num_layers']) - 1)
  return stride


def num_prefix_tokens(model: models.VisionTransformer) -> int:
  """Tokens in front of the patch grid (the class token, then the registers)."""
  return (1 if model.classifier in ('token', 'token_unpooled') else 0) + model.num_registers


def image_size(model: models.VisionTransformer, params: Params, default: int = 224) -> int:
  """The resolution the checkpoint was trained at, read from its position embeddings (else `default`)."""
  try:
    tokens = params['Transformer']['posembed_input']['pos_embedding'].shape[1]
  except (KeyError, TypeError):
    return default
  side = int(round(np.sqrt(tokens - num_prefix_tokens(model))))
  if side * side != tokens - num_prefix_tokens(model):
    raise ValueError(f'The checkpoint\'s {tokens} position embeddings do not make a square patch grid for '
                     f'{model.model_name} ({model.classifier} pooling); pass the --model it was trained as.')
  return side * _total_stride(model)


def grid_shape(model: models.VisionTransformer, size: int) -> Tuple[int, int]:
  """The (h, w) patch grid for size x size inputs."""
  return size // _total_stride(model), size // _total_stride(model)


def check_fits(model: models.VisionTransformer, params: Params, size: int, what: str = 'checkpoint') -> None:
  """Raises a one-line ValueError naming the first parameter whose shape differs from what `model` wants."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                             train=False))['params']
  want = flax.traverse_util.flatten_dict(shapes, sep='/')
  have = flax.traverse_util.flatten_dict(params, sep='/')
  for key in sorted(want):
    if key not in have:
      raise ValueError(f'The {what} does not fit {model.model_name}: it lacks {key}; pass the --model it was '
                       f'trained as.')
    if tuple(np.shape(have[key])) != tuple(want[key].shape):
      raise ValueError(f'The {what} does not fit {model.model_name}: {key} has shape {np.shape(have[key])}, '
                       f'the model wants {want[key].shape}; pass the --model it was trained as.')


def load_model(checkpoint: str, model_name: Optional[str] = None, *, num_classes: Optional[int] = None,
               size: Optional[int] = None) -> Tuple[models.VisionTransformer, Params, int]:
  """(model, params, image size) for a checkpoint, checked to fit.

  The model is `model_name` from the model table, or, for a training workdir without one, the workdir's own; a
  timm or HF checkpoint describes its own (`model_name`: the timm architecture of a bare state dict).
  """
  if interop.is_foreign(checkpoint):
    model, params, preprocess = interop.load(checkpoint, model_name, image_size=size, num_classes=num_classes)
    return model, params, preprocess.size[0]
  params = load_params(checkpoint)
  if model_name is None and not epath.Path(checkpoint).is_dir():
    raise ValueError(f'Pass --model: the model of {checkpoint} is not recorded with it.')
  if model_name is None:
    head = int(params['head']['kernel'].shape[-1]) if 'head' in params else 0
    model = workdir_model(checkpoint, head if num_classes is None else num_classes)
  else:
    model = build_model(model_name, params, num_classes=num_classes)
  size = size or image_size(model, params)
  if size % _total_stride(model):
    raise ValueError(f'--image_size {size} is not a multiple of {model.model_name}\'s patch stride '
                     f'{_total_stride(model)}.')
  check_fits(model, params, size, what=f'checkpoint {checkpoint}')
  return model, params, size


# ------------------------------------------------------------------------------------------------ images
def load_image(path: str, size: int, resize: Optional[int] = None) -> np.ndarray:
  """An image file as the model's eval input: float32 (size, size, 3) in [-1, 1].

  The smaller side is resized to `resize` (default `size`), then the central size x size window is kept.
  """
  resize = resize or size
  if resize < size:
    raise ValueError(f'--resize {resize} is smaller than the crop {size}.')
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f'Image {path} does not exist.')
  img = preprocess.resize_small(preprocess.decode(epath.Path(path).read_bytes(), name=path), resize, name=path)
  return preprocess.value_range(preprocess.central_crop(img, size))


def to_uint8(image: np.ndarray) -> np.ndarray:
  """A [-1, 1] float image as uint8, for drawing."""
  return np.clip(np.round((np.asarray(image) + 1) * 127.5), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ CLIs
def run_cli(main: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None) -> int:
  """Runs a tool's `main`, turning user errors (bad paths, images, checkpoints) into one line and exit code 2."""
  storage.configure()
  try:
    return main(sys.argv[1:] if argv is None else argv)
  except (ValueError, OSError, extras.MissingExtra) as e:  # FileNotFoundError is an OSError.
    print(f'error: {e}', file=sys.stderr)
    return 2
