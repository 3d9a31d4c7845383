"""Tests for vit_jax.data.preprocess: every op checked on its output."""
import io

import numpy as np
import pytest
from PIL import Image

from vit_jax.data import preprocess as pp_ops


def _gradient(w=64, h=48):
  """An image whose pixel values encode their coordinates: R = x, G = y."""
  x, y = np.meshgrid(np.arange(w), np.arange(h))
  return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 7)], -1).astype(np.uint8)


def _jpeg(arr, quality=95):
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, 'JPEG', quality=quality)
  return buf.getvalue()


def test_decode_bytes_path_and_array(tmp_path):
  arr = _gradient()
  path = tmp_path / 'a.png'
  Image.fromarray(arr).save(path)
  np.testing.assert_array_equal(np.asarray(pp_ops.load_rgb(pp_ops.decode(str(path)))), arr)
  np.testing.assert_array_equal(np.asarray(pp_ops.load_rgb(pp_ops.decode(arr))), arr)
  got = np.asarray(pp_ops.load_rgb(pp_ops.decode(_jpeg(arr))), np.int32)
  assert got.shape == arr.shape and np.abs(got - arr).mean() < 3
  gray = Image.fromarray(arr[..., 0])
  assert pp_ops.load_rgb(gray).mode == 'RGB'


def test_decode_corrupt_names_the_file():
  with pytest.raises(pp_ops.CorruptImageError, match='bad.jpg'):
    pp_ops.decode(b'not an image', name='bad.jpg')
  truncated = _jpeg(_gradient())[:300]
  with pytest.raises(pp_ops.CorruptImageError, match='cut.jpg'):
    pp_ops.load_rgb(pp_ops.decode(truncated, name='cut.jpg'), name='cut.jpg')


def test_inception_box_lies_inside_and_respects_ranges():
  rng = np.random.default_rng(0)
  for _ in range(500):
    w, h = rng.integers(100, 600, 2)
    box = pp_ops.sample_inception_box(rng, w, h, (0.3, 0.9), (0.5, 2.0))
    left, top, cw, ch = box
    assert 0 <= left and 0 <= top and left + cw <= w and top + ch <= h and cw > 0 and ch > 0
    area = cw * ch / (w * h)
    fallback = pp_ops.sample_inception_box(rng, w, h, (0.3, 0.9), (0.5, 2.0), attempts=0)
    if box != fallback:
      assert 0.3 - 0.05 <= area <= 0.9 + 0.05
      assert 0.5 * 0.9 <= cw / ch <= 2.0 * 1.1


def test_inception_box_fallback_is_central_and_in_aspect():
  rng = np.random.default_rng(0)
  left, top, w, h = pp_ops.sample_inception_box(rng, 1000, 10, (0.9, 1.0), (0.75, 1.33), attempts=0)
  assert (h, top) == (10, 0) and w == 13 and left == (1000 - 13) // 2


def test_random_resized_crop_takes_pixels_from_inside_the_box():
  arr = _gradient(64, 48)
  rng_box, rng = np.random.default_rng(5), np.random.default_rng(5)
  left, top, w, h = pp_ops.sample_inception_box(rng_box, 64, 48, (0.2, 0.5), (3 / 4, 4 / 3))
  out = np.asarray(pp_ops.random_resized_crop(Image.fromarray(arr), rng, 32, (0.2, 0.5), (3 / 4, 4 / 3)))
  assert out.shape == (32, 32, 3)
  # Coordinates encoded in R/G must lie within the box (up to interpolation).
  xs, ys = out[..., 0] / 255 * 63, out[..., 1] / 255 * 47
  assert xs.min() >= left - 1.5 and xs.max() <= left + w + 0.5
  assert ys.min() >= top - 1.5 and ys.max() <= top + h + 0.5


def test_random_resized_crop_draft_decodes_large_jpeg_at_reduced_scale():
  arr = np.asarray(Image.fromarray(_gradient(64, 48)).resize((1024, 768)))
  img = pp_ops.decode(_jpeg(arr))
  out = pp_ops.random_resized_crop(img, np.random.default_rng(1), 64, (0.9, 1.0))
  assert img.size[0] < 1024  # Decoded with DCT downscaling.
  ref = pp_ops.random_resized_crop(Image.fromarray(arr), np.random.default_rng(1), 64, (0.9, 1.0))
  assert np.abs(np.asarray(out, np.int32) - np.asarray(ref, np.int32)).mean() < 4


