"""Per-example and per-batch preprocessing ops (numpy + PIL; no TensorFlow), composed from the `pp` config.

Every random op takes a `np.random.Generator` that the pipeline derives from (seed, example index), so a
resumed run redoes exactly the same augmentation. Per-example ops return uint8 images and integer labels (a class
index, or a multi-label set's packed bits: `label_bits`); the devices turn batches of them into floats, targets
and mixes (`vit_jax.data.mixing`), or `finish_batch` does it on the host for host-side users.

Resizing uses area averaging (PIL BOX) when shrinking and bilinear when enlarging; JPEGs are decoded
with PIL's draft flag (integer-fast IDCT, as tf.io.decode_jpeg by default) and at 1/2, 1/4 or 1/8 DCT
scale when the crop box is still at least the output size after it.

The training inception crop of a JPEG takes a faster path when simplejpeg and OpenCV are installed:
libjpeg-turbo decode with tf.io.decode_jpeg's options (at the same 1/2, 1/4 or 1/8 DCT scale, which is
what antialiases a shrink of 2x or more) and OpenCV's SIMD bilinear resize of the box on uint8, as
tf.image.resize's default (not antialiased below 2x). Where the `_jpegcrop` extension is built (setup.py), only
the box is decoded, as big_vision's decode_and_crop_jpeg does (rows below it are never read, rows above are
only entropy-decoded): the same pixels as slicing a whole decode, ~25% less decode time on average for the
inception crop. Everything else (PNG, eval, the other crops) and any JPEG libjpeg warns about goes through
PIL, which decodes it or names it as corrupt; a JPEG without its end marker (truncated?) is decoded whole,
so a truncated file is named whatever box was drawn. Damage below the box goes unseen: those pixels are
not used.

The `pp` keys these ops read (crop, train_crop, resize, eval_crop, flip, randaug, ...) are documented once, in
the config (`vit_jax/configs/common.py`, generated into docs/config.md); the RandAugment variants are explained at its section below.
"""
import math
from typing import Any, Callable

import numpy as np
from etils import epath
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

from vit_jax import storage

# Optional speed-ups of the training crop (see the module docstring); PIL does everything without them.
try:
  import cv2  # pylint: disable=g-import-not-at-top
  # One image per call, run in the pipeline's reader threads: OpenCV's own thread pool would only add
  # hand-off overhead (and CPU time) to a 224x224 resize.
  cv2.setNumThreads(1)
except ImportError:
  cv2 = None
try:
  import simplejpeg  # pylint: disable=g-import-not-at-top
except ImportError:
  simplejpeg = None
try:  # Built from _jpegcrop.c by `pip install` where libjpeg-turbo's headers are installed (see setup.py).
  from vit_jax.data import _jpegcrop  # pylint: disable=g-import-not-at-top
except ImportError:
  _jpegcrop = None

Record = dict[str, Any]
_BILINEAR = Image.Resampling.BILINEAR
_FILL = (128, 128, 128)


class CorruptImageError(ValueError):
  """An image that cannot be decoded; the message names the file."""


def decode(data: bytes | memoryview | str | np.ndarray, name: str = '<image>') -> Image.Image:
  """Opens an encoded image (bytes or a path) or wraps a uint8 array, lazily (pixels not decoded yet)."""
  if isinstance(data, np.ndarray):
    return Image.fromarray(data)
  import io  # pylint: disable=g-import-not-at-top
  try:
    return Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptImageError(f'Cannot read image {name}: {e}') from None


def load_rgb(img: Image.Image, name: str = '<image>') -> Image.Image:
  """Decodes the pixels and converts to RGB, raising CorruptImageError naming `name` on failure."""
  if _undecoded_jpeg(img) and not img.decoderconfig:
    # PIL's draft flag: integer-fast IDCT (tf.io.decode_jpeg's default too) and plain chroma upsampling.
    img.draft('RGB', None)
    img.decoderconfig = (1, 1)
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


