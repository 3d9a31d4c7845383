"""Progress rates: training time only (evaluation and saves left out), and the input-pipeline wait."""
import pytest

from vit_jax.training import metric_logging


def test_progress_leaves_out_paused_time_and_reports_input_wait():
  now = [100.]
  progress = metric_logging.Progress(total_steps=100, global_batch=8, start_step=0, flops_per_step=2e9,
                                     peak=1e12, use_clu=False, clock=lambda: now[0])
  with progress.waiting_for_input():
    now[0] += 1.   # blocked on the next batch
  now[0] += 3.     # stepping
  with progress.paused():
    now[0] += 10.  # evaluation: not training time
  first = progress.report(10)
  assert first['progress/steps_per_sec'] == pytest.approx(10 / 4)
  assert first['progress/images_per_sec'] == pytest.approx(8 * 10 / 4)
  assert first['progress/input_wait_fraction'] == pytest.approx(1 / 4)
  # 2e9 FLOPs per step over the global batch, against 1e12 FLOP/s per device on the 8 devices.
  assert first['progress/mfu'] == pytest.approx(2e9 * 10 / 4 / (8 * 1e12))
  assert first['progress/model_flops_per_step'] == 2e9
  assert first['progress/eta_minutes'] == pytest.approx(90 / (10 / 4) / 60)
  now[0] += 2.     # the next window starts clean
  second = progress.report(20)
  assert second['progress/steps_per_sec'] == pytest.approx(10 / 2)
  assert second['progress/input_wait_fraction'] == 0.
