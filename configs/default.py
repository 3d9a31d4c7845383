"""The embedded default: a small ViT on scikit-learn's 8x8 'digits' (shipped in the wheel, nothing downloads).

Command:   python -m vit_jax.main --config=configs/default.py --workdir=/tmp/vit_default
Hardware:  2 CPU cores (any laptop); no accelerator needed.
Expected:  >= 97% test accuracy (297 held-out digits), in under 3 minutes; the last line printed is
           'Final test accuracy: ...'.
"""
from configs import common


def get_config():
  """Small ViT, digits, AdamW; see the module docstring for the expected result."""
  c = common.get_config()
  c.dataset = 'digits'
  c.pp.crop = 8
  c.batch = 128
  c.batch_eval = 304  # The 297 test digits in one padded batch (multiple of 8 devices).

  c.model_name = 'testing'
  c.model.patch_size = 2
  c.model.hidden_size = 64
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 128
  c.model.dropout_rate = 0.
  c.model.classifier = 'gap'

  c.total_steps = 500
  c.base_lr = 1e-3
  c.warmup_steps = 50
  c.decay_type = 'cosine'
  c.grad_norm_clip = 1.0
  c.optim.optimizer = 'adamw'
  c.optim.weight_decay = 1e-4

  c.eval_every = 250
  c.progress_every = 50
  c.checkpoint_every = 250
  return c