def read_bytes(path: Any) -> bytes:
  """A file's bytes: a URL (an image folder in a bucket) through epath, a local path with plain open (3x cheaper
  per small file than epath's path object)."""
  if storage.is_remote(path):
    return epath.Path(path).read_bytes()
  with open(path, 'rb') as f:
    return f.read()


def _undecoded_jpeg(img: Image.Image) -> bool:
  return getattr(img, 'format', None) == 'JPEG' and bool(getattr(img, 'tile', None))


def _dct_reduction(box: tuple[int, int, int, int], size: int) -> int:
  """The largest JPEG DCT scale-down (1, 2, 4 or 8) that keeps the box at least size x size."""
  _, _, w, h = box
  reduce = 1
  while reduce < 8 and min(w, h) / (reduce * 2) >= size:
    reduce *= 2
  return reduce


def _draft(img: Image.Image, box: tuple[int, int, int, int], size: int) -> tuple[Image.Image, float]:
  """For a not-yet-decoded JPEG, decodes at the smallest DCT scale (1/2, 1/4, 1/8) keeping box >= size."""
  if not _undecoded_jpeg(img):
    return img, 1.0
  reduce = _dct_reduction(box, size)
  if reduce == 1:
    return img, 1.0
  width = img.size[0]
  img.draft('RGB', (math.ceil(img.size[0] / reduce), math.ceil(img.size[1] / reduce)))
  img.decoderconfig = (img.decoderconfig[0], 1)  # Fast IDCT, as in load_rgb.
  return img, img.size[0] / width


def _resample(src_w: float, src_h: float, w: int, h: int) -> Image.Resampling:
  """Area averaging (BOX) when shrinking both sides: antialiased and ~1.5x cheaper than bilinear."""
  return Image.Resampling.BOX if src_w >= w and src_h >= h else _BILINEAR


def random_resized_crop(img: Image.Image, rng: np.random.Generator, size: int,
                        area_range: tuple[float, float] = (0.08, 1.0),
                        aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
                        name: str = '<image>') -> Image.Image:
  """Inception crop: a random box (area and aspect in range) resized to size x size."""
  box = sample_inception_box(rng, *img.size, area_range=area_range, aspect_range=aspect_range)
  return _crop_resize(img, box, size, name)


def _crop_resize(img: Image.Image, box: tuple[int, int, int, int], size: int, name: str) -> Image.Image:
  """Decodes `img` (at a DCT scale if the box allows) and resizes the box to size x size."""
  img, scale = _draft(img, box, size)
  img = load_rgb(img, name)
  left, top, w, h = (v * scale for v in box)
  return img.resize((size, size), _resample(w, h, size, size), box=(left, top, left + w, top + h))


def _jpeg_bytes(rec: Record) -> bytes | None:
  """The encoded bytes of a record's image when it is a JPEG for the fast path, else None."""
  if cv2 is None or simplejpeg is None or 'image' in rec:
    return None
  data = rec.get('image_bytes')
  if data is None:
    try:
      data = read_bytes(rec['path'])
    except OSError:
      return None  # PIL reopens it and raises CorruptImageError naming the file.
  return data if data[:2] == b'\xff\xd8' else None


