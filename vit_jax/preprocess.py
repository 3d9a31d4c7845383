"""Per-example and per-batch preprocessing ops (numpy + PIL; no TensorFlow), composed from the `pp` config.

Every random op takes a `np.random.Generator` that the pipeline derives from (seed, example index) or
(seed, step), so a resumed run redoes exactly the same augmentation.

`pp` keys (all optional except where the pipeline says otherwise):
  train, test        split strings, e.g. 'train[:99%]', 'test' (defaults 'train' / 'test').
  crop               output side in pixels (default 224; the digits' native 8, synthetic's 224).
  train_crop         'inception' (random resized crop, default), 'resize_crop' (resize to `resize`,
                     then a random `crop` x `crop` window: vit_jax fine-tuning) or 'resize' (resize to crop).
  area_range         inception crop: fraction of the image area kept, default (0.08, 1.0).
  aspect_range       inception crop: width/height ratio range, default (3/4, 4/3).
  resize             'resize_crop' train side, and the smaller side for eval 'resize_small_crop'
                     (default: crop * 8 / 7, i.e. 256 for 224).
  eval_crop          'resize_small_crop' (resize smaller side to `resize`, central crop; default) or
                     'resize' (resize to crop x crop: vit_jax's eval).
  flip               random horizontal flip for training (default True; digits False).
  randaug            RandAugment (num_layers, magnitude 0..10), e.g. (2, 10); default None = off.
  mixup              mixup Beta(alpha, alpha) concentration; 0 (default) = off.
  cutmix             cutmix Beta(alpha, alpha) concentration; 0 (default) = off. With both on, each batch
                     uses one of the two, chosen with equal odds.
  mix_prob           probability that a batch is mixed at all (default 1.0).
  label_smoothing    one-hot: y * (1 - s) + s / num_classes; multi-hot: y * (1 - s) + s / 2 (default 0).
  value_range        output pixel range (default (-1, 1)).
  num_classes        synthetic only: number of classes (default 1000).
  num_train, num_eval  synthetic only: split sizes (default 1,281,167 and 50,000, ImageNet's).
  workers            grain worker processes for decoding (default 0 = threads in this process).
  threads            grain reader threads per process (default: CPU count).
"""
import math
from typing import Any, Callable

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

Record = dict[str, Any]
_RESAMPLE = Image.Resampling.BILINEAR
_FILL = (128, 128, 128)


class CorruptImageError(ValueError):
  """An image that cannot be decoded; the message names the file."""


def decode(data: bytes | str | np.ndarray, name: str = '<image>') -> Image.Image:
  """Opens an encoded image (bytes or a path) or wraps a uint8 array, lazily (pixels not decoded yet)."""
  if isinstance(data, np.ndarray):
    return Image.fromarray(data)
  import io  # pylint: disable=g-import-not-at-top
  try:
    return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptImageError(f'Cannot read image {name}: {e}') from None


def load_rgb(img: Image.Image, name: str = '<image>') -> Image.Image:
  """Decodes the pixels and converts to RGB, raising CorruptImageError naming `name` on failure."""
  try:
    img.load()
    return img if img.mode == 'RGB' else img.convert('RGB')
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptImageError(f'Cannot decode image {name}: {e}') from None


