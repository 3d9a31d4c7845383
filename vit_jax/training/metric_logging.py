"""Metric writers (metrics.jsonl + TensorBoard event files, process 0 only), progress reports with MFU, profiling.

`metrics.jsonl` holds one JSON object per write, `{"step": 500, "train/loss": 0.41, "val/top1": 0.97}`, readable
without TensorFlow. In a bucket (gs://...), where objects cannot be appended to, the file is rewritten whole at
each write (a few hundred bytes per report). TensorBoard events are written by the `tensorboard` package's own
writer, which needs no TensorFlow (where TensorFlow is installed it uses TF's file system, whose GCS client cannot
reach an emulator: with STORAGE_EMULATOR_HOST set, a gs:// workdir gets no TensorBoard events). The model and the
train step never import this module's dependencies.
"""
import contextlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Callable, ContextManager, Dict, Iterator, Mapping, Optional

import jax
from etils import epath

from vit_jax import storage

Scalars = Mapping[str, float]

# Dense (not 2:4 sparse) bf16 peak FLOP/s per JAX device, keyed by the exact `device_kind` string. A JAX device is
# a TensorCore on TPU v2/v3 (two per chip: half the chip's 45 and 123 TFLOP/s), a chip on v4/v5p (megacore) and
# on v5e/v6e (one core), a GPU on GPUs. The three H100 boards differ: SXM (989), NVL (835), PCIe (756).
PEAK_FLOPS = {
    'TPU v2': 22.5e12, 'TPU v3': 61.5e12, 'TPU v4': 275e12, 'TPU v5': 459e12,  # 'TPU v5' is v5p
    'TPU v5 lite': 197e12, 'TPU v6 lite': 918e12,                              # v5e, v6e (Trillium)
    'NVIDIA H100 80GB HBM3': 989e12, 'NVIDIA H100 NVL': 835e12, 'NVIDIA H100 PCIe': 756e12,
    'NVIDIA H200': 989e12, 'NVIDIA H200 NVL': 835e12, 'NVIDIA GH200 480GB': 989e12,
    'NVIDIA B200': 2250e12,
    'NVIDIA A100-SXM4-40GB': 312e12, 'NVIDIA A100-SXM4-80GB': 312e12, 'NVIDIA A100-PCIE-40GB': 312e12,
    'NVIDIA A100 80GB PCIe': 312e12, 'NVIDIA L4': 121e12,
}


def peak_flops(device_kind: str, override: Optional[float] = None) -> Optional[float]:
  """Per-device peak FLOP/s: `override` (config.peak_flops), else PEAK_FLOPS[device_kind], else None (no MFU)."""
  if override:
    return float(override)
  if device_kind not in PEAK_FLOPS and device_kind != 'cpu':
    logging.warning('No peak FLOP/s known for device_kind %r: no MFU is reported; set config.peak_flops to the '
                    "device's dense bf16 peak.", device_kind)
  return PEAK_FLOPS.get(device_kind)