def _fast_random_resized_crop(data: bytes, rng: np.random.Generator, size: int,
                              area_range: tuple[float, float], aspect_range: tuple[float, float],
                              name: str) -> np.ndarray | Image.Image:
  """random_resized_crop of a JPEG: libjpeg-turbo decode at the same DCT scale, bilinear resize on uint8."""
  # strict=True: a libjpeg warning (a truncated or damaged file) raises, and PIL then decodes the file
  # or names it as corrupt, exactly as without the fast path.
  try:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data, strict=True)
  except ValueError:
    return random_resized_crop(decode(data, name), rng, size, area_range, aspect_range, name)
  box = sample_inception_box(rng, width, height, area_range=area_range, aspect_range=aspect_range)
  reduce = _dct_reduction(box, size)
  out_w, out_h = -(-width // reduce), -(-height // reduce)
  scale = out_w / width
  left, top, w, h = (round(v * scale) for v in box)
  w, h = min(w, out_w - left), min(h, out_h - top)
  try:
    if _jpegcrop is not None and data[-2:] == _EOI:
      window = _decode_window(data, reduce, left, top, w, h, out_w)
    else:  # No extension, or no end marker (maybe truncated): the whole file, strictly.
      # Fast integer IDCT and fancy upsampling: tf.io.decode_jpeg's defaults.
      pixels = simplejpeg.decode_jpeg(data, 'RGB', fastdct=True, fastupsample=False, strict=True,
                                      min_height=out_h, min_width=out_w)
      window = pixels[top:top + h, left:left + w]
  except ValueError:
    return _crop_resize(decode(data, name), box, size, name)
  return cv2.resize(window, (size, size), interpolation=cv2.INTER_LINEAR)


_EOI = b'\xff\xd9'
# Margin decoded around the window: fancy upsampling treats a window's first and last columns as image edges,
# so the pixels of a chroma sample there would differ from a whole-image decode; 8 columns cover any sampling.
_WINDOW_MARGIN = 8


def _decode_window(data: bytes, reduce: int, left: int, top: int, w: int, h: int, out_w: int) -> np.ndarray:
  """Pixels [top, top + h) x [left, left + w) of the JPEG decoded at 1/reduce, equal to slicing a whole decode."""
  lo, hi = max(0, left - _WINDOW_MARGIN), min(out_w, left + w + _WINDOW_MARGIN)
  pixels, x0, columns = _jpegcrop.decode(data, reduce, lo, top, hi - lo, h)
  return np.frombuffer(pixels, np.uint8).reshape(h, columns, 3)[:, left - x0:left - x0 + w]


def resize(img: Image.Image, size: int, name: str = '<image>') -> Image.Image:
  """Resizes to size x size (aspect not kept)."""
  img = load_rgb(img, name)
  return img if img.size == (size, size) else img.resize((size, size), _resample(*img.size, size, size))


def resize_small(img: Image.Image, size: int, name: str = '<image>') -> Image.Image:
  """Resizes so that the smaller side is `size`, keeping the aspect ratio."""
  w, h = img.size
  s = size / min(w, h)
  new = (max(size, round(w * s)), max(size, round(h * s)))
  if _undecoded_jpeg(img):
    img.draft('RGB', new)
  img = load_rgb(img, name)
  return img if img.size == new else img.resize(new, _resample(*img.size, *new))


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


def random_flip(img: Image.Image | np.ndarray, rng: np.random.Generator) -> Image.Image | np.ndarray:
  """Mirrors left-right with probability 1/2 (a PIL image or an HxWxC array)."""
  if rng.random() >= 0.5:
    return img
  if isinstance(img, np.ndarray):
    # A contiguous copy: numpy copies (and batches) a negative-stride view ~15x slower than this SIMD flip.
    return cv2.flip(img, 1) if cv2 is not None else np.ascontiguousarray(img[:, ::-1])
  return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def value_range(img: Image.Image | np.ndarray, vmin: float = -1., vmax: float = 1.) -> np.ndarray:
  """uint8 pixels to float32 in [vmin, vmax]."""
  x = np.multiply(np.asarray(img), np.float32((vmax - vmin) / 255), dtype=np.float32)
  x += np.float32(vmin)
  return x


# ---------------------------------------------------------------------------------------------- RandAugment
# 'tf' (default): the RandAugment that trained the ViT / AugReg checkpoints, big_vision's `randaug(N, M)` (its
# pp/autoaugment.py, forked from tensorflow/tpu; tensorflow/models official/vision/ops/augment.py maps levels the
# same way): 16 ops, each level -> argument as `_TF_LEVEL_TO_ARG`, magnitudes above 10 extrapolate (AugReg uses 15,
# 20). Some ops *weaken* as the level grows there (Solarize's threshold rises, Posterize keeps more bits, the enhance
# factors move from 0.1 towards 1.9 and beyond). Departures from TF: the pixel ops are PIL's (PIL's Contrast blends
# towards the mean grey level, TF's towards H*W/256 clipped to 255, a known quirk of that code), rotations and shears
# resample with PIL's nearest neighbour, not TF's.
# 'increasing': timm's `rand-mM-nN-inc1` (its _RAND_INCREASING_TRANSFORMS): 15 ops whose strength grows with the
# level, which is clipped to [0, 10]; each chosen op is applied with probability 0.5, as timm does.
_MAX_LEVEL = 10.
RANDAUG_CUTOUT_CONST = 40      # big_vision / TF `distort_image_with_randaugment`: HParams(cutout_const=40,
RANDAUG_TRANSLATE_CONST = 100  # translate_const=100), in pixels whatever the image size
_INCREASING_TRANSLATE_PCT = 0.45  # timm's translate_pct: a fraction of the image side


def _negate(v: float, rng: np.random.Generator) -> float:
  """v or -v with equal odds (TF's `_randomly_negate_tensor`)."""
  return -v if rng.random() < 0.5 else v


def _enhance_increasing(level: float, rng: np.random.Generator) -> tuple[float]:
  return (max(0.1, 1. + _negate(level / _MAX_LEVEL * 0.9, rng)),)


# op -> (level, rng) -> the op's arguments, TF's `level_to_arg` with big_vision's RandAugment constants.
_TF_LEVEL_TO_ARG: dict[str, Callable[[float, np.random.Generator], tuple]] = {
    'AutoContrast': lambda level, rng: (),
    'Equalize': lambda level, rng: (),
    'Invert': lambda level, rng: (),
    'Rotate': lambda level, rng: (_negate(level / _MAX_LEVEL * 30., rng),),
    'Posterize': lambda level, rng: (int(level / _MAX_LEVEL * 4),),
    'Solarize': lambda level, rng: (int(level / _MAX_LEVEL * 256),),
    'Color': lambda level, rng: (level / _MAX_LEVEL * 1.8 + 0.1,),
    'Contrast': lambda level, rng: (level / _MAX_LEVEL * 1.8 + 0.1,),
    'Brightness': lambda level, rng: (level / _MAX_LEVEL * 1.8 + 0.1,),
    'Sharpness': lambda level, rng: (level / _MAX_LEVEL * 1.8 + 0.1,),
    'ShearX': lambda level, rng: (_negate(level / _MAX_LEVEL * 0.3, rng),),
    'ShearY': lambda level, rng: (_negate(level / _MAX_LEVEL * 0.3, rng),),
    'TranslateX': lambda level, rng: (_negate(level / _MAX_LEVEL * RANDAUG_TRANSLATE_CONST, rng),),
    'TranslateY': lambda level, rng: (_negate(level / _MAX_LEVEL * RANDAUG_TRANSLATE_CONST, rng),),
    'Cutout': lambda level, rng: (int(level / _MAX_LEVEL * RANDAUG_CUTOUT_CONST),),
    'SolarizeAdd': lambda level, rng: (int(level / _MAX_LEVEL * 110),),
}
# timm's increasing variant; translations are relative (fraction of the side), converted to pixels by the op.
_INCREASING_LEVEL_TO_ARG: dict[str, Callable[[float, np.random.Generator], tuple]] = {
    'AutoContrast': lambda level, rng: (),
    'Equalize': lambda level, rng: (),
    'Invert': lambda level, rng: (),
    'Rotate': _TF_LEVEL_TO_ARG['Rotate'],
    'PosterizeIncreasing': lambda level, rng: (4 - int(level / _MAX_LEVEL * 4),),
    'SolarizeIncreasing': lambda level, rng: (256 - min(256, int(level / _MAX_LEVEL * 256)),),
    'SolarizeAdd': lambda level, rng: (min(128, int(level / _MAX_LEVEL * 110)),),
    'ColorIncreasing': _enhance_increasing,
    'ContrastIncreasing': _enhance_increasing,
    'BrightnessIncreasing': _enhance_increasing,
    'SharpnessIncreasing': _enhance_increasing,
    'ShearX': _TF_LEVEL_TO_ARG['ShearX'],
    'ShearY': _TF_LEVEL_TO_ARG['ShearY'],
    'TranslateXRel': lambda level, rng: (_negate(level / _MAX_LEVEL * _INCREASING_TRANSLATE_PCT, rng),),
    'TranslateYRel': lambda level, rng: (_negate(level / _MAX_LEVEL * _INCREASING_TRANSLATE_PCT, rng),),
}
RANDAUG_VARIANTS = {'tf': _TF_LEVEL_TO_ARG, 'increasing': _INCREASING_LEVEL_TO_ARG}
RANDAUG_OPS = tuple(_TF_LEVEL_TO_ARG)  # big_vision's op order
RANDAUG_INCREASING_OPS = tuple(_INCREASING_LEVEL_TO_ARG)  # timm's


def randaug_args(op: str, level: float, rng: np.random.Generator, variant: str = 'tf') -> tuple:
  """The arguments `op` gets at `level` in `variant` (random signs drawn from `rng`)."""
  return RANDAUG_VARIANTS[variant][op](level, rng)


def _affine(img, matrix):
  return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.NEAREST,
                       fillcolor=_FILL)