def _photo(w, h):
  """A smooth photo-like image (a low-resolution random pattern, upsampled)."""
  low = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC))


@pytest.mark.parametrize('size,area', [((500, 375), (0.08, 1.)), ((1024, 768), (0.9, 1.))])
def test_fast_jpeg_path_matches_the_pil_path(monkeypatch, size, area):
  """The simplejpeg + OpenCV crop draws the same box and flip as PIL's, and (up to the filter) the same pixels."""
  if pp_ops.cv2 is None or pp_ops.simplejpeg is None:
    pytest.skip('fast path needs opencv-python-headless and simplejpeg')
  rec = {'image_bytes': _jpeg(_photo(*size)), 'label': 0, 'id': 0, 'name': 'x.jpg'}
  pp = {'crop': 64, 'area_range': area}
  fast = [pp_ops.train_example(rec, np.random.default_rng(s), pp, 2)['image'] for s in range(8)]
  monkeypatch.setattr(pp_ops, 'simplejpeg', None)
  slow = [np.asarray(pp_ops.train_example(rec, np.random.default_rng(s), pp, 2)['image']) for s in range(8)]
  for f, s in zip(fast, slow):
    assert f.shape == s.shape == (64, 64, 3) and f.dtype == np.uint8 and f.flags.c_contiguous
    assert not np.array_equal(f, s)  # The fast path ran: its bilinear filter differs from PIL's BOX.
    assert np.abs(f.astype(np.int32) - s).mean() < 5  # Measured <= 3.2; a wrong box or flip is off by >= 6.


def _window_cases(width, height, rng):
  """Windows at the edges, on iMCU boundaries and at random inside a width x height image."""
  yield 0, 0, width, height
  yield 0, 0, 1, 1
  yield width - 3, height - 2, 3, 2
  yield 16, 8, 32, 16
  for _ in range(40):
    w, h = int(rng.integers(1, width + 1)), int(rng.integers(1, height + 1))
    yield int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h


