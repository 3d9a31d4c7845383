"""The batch stage that runs on the devices, inside the jitted steps: value range, targets, mixup and cutmix.

The host hands the devices what it decoded and nothing more (`pipeline.make_*_iterator(uint8=True)`):
  image  uint8 [B, H, W, 3];
  label  int32 [B] class indices, or for multi-label sets (ReaL) their multi-hot rows packed 8 classes to a
         byte, uint8 [B, ceil(K / 8)] (`preprocess.label_bits`: np.packbits, little bit order).
A train step turns such a batch into float32 images in `value_range` and float32 targets [B, K] with
`train_batch`, an eval step with `eval_batch`; the targets are one-hot (or multi-hot) rows with label smoothing
y * (1 - s) + s / K (multi-hot: + s / 2), so a loss over 21,843 classes never needs a dense host array.

Mixing is the host's former recipe, moved: one draw per batch from `key` (the step folds it from the run's key
and the step number, so a resumed run mixes the same way). With probability `mix_prob` the batch is mixed, by
mixup or cutmix with equal odds when both are on: mixup takes lam ~ Beta(mixup, mixup) and each example becomes
lam * itself + (1 - lam) * its partner; cutmix takes lam ~ Beta(cutmix, cutmix) and pastes the partner's pixels
into a box of about (1 - lam) of the image (side int(side * sqrt(1 - lam)), centred on a uniform pixel, clipped
to the image), the labels mixed by the box's actual area. Both are one formula, out = w * x + (1 - w) * partner,
with a per-pixel weight w (lam everywhere, or 0 in the box and 1 elsewhere) and a label weight.

Pairs (`partner`): the batch is `groups` blocks (the loop's process count: block p holds process p's rows, its
stream positions p, p + P, ...) and each example is paired with the one half a block away, i.e. global stream
positions k and k + B/2: the same pairs for any process count whose share is even. The partner's pixels move
between devices as uint8, before the float conversion.
"""
import dataclasses
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array
Batch = Dict[str, Array]


@dataclasses.dataclass(frozen=True)
class BatchOps:
  """What the devices do to a uint8 batch: the `pp` keys value_range, label_smoothing, mixup, cutmix, mix_prob."""
  num_classes: int
  value_range: Tuple[float, float] = (-1., 1.)
  label_smoothing: float = 0.
  mixup: float = 0.
  cutmix: float = 0.
  mix_prob: float = 1.
  groups: int = 1  # blocks that pair within themselves: the process count (see the module docstring)

  @classmethod
  def from_pp(cls, pp: Mapping[str, Any], num_classes: int, groups: int = 1) -> 'BatchOps':
    """The ops a `pp` section asks for (missing or None keys take the defaults above)."""
    get = lambda k, default: default if pp.get(k) is None else pp[k]
    return cls(num_classes=num_classes, value_range=tuple(float(v) for v in get('value_range', (-1., 1.))),
               label_smoothing=float(get('label_smoothing', 0.)), mixup=float(get('mixup', 0.)),
               cutmix=float(get('cutmix', 0.)), mix_prob=float(get('mix_prob', 1.)), groups=groups)

  @property
  def mixes(self) -> bool:
    return bool(self.mixup or self.cutmix) and self.mix_prob > 0


def to_float(images: Array, value_range: Tuple[float, float] = (-1., 1.)) -> Array:
  """uint8 pixels -> float32 in [vmin, vmax] (preprocess.value_range's formula; XLA may fuse it into one FMA)."""
  vmin, vmax = value_range
  return images.astype(jnp.float32) * jnp.float32((vmax - vmin) / 255) + jnp.float32(vmin)


def targets(labels: Array, num_classes: int, smoothing: float = 0.) -> Array:
  """Integer labels -> float32 [B, K]: class indices [B] -> y * (1 - s) + s / K; packed multi-hot bytes
  [B, ceil(K / 8)] -> y * (1 - s) + s / 2."""
  if labels.ndim == 1:
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return y * jnp.float32(1 - smoothing) + jnp.float32(smoothing / num_classes) if smoothing else y
  y = jnp.unpackbits(labels, axis=-1, count=num_classes, bitorder='little').astype(jnp.float32)
  return y * jnp.float32(1 - smoothing) + jnp.float32(smoothing / 2) if smoothing else y