def _lut(img: Image.Image, table: np.ndarray) -> Image.Image:
  return Image.fromarray(table.astype(np.uint8)[np.asarray(img)])


def _posterize(img: Image.Image, bits: int) -> Image.Image:
  """Keeps the `bits` high bits; TF's bit shifts clamp the shift to 0..7, so 0 bits keeps 1, as it does there."""
  shift = min(max(8 - bits, 0), 7)
  return _lut(img, (np.arange(256) >> shift) << shift)


def _posterize_timm(img: Image.Image, bits: int) -> Image.Image:
  """timm's: PIL posterize, where 0 bits is an all-black image."""
  return img if bits >= 8 else _lut(img, np.arange(256) & ~(2**(8 - bits) - 1) & 255)


def _solarize(img: Image.Image, threshold: int) -> Image.Image:
  """Pixels at or above `threshold` inverted (a threshold above 255 leaves the image as it is)."""
  x = np.arange(256)
  return _lut(img, np.where(x < threshold, x, 255 - x))


def _solarize_add(img: Image.Image, addition: int) -> Image.Image:
  """Adds `addition` (clipped to 255) to pixels below 128."""
  x = np.arange(256)
  return _lut(img, np.where(x < 128, np.minimum(x + addition, 255), x))


def cutout(img: Image.Image, rng: np.random.Generator, pad_size: int) -> Image.Image:
  """TF's cutout: a (2 pad_size)^2 square centred on a uniform pixel, clipped to the image, filled grey (128)."""
  x = np.array(img)
  h, w = x.shape[:2]
  cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
  x[max(0, cy - pad_size):min(h, cy + pad_size), max(0, cx - pad_size):min(w, cx + pad_size)] = _FILL[0]
  return Image.fromarray(x)


