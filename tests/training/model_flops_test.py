"""progress/mfu counts the analytic model FLOPs: the same for scanned/unrolled layers and any accum_steps."""
import pytest

import loop_testlib as lib
from vit_jax.models import flops
from vit_jax.models import registry
from vit_jax.training import loop


def _tiny_step_flops_by_hand() -> int:
  """loop_testlib's tiny ViT ('testing', width 16, 1 layer, MLP 32, 4x4 patches of 8x8 images, GAP pooling
  as in the default preset, 10 classes), batch 16."""
  d, m, p, grid, classes, batch = 16, 32, 4, (8 // 4) ** 2, 10, 16
  n = grid  # GAP: no class token
  layer = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d
  forward = layer + 2 * grid * p * p * 3 * d + 2 * d * classes
  assert forward == 23_872
  return 3 * forward * batch


@pytest.mark.parametrize('overrides', [{}, {'model__scan': True}, {'accum_steps': 2}],
                         ids=['unrolled', 'scan', 'accum2'])
@pytest.mark.slow
def test_logged_model_flops_are_the_closed_form_count(tmp_path, overrides):
  loop.train_and_evaluate(lib.tiny_config(total_steps=2, warmup_steps=1, checkpoint_every=100, **overrides), str(tmp_path))
  logged = {r['progress/model_flops_per_step'] for r in lib.read_metrics(str(tmp_path))
            if 'progress/model_flops_per_step' in r}
  assert logged == {_tiny_step_flops_by_hand()}


def test_hybrid_root_and_heads_count_their_convolutions():
  # R50+ViT-B/16 at 224: XLA's count of the compiled forward is 43.21 GFLOP (norms included); ours counts the
  # convolutions and matmuls only.
  assert flops.forward_flops(registry.get_config('R50+ViT-B_16'), 224, 1000) / 1e9 == pytest.approx(43.07, abs=0.01)
  mc = dict(registry.get_config('testing'), representation_size=7)
  d, n = 10, 1 + 4  # 32x32 images of 16x16 patches: 4 patches and the class token
  layer = 2 * n * (4 * d * d + 2 * d * 10) + 4 * n * n * d
  assert flops.forward_flops(mc, 32, 3) == layer + 2 * 4 * 16 * 16 * 3 * d + 2 * d * 7 + 2 * 7 * 3