@pytest.mark.parametrize('kind', ['4:2:0', '4:2:2', '4:4:4', 'progressive', 'gray'])
@pytest.mark.parametrize('reduce', [1, 2, 4, 8])
def test_window_decode_equals_slicing_a_whole_decode(kind, reduce):
  """_jpegcrop decodes exactly the pixels simplejpeg's whole decode has there, edges and chroma included."""
  if pp_ops._jpegcrop is None or pp_ops.simplejpeg is None:
    pytest.skip('the _jpegcrop extension was not built (no libjpeg-turbo headers; see setup.py)')
  img = np.clip(_photo(331, 213).astype(np.int16)
                + np.random.default_rng(1).normal(0, 20, (213, 331, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  options = {'4:2:0': {'subsampling': 2}, '4:2:2': {'subsampling': 1}, '4:4:4': {'subsampling': 0},
             'progressive': {'progressive': True}, 'gray': {}}[kind]
  Image.fromarray(img[..., 0] if kind == 'gray' else img).save(buf, 'JPEG', quality=90, **options)
  data = buf.getvalue()
  width, height = -(-331 // reduce), -(-213 // reduce)
  whole = pp_ops.simplejpeg.decode_jpeg(data, 'RGB', fastdct=True, fastupsample=False,
                                        min_height=height, min_width=width)
  assert whole.shape == (height, width, 3)
  for left, top, w, h in _window_cases(width, height, np.random.default_rng(reduce)):
    got = pp_ops._decode_window(data, reduce, left, top, w, h, width)
    np.testing.assert_array_equal(got, whole[top:top + h, left:left + w], err_msg=f'{(left, top, w, h)}')


def test_window_decode_rejects_a_window_outside_and_names_libjpeg_errors():
  if pp_ops._jpegcrop is None:
    pytest.skip('the _jpegcrop extension was not built (no libjpeg-turbo headers; see setup.py)')
  data = _jpeg(_photo(64, 48))
  with pytest.raises(ValueError, match=r'window 8x8\+60\+0 outside the 64x48 image at 1/1'):
    pp_ops._jpegcrop.decode(data, 1, 60, 0, 8, 8)
  with pytest.raises(ValueError, match='Not a JPEG file'):
    pp_ops._jpegcrop.decode(b'PNG, not a JPEG', 1, 0, 0, 1, 1)
  with pytest.raises(ValueError, match='Premature end of JPEG file'):
    pp_ops._jpegcrop.decode(data[:len(data) // 2], 1, 0, 40, 8, 8)  # A window in the missing half.


@pytest.mark.parametrize('size,area', [((500, 375), (0.08, 1.)), ((1024, 768), (0.9, 1.))])
def test_fast_jpeg_path_gives_the_same_crops_with_and_without_window_decode(monkeypatch, size, area):
  if pp_ops._jpegcrop is None or pp_ops.cv2 is None or pp_ops.simplejpeg is None:
    pytest.skip('needs the _jpegcrop extension, opencv-python-headless and simplejpeg')
  rec = {'image_bytes': _jpeg(_photo(*size)), 'label': 0, 'id': 0, 'name': 'x.jpg'}
  pp = {'crop': 64, 'area_range': area}  # (1024, 768) at area >= 0.9: decoded at 1/4 or 1/8 DCT scale.
  window = [pp_ops.train_example(rec, np.random.default_rng(s), pp, 2)['image'] for s in range(16)]
  monkeypatch.setattr(pp_ops, '_jpegcrop', None)
  whole = [pp_ops.train_example(rec, np.random.default_rng(s), pp, 2)['image'] for s in range(16)]
  for a, b in zip(window, whole):
    np.testing.assert_array_equal(a, b)


def test_fast_jpeg_path_names_a_truncated_file_whatever_box_is_drawn():
  """Cut near the end: boxes in the intact top would decode; the missing end marker sends it to the strict path."""
  data = _jpeg(_photo(500, 375))
  data = data[:len(data) * 9 // 10]
  for seed in range(8):
    with pytest.raises(pp_ops.CorruptImageError, match='cut.jpg'):
      pp_ops.train_example({'image_bytes': data, 'label': 0, 'id': 0, 'name': 'cut.jpg'},
                           np.random.default_rng(seed), {'crop': 32}, 2)


@pytest.mark.parametrize('cut', [300, 2000])
def test_fast_jpeg_path_names_truncated_files(cut):
  data = _jpeg(_photo(500, 375))[:cut]  # 2000: a valid header, pixel data cut short.
  with pytest.raises(pp_ops.CorruptImageError, match='cut.jpg'):
    pp_ops.train_example({'image_bytes': data, 'label': 0, 'id': 0, 'name': 'cut.jpg'},
                         np.random.default_rng(0), {'crop': 32}, 2)


def test_resize_small_keeps_aspect_and_central_crop_is_centred():
  img = Image.fromarray(_gradient(64, 32))
  small = pp_ops.resize_small(img, 16)
  assert small.size == (32, 16)
  crop = np.asarray(pp_ops.central_crop(Image.fromarray(_gradient(64, 32)), 16))
  np.testing.assert_array_equal(crop, _gradient(64, 32)[8:24, 24:40])
  assert pp_ops.resize(img, 10).size == (10, 10)
  with pytest.raises(ValueError, match='smaller than the crop'):
    pp_ops.central_crop(img, 40)


def test_random_crop_is_a_window_of_the_image():
  arr = _gradient(40, 30)
  out = np.asarray(pp_ops.random_crop(Image.fromarray(arr), np.random.default_rng(0), 16))
  hits = [(y, x) for y in range(15) for x in range(25) if np.array_equal(arr[y:y + 16, x:x + 16], out)]
  assert len(hits) == 1


def test_flip_mirrors_half_the_time():
  arr = _gradient()
  flips = 0
  for seed in range(200):
    out = np.asarray(pp_ops.random_flip(Image.fromarray(arr), np.random.default_rng(seed)))
    if np.array_equal(out, arr[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, arr)
    flipped = pp_ops.random_flip(arr, np.random.default_rng(seed))  # Arrays: same draw, contiguous.
    np.testing.assert_array_equal(flipped, out)
    assert flipped.flags.c_contiguous
  assert 70 < flips < 130


def test_value_range():
  x = pp_ops.value_range(np.array([0, 255, 51], np.uint8))
  np.testing.assert_allclose(x, [-1, 1, -0.6], atol=1e-6)
  assert x.dtype == np.float32
  np.testing.assert_allclose(pp_ops.value_range(np.array([0, 255], np.uint8), 0, 1), [0, 1])


# Each op's argument at levels 0, 5, 10, 15, written from TF's `level_to_arg` (big_vision pp/autoaugment.py, forked
# from tensorflow/tpu; tensorflow/models official/vision/ops/augment.py maps the same way) with the RandAugment
# constants of big_vision's `distort_image_with_randaugment`: cutout_const=40, translate_const=100. _MAX_LEVEL = 10.
# Signed entries are magnitudes; the sign is random (checked separately).
TF_ARGS = {
    'AutoContrast': [(), (), (), ()],
    'Equalize': [(), (), (), ()],
    'Invert': [(), (), (), ()],
    'Rotate': [0., 15., 30., 45.],                 # level/10 * 30 degrees, random sign
    'Posterize': [0, 2, 4, 6],                     # int(level/10 * 4) bits kept
    'Solarize': [0, 128, 256, 384],                # int(level/10 * 256): pixels >= threshold inverted
    'Color': [0.1, 1.0, 1.9, 2.8],                 # _enhance_level_to_arg: level/10 * 1.8 + 0.1
    'Contrast': [0.1, 1.0, 1.9, 2.8],
    'Brightness': [0.1, 1.0, 1.9, 2.8],
    'Sharpness': [0.1, 1.0, 1.9, 2.8],
    'ShearX': [0., 0.15, 0.3, 0.45],               # level/10 * 0.3, random sign
    'ShearY': [0., 0.15, 0.3, 0.45],
    'TranslateX': [0., 50., 100., 150.],           # level/10 * translate_const pixels, random sign
    'TranslateY': [0., 50., 100., 150.],
    'Cutout': [0, 20, 40, 60],                     # int(level/10 * cutout_const): half the square's side
    'SolarizeAdd': [0, 55, 110, 165],              # int(level/10 * 110), added below 128
}
TF_SIGNED = {'Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'}
# timm's increasing variant (timm/data/auto_augment.py, _RAND_INCREASING_TRANSFORMS) at levels 0, 5, 10 (timm clips
# the level to 10): posterize 4 - int(level/10 * 4), solarize 256 - int(level/10 * 256), enhance 1 +- level/10 * 0.9,
# translate level/10 * 0.45 of the side.
INCREASING_ARGS = {
    'PosterizeIncreasing': [4, 2, 0],
    'SolarizeIncreasing': [256, 128, 0],
    'SolarizeAdd': [0, 55, 110],
    'ColorIncreasing': [0., 0.45, 0.9],            # |factor - 1|
    'TranslateXRel': [0., 0.225, 0.45],
}


def test_randaugment_op_set_is_tfs():
  assert pp_ops.RANDAUG_OPS == (
      'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'Color', 'Contrast', 'Brightness',
      'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd')
  assert set(pp_ops.RANDAUG_INCREASING_OPS) == {
      'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing', 'SolarizeAdd',
      'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
      'TranslateXRel', 'TranslateYRel'}


@pytest.mark.parametrize('op', sorted(TF_ARGS))
def test_randaugment_level_to_arg_matches_tf(op):
  for level, want in zip((0, 5, 10, 15), TF_ARGS[op]):
    signs = set()
    for seed in range(20):
      got = pp_ops.randaug_args(op, level, np.random.default_rng(seed))
      if want == ():
        assert got == ()
        continue
      (value,) = got
      assert type(value) is type(want), (op, level, value)  # ints stay ints (TF's int(...))
      if op in TF_SIGNED:
        assert abs(value) == pytest.approx(want), (op, level)
        signs.add(np.sign(value))
      else:
        assert value == pytest.approx(want), (op, level)
    if op in TF_SIGNED and level:
      assert signs == {-1, 1}, (op, level)


@pytest.mark.parametrize('op', sorted(INCREASING_ARGS))
def test_randaugment_increasing_level_to_arg_matches_timm(op):
  for level, want in zip((0, 5, 10), INCREASING_ARGS[op]):
    (value,) = pp_ops.randaug_args(op, level, np.random.default_rng(level), variant='increasing')
    if op in ('ColorIncreasing', 'TranslateXRel'):
      value = abs(value - 1) if op == 'ColorIncreasing' else abs(value)
    assert value == pytest.approx(want), (op, level)


def test_randaugment_pixel_ops_follow_tfs_formulas():
  x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  img = Image.fromarray(x)
  run = lambda op, level: np.asarray(pp_ops.randaugment(img, np.random.default_rng(0), 1, level, ops=(op,)))
  v = x.astype(np.int32)
  np.testing.assert_array_equal(run('Solarize', 5), np.where(v < 128, v, 255 - v))  # threshold 128
  np.testing.assert_array_equal(run('Solarize', 0), 255 - v)                         # threshold 0: all inverted
  np.testing.assert_array_equal(run('Solarize', 15), v)                              # threshold 384: none
  np.testing.assert_array_equal(run('Posterize', 5), v & 0b11000000)                 # 2 bits
  np.testing.assert_array_equal(run('Posterize', 15), v & 0b11111100)                # 6 bits
  np.testing.assert_array_equal(run('Posterize', 0), v & 0b10000000)                 # TF clamps the shift to 7
  np.testing.assert_array_equal(run('SolarizeAdd', 10), np.where(v < 128, np.minimum(v + 110, 255), v))


def test_cutout_is_tfs_grey_square_clipped_at_the_border():
  x = np.zeros((48, 64, 3), np.uint8)
  for seed in range(30):
    rng = np.random.default_rng(seed)
    out = np.asarray(pp_ops.randaugment(Image.fromarray(x), np.random.default_rng(seed), 1, 5, ops=('Cutout',)))
    rng.integers(0, 1, size=1)  # the op index draw
    cy, cx = int(rng.integers(0, 48)), int(rng.integers(0, 64))
    want = np.zeros_like(x)
    want[max(0, cy - 20):min(48, cy + 20), max(0, cx - 20):min(64, cx + 20)] = 128  # pad_size int(5/10 * 40)
    np.testing.assert_array_equal(out, want)
  img = Image.fromarray(_gradient())
  np.testing.assert_array_equal(  # level 0: pad 0, nothing cut
      np.asarray(pp_ops.randaugment(img, np.random.default_rng(0), 1, 0, ops=('Cutout',))), _gradient())


def test_translate_is_in_pixels_not_a_fraction_of_the_side():
  x = _gradient()
  for seed in range(6):
    pixels, = pp_ops.randaug_args('TranslateX', 1, np.random.default_rng(seed))  # +-10 px
    out = np.asarray(pp_ops.randaugment(Image.fromarray(x), np.random.default_rng(seed), 1, 1, ops=('TranslateX',)))
    shift = int(round(pixels))
    if shift > 0:   # output column c shows input column c + shift; the uncovered right edge is grey
      np.testing.assert_array_equal(out[:, :-shift], x[:, shift:])
      assert (out[:, -shift:] == 128).all()
    else:
      np.testing.assert_array_equal(out[:, -shift:], x[:, :shift])


@pytest.mark.parametrize('variant,op', [('tf', o) for o in pp_ops.RANDAUG_OPS] +
                         [('increasing', o) for o in pp_ops.RANDAUG_INCREASING_OPS])
def test_each_randaugment_op_keeps_shape_and_type(variant, op):
  src = _gradient() // 2 + 40  # Not full range, so AutoContrast has work to do.
  if op.startswith('Sharpness'):  # A smooth gradient has nothing to sharpen.
    src = np.random.default_rng(0).integers(40, 200, src.shape).astype(np.uint8)
  if op.startswith('Solarize'):  # Thresholds near 180 at this level: use the full range.
    src = _gradient()
  out = None
  for seed in range(8):  # 'increasing' skips an op with probability 1/2
    out = np.asarray(pp_ops.randaugment(Image.fromarray(src), np.random.default_rng(seed), num_layers=1,
                                        magnitude=3, ops=(op,), variant=variant))
    if not np.array_equal(out, src):
      break
  assert out.shape == (48, 64, 3) and out.dtype == np.uint8
  assert not np.array_equal(out, src), (variant, op)


def test_randaugment_is_deterministic_given_rng_and_magnitude_zero_geometry_is_identity():
  img = Image.fromarray(_gradient())
  a = np.asarray(pp_ops.randaugment(img, np.random.default_rng(3), 3, 15))
  b = np.asarray(pp_ops.randaugment(img, np.random.default_rng(3), 3, 15))
  np.testing.assert_array_equal(a, b)
  for op in ('Rotate', 'ShearX', 'TranslateY', 'Cutout'):
    out = pp_ops.randaugment(img, np.random.default_rng(0), 1, 0, ops=(op,))
    np.testing.assert_array_equal(np.asarray(out), _gradient())
  with pytest.raises(ValueError, match='randaug_variant'):
    pp_ops.randaugment(img, np.random.default_rng(0), 1, 5, variant='timm')


def test_host_labels_one_hot_smoothed_and_multi_hot_bits():
  y = pp_ops.dense_labels(np.array([2, 0]), 5, smoothing=0.1)
  np.testing.assert_allclose(y[0], [0.02, 0.02, 0.92, 0.02, 0.02], rtol=1e-6)
  np.testing.assert_allclose(y.sum(1), 1, rtol=1e-6)
  assert y.dtype == np.float32
  np.testing.assert_array_equal(pp_ops.dense_labels(np.array([0]), 3), [[1, 0, 0]])
  bits = pp_ops.label_bits([0, 3, 9], 10)
  np.testing.assert_array_equal(bits, [0b00001001, 0b00000010])  # little bit order: class c is bit c % 8
  np.testing.assert_array_equal(pp_ops.dense_labels(bits[None], 10), [[1, 0, 0, 1, 0, 0, 0, 0, 0, 1]])
  np.testing.assert_allclose(pp_ops.dense_labels(pp_ops.label_bits([1], 3)[None], 3, 0.2), [[0.1, 0.9, 0.1]])


def test_train_and_eval_example_compose():
  rec = {'image_bytes': _jpeg(_gradient(120, 90)), 'label': 3, 'id': 0, 'name': 'x'}
  pp = {'crop': 32, 'randaug': (2, 5), 'label_smoothing': 0.1}
  ex = pp_ops.train_example(rec, np.random.default_rng(0), pp, num_classes=5)
  assert ex['image'].shape == (32, 32, 3) and ex['image'].dtype == np.uint8
  assert ex['label'] == 3 and ex['label'].dtype == np.int32  # smoothing is the devices' (mixing.targets)
  batch = pp_ops.finish_batch({'image': ex['image'][None], 'label': ex['label'][None]}, pp, 5, smoothing=True)
  assert batch['image'].dtype == np.float32 and -1 <= batch['image'].min() < batch['image'].max() <= 1
  np.testing.assert_allclose(batch['label'], [[0.02, 0.02, 0.02, 0.92, 0.02]], rtol=1e-6)
  ev = pp_ops.eval_example(rec, {'crop': 32}, num_classes=5)
  assert ev['image'].shape == (32, 32, 3) and ev['label'] == 3
  multi = pp_ops.eval_example({**rec, 'label': [1, 3]}, {'crop': 32}, num_classes=5, multi_label=True)
  np.testing.assert_array_equal(multi['label'], [0b01010])
  with pytest.raises(ValueError, match='train_crop'):
    pp_ops.train_example(rec, np.random.default_rng(0), {'crop': 8, 'train_crop': 'nope'}, 5)


def test_shrinking_averages_areas_and_enlarging_is_bilinear():
  arr = np.arange(16, dtype=np.uint8).reshape(4, 4).repeat(3).reshape(4, 4, 3) * 10
  small = np.asarray(pp_ops.resize(Image.fromarray(arr), 2))[..., 0]
  want = arr[..., 0].reshape(2, 2, 2, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(small, want, atol=1)
  big = np.asarray(pp_ops.resize(Image.fromarray(arr), 8))[..., 0].astype(int)
  assert len(np.unique(big)) > 16  # Interpolated, not blocks.