_Op = Callable[..., Image.Image]
_OPS: dict[str, _Op] = {
    'AutoContrast': lambda img, rng: ImageOps.autocontrast(img),
    'Equalize': lambda img, rng: ImageOps.equalize(img),
    'Invert': lambda img, rng: ImageOps.invert(img),
    'Rotate': lambda img, rng, degrees: img.rotate(degrees, fillcolor=_FILL),
    'Posterize': lambda img, rng, bits: _posterize(img, bits),
    'Solarize': lambda img, rng, threshold: _solarize(img, threshold),
    'SolarizeAdd': lambda img, rng, addition: _solarize_add(img, addition),
    'Color': lambda img, rng, f: ImageEnhance.Color(img).enhance(f),
    'Contrast': lambda img, rng, f: ImageEnhance.Contrast(img).enhance(f),
    'Brightness': lambda img, rng, f: ImageEnhance.Brightness(img).enhance(f),
    'Sharpness': lambda img, rng, f: ImageEnhance.Sharpness(img).enhance(f),
    'ShearX': lambda img, rng, s: _affine(img, (1, s, 0, 0, 1, 0)),
    'ShearY': lambda img, rng, s: _affine(img, (1, 0, 0, s, 1, 0)),
    # Output pixel x shows input x + pixels (TF's translate_x(image, pixels)).
    'TranslateX': lambda img, rng, pixels: _affine(img, (1, 0, pixels, 0, 1, 0)),
    'TranslateY': lambda img, rng, pixels: _affine(img, (1, 0, 0, 0, 1, pixels)),
    'Cutout': cutout,
}
_OPS.update({
    'PosterizeIncreasing': lambda img, rng, bits: _posterize_timm(img, bits),
    'SolarizeIncreasing': _OPS['Solarize'],
    'ColorIncreasing': _OPS['Color'],
    'ContrastIncreasing': _OPS['Contrast'],
    'BrightnessIncreasing': _OPS['Brightness'],
    'SharpnessIncreasing': _OPS['Sharpness'],
    'TranslateXRel': lambda img, rng, pct: _OPS['TranslateX'](img, rng, pct * img.size[0]),
    'TranslateYRel': lambda img, rng, pct: _OPS['TranslateY'](img, rng, pct * img.size[1]),
})


