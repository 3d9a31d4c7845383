"""Distillation on the embedded digits: a half-width student taught by the trained default (configs/default.py).

Command:   python -m vit_jax.main --config=configs/distill_default.py --workdir=/tmp/vit_distill
           (after python -m vit_jax.main --config=configs/default.py --workdir=/tmp/vit_default, the teacher;
           --config.teacher=<workdir> names another)
Hardware:  2 CPU cores (any laptop); no accelerator needed.
Time:      384 s measured on a shared 2-core machine (1,500 steps of batch 128, each running the teacher too).
Expected:  within 1 point of the teacher's test accuracy; measured (scripts/distill_digits.py, seeds 0 / 1): teacher
           98.32% / 98.65%, this student 97.98% / 98.99%, the same student on labels alone 98.65% / 97.98%.
Recipe:    the default's (stem, depth, augmentation, optimizer, 1,500 steps) at half the transformer's width (hidden
           64 -> 32, MLP 128 -> 64, heads 4 -> 2, so the head dim stays 16); the loss is the "patient and
           consistent" one: KL to the teacher at T = 1 alone (alpha = 1), the teacher seeing the student's mixed batch.
"""
from configs import default


def get_config():
  """The default's recipe, half its width, distilled from the default's workdir."""
  c = default.get_config()
  c.model.hidden_size = 32
  c.model.mlp_dim = 64
  c.model.num_heads = 2
  c.objective = 'distill'
  c.teacher = '/tmp/vit_default'
  c.distill.temperature = 1.0
  c.distill.alpha = 1.0
  return c