def sample_inception_box(rng: np.random.Generator, width: int, height: int,
                         area_range: tuple[float, float] = (0.08, 1.0),
                         aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                         attempts: int = 10) -> tuple[int, int, int, int]:
  """Samples an Inception-style crop box (left, top, w, h) lying inside a width x height image."""
  area = width * height
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  # Fallback (as torchvision/TF): the largest central crop with an aspect ratio in range.
  ratio = width / height
  if ratio < aspect_range[0]:
    w, h = width, int(round(width / aspect_range[0]))
  elif ratio > aspect_range[1]:
    w, h = int(round(height * aspect_range[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def _undecoded_jpeg(img: Image.Image) -> bool:
  return getattr(img, 'format', None) == 'JPEG' and bool(getattr(img, 'tile', None))


def _draft(img: Image.Image, box: tuple[int, int, int, int], size: int) -> tuple[Image.Image, float]:
  """For a not-yet-decoded JPEG, decodes at the smallest DCT scale (1/2, 1/4, 1/8) keeping box >= size."""
  if not _undecoded_jpeg(img):
    return img, 1.0
  _, _, w, h = box
  reduce = 1
  while reduce < 8 and min(w, h) / (reduce * 2) >= size:
    reduce *= 2
  if reduce == 1:
    return img, 1.0
  width = img.size[0]
  img.draft('RGB', (math.ceil(img.size[0] / reduce), math.ceil(img.size[1] / reduce)))
  return img, img.size[0] / width


def random_resized_crop(img: Image.Image, rng: np.random.Generator, size: int,
                        area_range: tuple[float, float] = (0.08, 1.0),
                        aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                        name: str = '<image>') -> Image.Image:
  """Inception crop: a random box (area and aspect in range) resized to size x size."""
  box = sample_inception_box(rng, *img.size, area_range=area_range, aspect_range=aspect_range)
  img, scale = _draft(img, box, size)
  img = load_rgb(img, name)
  left, top, w, h = (v * scale for v in box)
  return img.resize((size, size), _RESAMPLE, box=(left, top, left + w, top + h))


def resize(img: Image.Image, size: int, name: str = '<image>') -> Image.Image:
  """Resizes to size x size (aspect not kept)."""
  img = load_rgb(img, name)
  return img if img.size == (size, size) else img.resize((size, size), _RESAMPLE)


def resize_small(img: Image.Image, size: int, name: str = '<image>') -> Image.Image:
  """Resizes so that the smaller side is `size`, keeping the aspect ratio."""
  w, h = img.size
  s = size / min(w, h)
  new = (max(size, round(w * s)), max(size, round(h * s)))
  if _undecoded_jpeg(img):
    img.draft('RGB', new)
  img = load_rgb(img, name)
  return img if img.size == new else img.resize(new, _RESAMPLE)


def central_crop(img: Image.Image, size: int) -> Image.Image:
  """The central size x size window."""
  w, h = img.size
  if w < size or h < size:
    raise ValueError(f'central_crop: image {w}x{h} is smaller than the crop {size}; resize first.')
  left, top = (w - size) // 2, (h - size) // 2
  return img.crop((left, top, left + size, top + size))


def random_crop(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
  """A uniformly placed size x size window."""
  w, h = img.size
  if w < size or h < size:
    raise ValueError(f'random_crop: image {w}x{h} is smaller than the crop {size}; set pp.resize >= crop.')
  left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
  return img.crop((left, top, left + size, top + size))


def random_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
  """Mirrors left-right with probability 1/2."""
  return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def value_range(img: Image.Image | np.ndarray, vmin: float = -1., vmax: float = 1.) -> np.ndarray:
  """uint8 pixels to float32 in [vmin, vmax]."""
  x = np.asarray(img, dtype=np.float32)
  return x * np.float32((vmax - vmin) / 255) + np.float32(vmin)


# ---------------------------------------------------------------------------------------------- RandAugment
# Magnitudes follow the TF/big_vision RandAugment: level in [0, 10] maps linearly onto each op's range.
def _level(m: float, hi: float, rng: np.random.Generator, signed: bool = True) -> float:
  v = m / 10 * hi
  return -v if signed and rng.random() < 0.5 else v


def _affine(img, matrix):
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.NEAREST,
                       fillcolor=_FILL)


_RANDAUG_OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    'AutoContrast': lambda img, m, rng: ImageOps.autocontrast(img),
    'Equalize': lambda img, m, rng: ImageOps.equalize(img),
    'Invert': lambda img, m, rng: ImageOps.invert(img),
    'Rotate': lambda img, m, rng: img.rotate(_level(m, 30, rng), fillcolor=_FILL),
    'Posterize': lambda img, m, rng: ImageOps.posterize(img, max(1, 8 - int(m / 10 * 4))),
    'Solarize': lambda img, m, rng: ImageOps.solarize(img, 256 - int(m / 10 * 256)),
    'SolarizeAdd': lambda img, m, rng: Image.fromarray(np.where(
        np.asarray(img) < 128, np.minimum(np.asarray(img, np.int32) + int(m / 10 * 110), 255),
        np.asarray(img)).astype(np.uint8)),
    'Color': lambda img, m, rng: ImageEnhance.Color(img).enhance(1 + _level(m, 0.9, rng)),
    'Contrast': lambda img, m, rng: ImageEnhance.Contrast(img).enhance(1 + _level(m, 0.9, rng)),
    'Brightness': lambda img, m, rng: ImageEnhance.Brightness(img).enhance(1 + _level(m, 0.9, rng)),
    'Sharpness': lambda img, m, rng: ImageEnhance.Sharpness(img).enhance(1 + _level(m, 0.9, rng)),
    'ShearX': lambda img, m, rng: _affine(img, (1, _level(m, 0.3, rng), 0, 0, 1, 0)),
    'ShearY': lambda img, m, rng: _affine(img, (1, 0, 0, _level(m, 0.3, rng), 1, 0)),
    'TranslateX': lambda img, m, rng: _affine(img, (1, 0, _level(m, 0.45, rng) * img.size[0], 0, 1, 0)),
    'TranslateY': lambda img, m, rng: _affine(img, (1, 0, 0, 0, 1, _level(m, 0.45, rng) * img.size[1])),
}
RANDAUG_OPS = tuple(_RANDAUG_OPS)


def randaugment(img: Image.Image, rng: np.random.Generator, num_layers: int = 2,
                magnitude: float = 10, ops: tuple[str, ...] = RANDAUG_OPS) -> Image.Image:
  """RandAugment (Cubuk et al. 2019): `num_layers` ops drawn uniformly, each at `magnitude` (0..10)."""
  for i in rng.integers(0, len(ops), size=num_layers):
    img = _RANDAUG_OPS[ops[i]](img, magnitude, rng)
  return img


# ------------------------------------------------------------------------------------------------- labels
def one_hot(label: int, num_classes: int, smoothing: float = 0.) -> np.ndarray:
  """One-hot float32 vector with label smoothing y * (1 - s) + s / num_classes."""
  y = np.full((num_classes,), smoothing / num_classes, np.float32)
  y[label] += 1 - smoothing
  return y


def multi_hot(labels: Any, num_classes: int, smoothing: float = 0.) -> np.ndarray:
  """Multi-hot float32 vector; smoothing pulls each binary target towards 1/2."""
  y = np.zeros((num_classes,), np.float32)
  y[np.asarray(labels, np.int64).reshape(-1)] = 1
  return y * (1 - smoothing) + smoothing / 2


# ------------------------------------------------------------------------------------------- batch level
def mixup(batch: Record, rng: np.random.Generator, alpha: float) -> Record:
  """Mixup: each example is lam * itself + (1 - lam) * its neighbour (batch rolled by one), lam ~ Beta."""
  lam = np.float32(rng.beta(alpha, alpha))
  out = dict(batch)
  for k in ('image', 'label'):
    x = batch[k]
    out[k] = lam * x + (1 - lam) * np.roll(x, 1, axis=0)
  return out


def cutmix(batch: Record, rng: np.random.Generator, alpha: float) -> Record:
  """CutMix: a box of area ~(1 - lam) is pasted from the neighbour; labels mix by the actual box area."""
  img = batch['image']
  _, h, w, _ = img.shape
  lam = rng.beta(alpha, alpha)
  ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
  cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
  y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
  x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
  out = dict(batch)
  out['image'] = img.copy()
  out['image'][:, y0:y1, x0:x1] = np.roll(img, 1, axis=0)[:, y0:y1, x0:x1]
  kept = np.float32(1 - (y1 - y0) * (x1 - x0) / (h * w))
  out['label'] = kept * batch['label'] + (1 - kept) * np.roll(batch['label'], 1, axis=0)
  return out


def mix_batch(batch: Record, rng: np.random.Generator, pp: Any) -> Record:
  """Applies mixup or cutmix as `pp` asks (see the module docstring)."""
  alphas = [(f, a) for f, a in ((mixup, pp.get('mixup', 0.)), (cutmix, pp.get('cutmix', 0.))) if a]
  if not alphas or rng.random() >= pp.get('mix_prob', 1.):
    return batch
  fn, alpha = alphas[int(rng.integers(0, len(alphas)))]
  return fn(batch, rng, alpha)


# ---------------------------------------------------------------------------------------- composed ops
def _image_of(rec: Record) -> Image.Image:
  name = rec.get('name', '<image>')
  if 'image' in rec:
    return decode(np.asarray(rec['image']), name)
  return decode(rec['image_bytes'] if 'image_bytes' in rec else rec['path'], name)


def _label_of(rec: Record, num_classes: int, multi_label: bool, smoothing: float) -> np.ndarray:
  if multi_label:
    return multi_hot(rec['label'], num_classes, smoothing)
  return one_hot(rec['label'], num_classes, smoothing)


def train_example(rec: Record, rng: np.random.Generator, pp: Any, num_classes: int,
                  multi_label: bool = False) -> Record:
  """decode -> train crop -> flip -> RandAugment -> value range; label -> (smoothed) one/multi-hot."""
  name = rec.get('name', '<image>')
  img = _image_of(rec)
  crop = pp['crop']
  mode = pp.get('train_crop', 'inception')
  if mode == 'inception':
    img = random_resized_crop(img, rng, crop, tuple(pp.get('area_range', (0.08, 1.))),
                              tuple(pp.get('aspect_range', (3 / 4, 4 / 3))), name=name)
  elif mode == 'resize_crop':
    img = random_crop(resize(img, pp.get('resize', default_resize(crop)), name), rng, crop)
  elif mode == 'resize':
    img = resize(img, crop, name)
  else:
    raise ValueError(f"pp.train_crop={mode!r} is unknown: use 'inception', 'resize_crop' or 'resize'.")
  if pp.get('flip', True):
    img = random_flip(img, rng)
  if pp.get('randaug'):
    img = randaugment(img, rng, *pp['randaug'])
  return {'image': value_range(img, *pp.get('value_range', (-1., 1.))),
          'label': _label_of(rec, num_classes, multi_label, pp.get('label_smoothing', 0.)),
          'id': rec['id']}


def eval_example(rec: Record, pp: Any, num_classes: int, multi_label: bool = False) -> Record:
  """decode -> resize-small + central crop (or plain resize) -> value range; label -> one/multi-hot."""
  name = rec.get('name', '<image>')
  img = _image_of(rec)
  crop = pp['crop']
  mode = pp.get('eval_crop', 'resize_small_crop')
  if mode == 'resize_small_crop':
    img = central_crop(resize_small(img, pp.get('resize', default_resize(crop)), name), crop)
  elif mode == 'resize':
    img = resize(img, crop, name)
  else:
    raise ValueError(f"pp.eval_crop={mode!r} is unknown: use 'resize_small_crop' or 'resize'.")
  return {'image': value_range(img, *pp.get('value_range', (-1., 1.))),
          'label': _label_of(rec, num_classes, multi_label, 0.), 'id': rec['id']}


def default_resize(crop: int) -> int:
  """The usual eval resize for a crop: 256 for 224 (ratio 8/7)."""
  return int(round(crop * 8 / 7))
