"""`load(path, arch=None)`: a checkpoint from timm, HF `transformers` or vit_jax -> (model, params, preprocess).

`path` is a timm state dict (`.safetensors`, `.pth`, `.bin`; `arch` names its timm architecture), a timm hub folder
or an HF folder (their `config.json` names the architecture), a published `.npz` (`arch`: our model name) or a
training workdir. `.safetensors` files are read with safetensors' numpy API: no torch at run time; `.pth` / `.bin`
need torch. The model takes our [-1, 1] images: a checkpoint trained on mean/std-normalised pixels gets
`pixel_mean` / `pixel_std`, which the model applies itself, so every tool and the training pipeline feed it as
they feed ours.
"""
import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from etils import epath

from vit_jax.interop import hf
from vit_jax.interop import resample
from vit_jax.interop import timm as timm_map
from vit_jax.models import vit

POSEMB_KEY = 'Transformer/posembed_input/pos_embedding'
_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'open_clip_model.safetensors')
# Our spec keys that are not `VisionTransformer` fields.
_SPEC_ONLY = ('image_size', 'no_embed_class', 'num_classes')


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """A checkpoint's evaluation preprocessing: resize the smaller side to size / crop_pct (`interpolation`), keep
  the central size x size, scale to [-1, 1]; the model applies `mean` / `std` itself (`pixel_mean`)."""
  size: Tuple[int, int]
  crop_pct: float = 1.0
  interpolation: str = 'bicubic'
  mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: Tuple[float, float, float] = (0.5, 0.5, 0.5)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3) in [-1, 1]."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    img = Image.fromarray(np.asarray(image, np.uint8))
    h, w = self.size
    short = int(round(min(h, w) / self.crop_pct))
    scale = short / min(img.size)
    resample_mode = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}.get(self.interpolation, Image.BICUBIC)
    img = img.resize((max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))), resample_mode)
    left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
    x = np.asarray(img.crop((left, top, left + w, top + h)), np.float32)
    return x / 127.5 - 1.


class Checkpoint:
  """A foreign checkpoint read into our vocabulary: timm-named arrays, our spec, its eval preprocessing."""

  def __init__(self, sd: Dict[str, np.ndarray], spec: Dict[str, Any], preprocess: Dict[str, Any],
               antialias: bool):
    self.sd, self.spec, self.preprocess = sd, spec, preprocess
    self.antialias = antialias  # how its library resamples position embeddings (timm: antialiased bicubic)


def _read_state_dict(path: epath.Path) -> Dict[str, np.ndarray]:
  """A .safetensors (numpy, no torch) or a torch .pth / .bin state dict, as float32 numpy arrays."""
  if path.suffix == '.safetensors':
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      raw = load_file(os.fspath(path))
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype in safetensors' numpy API
      raw = _read_safetensors_bf16(path)
    return {k: np.asarray(v, np.float32) for k, v in raw.items()}
  if path.suffix in ('.pth', '.bin', '.pt'):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f'{path} is a PyTorch pickle: reading it needs torch (pip install torch), or convert it to '
                       '.safetensors.') from None
    sd = torch.load(os.fspath(path), map_location='cpu', weights_only=True)
    for key in ('state_dict', 'model', 'module'):
      if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
        sd = sd[key]
    return {k: v.float().numpy() for k, v in sd.items() if hasattr(v, 'float')}
  raise ValueError(f'{path}: not a checkpoint vit_jax reads (.safetensors, .pth, .bin, .npz, a timm or HF folder, '
                   'a training workdir).')


