"""Position-embedding resampling exactly as PyTorch's bicubic `interpolate` (what timm and HF run), in numpy.

timm resamples with `antialias=True` (PIL's filter: Keys cubic a=-0.5, widened when shrinking, weights
renormalised at the borders); HF `transformers` with `antialias=False` (cubic a=-0.75, border pixels repeated).
Matching them keeps a checkpoint loaded at another resolution equal to what its own library computes.
"""
import math

import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.))


def _weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
  """(n_out, n_in) matrix of one axis' interpolation weights (align_corners=False)."""
  scale = n_in / n_out
  w = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    if antialias:
      support = 2. * max(scale, 1.)
      center = scale * (i + 0.5)
      lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
      taps = np.arange(lo, hi)
      k = _cubic((taps - center + 0.5) / max(scale, 1.), -0.5)
      w[i, taps] = k / k.sum()
    else:
      src = (i + 0.5) * scale - 0.5
      base = math.floor(src)
      for tap in range(-1, 3):
        w[i, min(max(base + tap, 0), n_in - 1)] += _cubic(np.array(src - (base + tap)), -0.75)
  return w


def resize_grid(grid: np.ndarray, new_hw: tuple, antialias: bool) -> np.ndarray:
  """(h, w, D) -> (new_h, new_w, D), separable bicubic as torch's interpolate(mode='bicubic')."""
  h, w = grid.shape[:2]
  nh, nw = int(new_hw[0]), int(new_hw[1])
  if (h, w) == (nh, nw):
    return grid
  out = np.einsum('ih,hwd->iwd', _weights(h, nh, antialias), grid.astype(np.float64))
  out = np.einsum('jw,iwd->ijd', _weights(w, nw, antialias), out)
  return out.astype(grid.dtype)


def resample_posemb(posemb: np.ndarray, old_hw: tuple, new_hw: tuple, num_prefix_tokens: int,
                    antialias: bool) -> np.ndarray:
  """(1, prefix + h*w, D) -> (1, prefix + new_h*new_w, D); the prefix rows are kept."""
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
  grid = resize_grid(grid.reshape(old_hw[0], old_hw[1], -1), new_hw, antialias)
  return np.concatenate([prefix, grid.reshape(1, -1, grid.shape[-1])], axis=1)