def randaugment(img: Image.Image, rng: np.random.Generator, num_layers: int = 2, magnitude: float = 10,
                ops: tuple[str, ...] | None = None, variant: str = 'tf') -> Image.Image:
  """RandAugment (Cubuk et al. 2019): `num_layers` ops drawn uniformly (with replacement), each at `magnitude`.

  variant 'tf' (big_vision's, what trained the published ViT/AugReg models; magnitude may exceed 10) or
  'increasing' (timm's; magnitude clipped to [0, 10], each op applied with probability 0.5); see above.
  """
  if variant not in RANDAUG_VARIANTS:
    raise ValueError(f"pp.randaug_variant={variant!r} is unknown: use 'tf' or 'increasing'.")
  level_to_arg = RANDAUG_VARIANTS[variant]
  ops = tuple(level_to_arg) if ops is None else ops
  level = float(magnitude) if variant == 'tf' else min(max(float(magnitude), 0.), _MAX_LEVEL)
  for i in rng.integers(0, len(ops), size=num_layers):
    if variant == 'increasing' and rng.random() >= 0.5:
      continue
    img = _OPS[ops[i]](img, rng, *level_to_arg[ops[i]](level, rng))
  return img


# ------------------------------------------------------------------------------------------------- labels
def label_bits(labels: Any, num_classes: int) -> np.ndarray:
  """A multi-label set as its multi-hot row packed 8 classes to a byte (uint8 [ceil(K / 8)], little bit order)."""
  y = np.zeros((num_classes,), np.bool_)
  y[np.asarray(labels, np.int64).reshape(-1)] = True
  return np.packbits(y, bitorder='little')