def _read_safetensors_bf16(path: epath.Path) -> Dict[str, np.ndarray]:
  """safetensors with bfloat16 tensors, through ml_dtypes (safetensors' numpy API has no bfloat16)."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  data = path.read_bytes()
  n = int.from_bytes(data[:8], 'little')
  header = json.loads(data[8:8 + n])
  dtypes = {'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'F64': np.float64}
  out = {}
  for key, info in header.items():
    if key == '__metadata__':
      continue
    start, end = info['data_offsets']
    out[key] = np.frombuffer(data[8 + n + start:8 + n + end], dtypes[info['dtype']]).reshape(info['shape'])
  return out


def _folder_weights(folder: epath.Path) -> Dict[str, np.ndarray]:
  index = folder / 'model.safetensors.index.json'
  if index.is_file():  # sharded
    files = sorted(set(json.loads(index.read_text())['weight_map'].values()))
    return {k: v for f in files for k, v in _read_state_dict(folder / f).items()}
  for name in _WEIGHT_FILES:
    if (folder / name).is_file():
      return _read_state_dict(folder / name)
  raise FileNotFoundError(f'{folder} has no {" or ".join(_WEIGHT_FILES)}.')


def _timm_checkpoint(sd: Dict[str, np.ndarray], arch: str, model_args: Optional[Mapping[str, Any]],
                     pretrained_cfg: Optional[Mapping[str, Any]] = None) -> Checkpoint:
  spec = timm_map.describe(sd, arch, model_args)
  pp = timm_map.default_preprocess(arch)
  if pretrained_cfg:
    pp.update({k: pretrained_cfg[k] for k in ('mean', 'std', 'crop_pct', 'interpolation') if k in pretrained_cfg})
  return Checkpoint(sd, spec, pp, antialias=True)


def read(path: epath.PathLike, arch: Optional[str] = None,
         model_args: Optional[Mapping[str, Any]] = None) -> Checkpoint:
  """A timm or HF checkpoint (file or folder) as a `Checkpoint`; see the module docstring."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'Checkpoint {path} does not exist.')
  if path.is_file() and (path.parent / 'config.json').is_file() and path.suffix != '.npz' and arch is None:
    path = path.parent  # a weights file inside its timm / HF folder
  if path.is_dir():
    if not (path / 'config.json').is_file():
      raise ValueError(f'{path} has no config.json; pass a timm or HF folder, a weights file with arch=, or a '
                       'training workdir.')
    config = json.loads((path / 'config.json').read_text())
    sd = _folder_weights(path)
    if 'architecture' in config:  # timm hub layout
      args = {**config.get('model_args', {}), **(model_args or {})}
      return _timm_checkpoint(sd, config['architecture'], args, config.get('pretrained_cfg'))
    if 'model_type' in config:  # transformers
      processor = path / 'preprocessor_config.json'
      processor = json.loads(processor.read_text()) if processor.is_file() else None
      renamed, args = hf.to_timm(sd, config)
      fam = hf.family(hf.vision_config(config))
      spec = timm_map.describe(renamed, fam, {**args, **(model_args or {})})
      return Checkpoint(renamed, spec, hf.default_preprocess(config, processor), hf.antialias(config))
    raise ValueError(f'{path}/config.json names neither a timm architecture nor a transformers model_type.')
  if not arch:
    raise ValueError(f'{path} is a bare state dict: pass arch=<timm architecture name> (config.model_init_arch; '
                     '--model for the tools), e.g. vit_small_patch14_reg4_dinov2.')
  return _timm_checkpoint(_read_state_dict(path), arch, model_args)


def is_foreign(path: epath.PathLike) -> bool:
  """Whether `path` is a timm / HF checkpoint (not a published .npz or one of our training workdirs)."""
  path = epath.Path(path)
  if path.is_dir():
    config = path / 'config.json'
    if not config.is_file():
      return False
    keys = json.loads(config.read_text())
    return 'architecture' in keys or 'model_type' in keys
  return path.suffix in ('.safetensors', '.pth', '.bin', '.pt')


def model_kwargs(spec: Mapping[str, Any], preprocess: Mapping[str, Any]) -> Dict[str, Any]:
  """`VisionTransformer` kwargs of a spec (no num_classes), with the checkpoint's pixel statistics."""
  kwargs = {k: v for k, v in spec.items() if k not in _SPEC_ONLY}
  mean, std = tuple(float(v) for v in preprocess['mean']), tuple(float(v) for v in preprocess['std'])
  if (mean, std) != ((0.5,) * 3, (0.5,) * 3):  # [-1, 1] is ours already
    kwargs.update(pixel_mean=mean, pixel_std=std)
  return kwargs