def partner(x: Array, groups: int = 1) -> Array:
  """Each row's mixing partner: within each of `groups` equal blocks, the row half a block away (rounded down)."""
  b = x.shape[0]  # a multiple of `groups`: the pipeline gives every process an equal share
  blocks = x.reshape((groups, b // groups) + x.shape[1:])
  return jnp.roll(blocks, b // groups // 2, axis=1).reshape(x.shape)


def cutmix_weights(lam: Array, cy: Array, cx: Array, height: int, width: int) -> Tuple[Array, Array]:
  """(pixel weight [H, W]: 0 in the pasted box, 1 elsewhere; label weight: the kept fraction) of the box of side
  int(side * sqrt(1 - lam)) centred on pixel (cy, cx), clipped to the image."""
  side = jnp.sqrt(1 - jnp.asarray(lam, jnp.float32))
  ch, cw = jnp.floor(height * side).astype(jnp.int32), jnp.floor(width * side).astype(jnp.int32)
  y0, y1 = jnp.maximum(cy - ch // 2, 0), jnp.minimum(cy + ch - ch // 2, height)
  x0, x1 = jnp.maximum(cx - cw // 2, 0), jnp.minimum(cx + cw - cw // 2, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  area = height * width
  kept = (area - (y1 - y0) * (x1 - x0)).astype(jnp.float32) / jnp.float32(area)
  return jnp.where(inside, jnp.float32(0), jnp.float32(1)), kept


def sample_mix(key: Array, ops: BatchOps, height: int, width: int) -> Tuple[Array, Array]:
  """(pixel weight float32 [H, W], label weight float32 scalar) of one batch: 1 and 1 when it is not mixed."""
  k_mix, k_which, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
  pixel, label = [jnp.ones((height, width), jnp.float32)], [jnp.float32(1)]
  if ops.mixup:
    lam = jax.random.beta(k_mixup, ops.mixup, ops.mixup, dtype=jnp.float32)
    pixel.append(jnp.full((height, width), lam))
    label.append(lam)
  if ops.cutmix:
    lam = jax.random.beta(k_cutmix, ops.cutmix, ops.cutmix, dtype=jnp.float32)
    cy, cx = jax.random.randint(k_y, (), 0, height), jax.random.randint(k_x, (), 0, width)
    box_pixel, box_label = cutmix_weights(lam, cy, cx, height, width)
    pixel.append(box_pixel)
    label.append(box_label)
  if len(pixel) == 1:
    return pixel[0], label[0]
  mixed = jax.random.uniform(k_mix) < ops.mix_prob
  which = jnp.where(mixed, 1 + jax.random.randint(k_which, (), 0, len(pixel) - 1), 0)
  return jnp.stack(pixel)[which], jnp.stack(label)[which]


def mix(images: Array, images_partner: Array, labels: Array, labels_partner: Array, pixel_weight: Array,
        label_weight: Array) -> Tuple[Array, Array]:
  """w * x + (1 - w) * partner for the images (w per pixel, [H, W]) and the targets (one w per batch)."""
  w = pixel_weight[None, :, :, None]
  return (w * images + (1 - w) * images_partner,
          label_weight * labels + (1 - label_weight) * labels_partner)


def train_batch(batch: Batch, key: Array, ops: BatchOps) -> Batch:
  """A uint8 training batch -> float32 images and smoothed (and, as `ops` asks, mixed) targets."""
  images = to_float(batch['image'], ops.value_range)
  labels = targets(batch['label'], ops.num_classes, ops.label_smoothing)
  if ops.mixes:
    pixel_weight, label_weight = sample_mix(key, ops, *batch['image'].shape[1:3])
    # The partners' uint8 pixels and integer labels move between devices, not their float forms.
    images, labels = mix(
        images, to_float(partner(batch['image'], ops.groups), ops.value_range), labels,
        targets(partner(batch['label'], ops.groups), ops.num_classes, ops.label_smoothing),
        pixel_weight, label_weight)
  return {**batch, 'image': images, 'label': labels}


def eval_batch(batch: Batch, ops: BatchOps) -> Batch:
  """A uint8 eval batch -> float32 images and plain one-hot / multi-hot targets (no smoothing, no mixing)."""
  return {**batch, 'image': to_float(batch['image'], ops.value_range),
          'label': targets(batch['label'], ops.num_classes)}