def dense_labels(labels: np.ndarray, num_classes: int, smoothing: float = 0.) -> np.ndarray:
  """Integer labels -> float32 [B, K] on the host, as `mixing.targets` does on the devices: class indices [B]
  -> y * (1 - s) + s / K, packed multi-hot bytes [B, ceil(K / 8)] -> y * (1 - s) + s / 2."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    y = np.zeros((len(labels), num_classes), np.float32)
    y[np.arange(len(labels)), labels] = 1
    off = smoothing / num_classes
  else:
    y = np.unpackbits(labels, axis=-1, count=num_classes, bitorder='little').astype(np.float32)
    off = smoothing / 2
  return y * np.float32(1 - smoothing) + np.float32(off) if smoothing else y


def pixel_range(pp: Any) -> tuple[float, float]:
  """pp.value_range, the range float images are scaled to (default (-1, 1))."""
  return tuple(pp.get('value_range', (-1., 1.)))


def finish_batch(batch: Record, pp: Any, num_classes: int, smoothing: bool = False) -> Record:
  """On the host: uint8 images -> float32 in pp.value_range, integer labels -> float32 targets (smoothed by
  pp.label_smoothing when `smoothing`); the train and eval steps do this on the devices instead."""
  s = (pp.get('label_smoothing') or 0.) if smoothing else 0.
  return {**batch, 'image': value_range(batch['image'], *pixel_range(pp)),
          'label': dense_labels(batch['label'], num_classes, s)}


# ---------------------------------------------------------------------------------------- composed ops
def _image_of(rec: Record) -> Image.Image:
  name = rec.get('name', '<image>')
  if 'image' in rec:
    return decode(np.asarray(rec['image']), name)
  if 'image_bytes' in rec:
    return decode(rec['image_bytes'], name)
  try:
    return decode(read_bytes(rec['path']), name)
  except OSError as e:  # A local path or a URL (an image folder in a bucket).
    raise CorruptImageError(f'Cannot read image {name}: {e}') from None


def _label_of(rec: Record, num_classes: int, multi_label: bool) -> np.ndarray:
  """A class index (int32), or a multi-label set's packed bits (`label_bits`)."""
  return label_bits(rec['label'], num_classes) if multi_label else np.int32(rec['label'])


def train_example(rec: Record, rng: np.random.Generator, pp: Any, num_classes: int,
                  multi_label: bool = False) -> Record:
  """decode -> train crop -> flip -> RandAugment (uint8 image); label -> int32 index or packed bits."""
  name = rec.get('name', '<image>')
  crop = pp['crop']
  mode = pp.get('train_crop', 'inception')
  ranges = tuple(pp.get('area_range', (0.08, 1.))), tuple(pp.get('aspect_range', (3 / 4, 4 / 3)))
  data = _jpeg_bytes(rec) if mode == 'inception' else None
  if data is not None:
    img = _fast_random_resized_crop(data, rng, crop, *ranges, name=name)
  elif mode == 'inception':
    img = random_resized_crop(_image_of(rec), rng, crop, *ranges, name=name)
  elif mode == 'resize_crop':
    img = random_crop(resize(_image_of(rec), pp.get('resize', default_resize(crop)), name), rng, crop)
  elif mode == 'resize':
    img = resize(_image_of(rec), crop, name)
  else:
    raise ValueError(f"pp.train_crop={mode!r} is unknown: use 'inception', 'resize_crop' or 'resize'.")
  if pp.get('flip', True):
    img = random_flip(img, rng)
  if pp.get('randaug'):
    img = randaugment(Image.fromarray(np.ascontiguousarray(img)) if isinstance(img, np.ndarray) else img,
                      rng, *pp['randaug'], variant=pp.get('randaug_variant') or 'tf')
  return {'image': np.asarray(img),
          'label': _label_of(rec, num_classes, multi_label),
          'id': rec['id']}


def eval_example(rec: Record, pp: Any, num_classes: int, multi_label: bool = False) -> Record:
  """decode -> resize-small + central crop (or plain resize) (uint8 image); label -> int32 index or packed bits."""
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
  return {'image': np.asarray(img), 'label': _label_of(rec, num_classes, multi_label), 'id': rec['id']}


def default_resize(crop: int) -> int:
  """The usual eval resize for a crop: 256 for 224 (ratio 8/7)."""
  return int(round(crop * 8 / 7))