def config_model(spec: Mapping[str, Any], preprocess: Mapping[str, Any]) -> Dict[str, Any]:
  """The `config.model` keys that rebuild the checkpoint's model (its architecture; not the head)."""
  kw = model_kwargs(spec, preprocess)
  tr = kw['transformer']
  out = {'patch_size': int(kw['patches']['size'][0]), 'hidden_size': kw['hidden_size'],
         'num_layers': tr['num_layers'], 'num_heads': tr['num_heads'], 'mlp_dim': tr['mlp_dim'],
         'classifier': kw['classifier'], 'representation_size': kw.get('representation_size') or 0,
         'resnet_num_layers': None}
  for key in ('num_registers', 'layer_scale_init', 'qk_norm', 'use_bias', 'mlp_activation', 'norm_eps',
              'pre_norm', 'fc_norm', 'projection_dim', 'pixel_mean', 'pixel_std'):
    if key in kw:
      out[key] = kw[key]
  return out


def to_params(ckpt: Checkpoint, image_size: Optional[Tuple[int, int]] = None) -> Dict[str, Any]:
  """Our params of a `Checkpoint`, position embeddings resampled to `image_size` as its own library does (timm:
  bicubic with antialiasing; transformers: without)."""
  params = timm_map.to_params(ckpt.sd, ckpt.spec)
  if image_size is not None and tuple(image_size) != tuple(ckpt.spec['image_size']):
    patch = ckpt.spec['patches']['size']
    old = tuple(s // p for s, p in zip(ckpt.spec['image_size'], patch))
    new = tuple(s // p for s, p in zip(image_size, patch))
    prefix = int('cls' in params) + (params['reg'].shape[1] if 'reg' in params else 0)
    enc = params['Transformer']['posembed_input']
    enc['pos_embedding'] = resample.resample_posemb(enc['pos_embedding'], old, new, prefix,
                                                    antialias=ckpt.antialias)
  return params


def load(path: epath.PathLike, arch: Optional[str] = None, *, image_size: Optional[Any] = None,
         num_classes: Optional[int] = None, model_args: Optional[Mapping[str, Any]] = None
         ) -> Tuple[vit.VisionTransformer, Dict[str, Any], Preprocess]:
  """(model, params, preprocess) of a checkpoint from timm, HF or vit_jax; see the module docstring.

  `image_size` (int or (h, w)) resamples the position embeddings; `num_classes` replaces a head (fresh zeros) or
  drops it (0); `model_args` overrides timm's (e.g. num_heads of a non-standard width).
  """
  if not is_foreign(path):
    return _load_ours(path, arch, image_size, num_classes)
  ckpt = read(path, arch, model_args)
  size = None if image_size is None else ((image_size,) * 2 if np.ndim(image_size) == 0 else tuple(image_size))
  params = to_params(ckpt, size)
  head = ckpt.spec['num_classes']
  if num_classes is not None and num_classes != head:
    params.pop('head', None)
    if num_classes:
      width = ckpt.spec.get('projection_dim') or ckpt.spec.get('representation_size') or ckpt.spec['hidden_size']
      params['head'] = {'kernel': np.zeros((width, num_classes), np.float32),
                        'bias': np.zeros((num_classes,), np.float32)}
    head = num_classes
  model = vit.VisionTransformer(num_classes=head, **model_kwargs(ckpt.spec, ckpt.preprocess))
  pp = ckpt.preprocess
  preprocess = Preprocess(size=tuple(size or ckpt.spec['image_size']), crop_pct=float(pp['crop_pct']),
                          interpolation=str(pp['interpolation']), mean=tuple(pp['mean']), std=tuple(pp['std']))
  return model, params, preprocess


def _load_ours(path: epath.PathLike, arch: Optional[str], image_size: Optional[Any],
               num_classes: Optional[int]) -> Tuple[vit.VisionTransformer, Dict[str, Any], Preprocess]:
  """A published .npz (arch = our model name) or a training workdir, through the research tools' loader."""
  from vit_jax.tools import inference  # pylint: disable=g-import-not-at-top
  size = None if image_size is None else int(image_size if np.ndim(image_size) == 0 else image_size[0])
  model, params, size = inference.load_model(os.fspath(path), arch, num_classes=num_classes, size=size)
  mean = tuple(model.pixel_mean) if model.pixel_mean else (0.5,) * 3
  std = tuple(model.pixel_std) if model.pixel_std else (0.5,) * 3
  return model, params, Preprocess(size=(size, size), mean=mean, std=std)