def truncate_jsonl(path: epath.PathLike, last_step: int) -> None:
  """Drops the records after `last_step` (a resumed run rewrites them), so steps in the file stay monotone."""
  path = epath.Path(path)
  if jax.process_index() or not path.exists():
    return
  lines = [l + '\n' for l in path.read_text().splitlines() if l.strip()]
  keep = []
  for line in lines:
    try:
      if json.loads(line)['step'] <= last_step:
        keep.append(line)
    except (ValueError, KeyError):
      break  # A line cut short by a crash ends the usable part.
  tmp = path.parent / (path.name + '.tmp')
  tmp.write_text(''.join(keep))
  tmp.replace(path)


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl`, TensorBoard event files and the log; a no-op off process 0."""

  def __init__(self, workdir: epath.PathLike, *, tensorboard: bool = True):
    self._active = jax.process_index() == 0
    self._jsonl = None
    self._lines = None  # A bucket's file, rewritten whole at each write.
    self._tb = None
    if not self._active:
      return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / 'metrics.jsonl'
    if storage.is_remote(workdir):
      self._lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    else:
      self._jsonl = self.path.open('a')  # pylint: disable=consider-using-with
    if tensorboard and storage.emulated(workdir):
      logging.warning('No TensorBoard events in %s: the event writer may not reach the emulator at '
                      'STORAGE_EMULATOR_HOST; metrics.jsonl only.', workdir)
    elif tensorboard:
      # tensorboard's own event writer: the same event files as clu's SummaryWriter, without TensorFlow.
      from tensorboard import summary as tb_summary  # pylint: disable=g-import-not-at-top
      self._tb = tb_summary.Writer(os.fspath(workdir))

  def write_scalars(self, step: int, scalars: Scalars) -> None:
    if not self._active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    line = json.dumps({'step': int(step), **values}) + '\n'
    if self._lines is not None:
      self._lines.append(line)
      self.path.write_text(''.join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    if self._tb is not None:
      for tag, value in values.items():
        self._tb.add_scalar(tag, value, int(step))
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in values.items()))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class Progress:
  """steps/s, images/s (total and per device), MFU, ETA and input wait between reports; clu's ReportProgress too.

  Rates count training time only: time spent inside `paused()` (evaluation, checkpoint saves) is left out of the
  window, so a window with an eval reports the same images/s as one without. `input_wait_fraction` is the share
  of the window the loop spent blocked in `waiting_for_input()` (the next batch not ready: a host-side stall).
  `flops_per_step`: model FLOPs of one step over the global batch (`vit_jax.models.flops.train_step_flops`, not
  XLA's cost analysis, which counts a scan body once and cuDNN attention as zero); `progress/mfu` divides its rate
  by `peak` (per device) times the device count.
  """

  def __init__(self, *, total_steps: int, global_batch: int, start_step: int, flops_per_step: Optional[float],
               peak: Optional[float], use_clu: bool = True, clock: Callable[[], float] = time.perf_counter):
    self._total, self._batch = total_steps, global_batch
    self._flops, self._peak = flops_per_step, peak
    self._clock = clock
    self._last_step, self._last_time = start_step, clock()
    self._spent = {'paused': 0., 'input_wait': 0.}
    self._clu = None
    try:
      if not use_clu:  # clu's periodic_actions imports TensorFlow: seconds of start-up for a log line.
        raise ImportError('not wanted')
      from clu import periodic_actions  # pylint: disable=g-import-not-at-top
      self._clu = periodic_actions.ReportProgress(num_train_steps=total_steps, every_secs=None,
                                                  every_steps=None)
    except ImportError:
      pass

  @contextlib.contextmanager
  def _timed(self, what: str) -> Iterator[None]:
    start = self._clock()
    try:
      yield
    finally:
      self._spent[what] += self._clock() - start

  def paused(self) -> ContextManager[None]:
    """Time inside is not training time (the caller has synced with the device before entering)."""
    return self._timed('paused')

  def waiting_for_input(self) -> ContextManager[None]:
    """Time inside is the loop blocked on the input pipeline."""
    return self._timed('input_wait')

  def report(self, step: int) -> Dict[str, float]:
    """Rates since the previous report (the caller has synced with the device at `step`)."""
    now = self._clock()
    steps, secs = step - self._last_step, max(now - self._last_time - self._spent['paused'], 1e-9)
    wait = self._spent['input_wait']
    self._last_step, self._last_time = step, now
    self._spent = dict.fromkeys(self._spent, 0.)
    if steps <= 0:
      return {}
    steps_per_sec = steps / secs
    images_per_sec = steps_per_sec * self._batch
    out = {'progress/steps_per_sec': steps_per_sec, 'progress/images_per_sec': images_per_sec,
           'progress/images_per_sec_per_device': images_per_sec / jax.device_count(),
           'progress/eta_minutes': (self._total - step) / steps_per_sec / 60,
           'progress/input_wait_fraction': min(wait / secs, 1.)}
    if self._flops:
      out['progress/model_flops_per_step'] = self._flops
      if self._peak:
        out['progress/mfu'] = self._flops * steps_per_sec / (self._peak * jax.device_count())
    if self._clu is not None:
      self._clu(step, now)  # Logs clu's own progress line (and sets the work unit notes where there are any).
    return {k: v for k, v in out.items() if math.isfinite(v)}


class Profiler:
  """Captures a profiler trace of `num_steps` steps starting at `first_step` into `<workdir>/profile`.

  For a workdir in a bucket, the trace is written locally and copied there when it stops (the profiler's own
  writer goes through TensorFlow's GCS client, which cannot reach an emulator).
  """

  def __init__(self, workdir: epath.PathLike, first_step: int, num_steps: int):
    self._dir = epath.Path(workdir) / 'profile'
    self._first, self._last = first_step, first_step + num_steps
    self._active = False
    self._local = None

  def __call__(self, step: int) -> None:
    """Call after each step with the number of steps done."""
    if not self._active and self._first <= step < self._last:
      self._local = tempfile.mkdtemp(prefix='vit_profile_') if storage.is_remote(self._dir) else None
      jax.profiler.start_trace(self._local or str(self._dir))
      self._active = True
    elif self._active and step >= self._last:
      self.close()
      logging.info('Profile of steps %d-%d written to %s', self._first, self._last, self._dir)

  def close(self) -> None:
    if self._active:
      jax.profiler.stop_trace()
      self._active = False
      if self._local:
        local = epath.Path(self._local)
        for f in local.rglob('*'):
          if f.is_file():
            dst = self._dir / f.relative_to(local)
            dst.parent.mkdir(parents=True, exist_ok=True)
            f.copy(dst, overwrite=True)
        local.rmtree()
