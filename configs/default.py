"""The embedded default: a small hybrid ViT on scikit-learn's 8x8 'digits' (shipped in the wheel, nothing downloads).

Command:   python -m vit_jax.main --config=configs/default.py --workdir=/tmp/vit_default
Hardware:  2 CPU cores (any laptop); no accelerator needed.
Time:      about 3 minutes of training on 2 idle CPU cores (1,500 steps of batch 128: 178 s measured).
Expected:  >= 97% test accuracy on the 297 held-out digits of the fixed stratified split; measured 98.32% / 98.65% /
           98.32% for seeds 0 / 1 / 2 (at 1,000 steps: 97.31% / 98.99% / 98.32%, too close to 97% for seed 0).
           The last line printed is 'Final test accuracy: ...'.
What it took: a plain ViT overfits 1,500 images at ~85%; the convolutional stem gives ~96-97%; mixup (0.2) and
           decoupled weight decay (0.05) over 1,500 steps lift it to ~98.5% with less variance across seeds.
Sweep:     python -m vit_jax.sweep --config=configs/default.py --workdir=/tmp/vit_default_sweep   (get_sweep: 2 lr x
           2 weight decay, about 12 minutes on 2 CPU cores), then python -m vit_jax.sweep report /tmp/vit_default_sweep.
"""
from vit_jax.configs import common
from vit_jax.tools import sweep


def get_config():
  """Small ViT, digits, AdamW; see the module docstring for the expected result."""
  c = common.get_config()
  c.dataset = 'digits'
  # 8x8 digits upsampled to 16x16; training crops are a random 16x16 window of the digit resized to 18x18,
  # i.e. shifts of up to one pixel and a slight zoom: the augmentation that closes most of the gap to 97%.
  c.pp.crop = 16
  c.pp.train_crop = 'resize_crop'
  c.pp.resize = 18
  c.pp.eval_crop = 'resize'
  c.pp.mixup = 0.2
  c.batch = 128
  c.batch_eval = 304  # The 297 test digits in one padded batch (multiple of 8 devices).

  # A convolutional stem (the hybrid root: 7x7 conv stride 2, GroupNorm, max-pool, then one ResNet stage of two
  # bottleneck units) gives the translation prior that 1,500 training images cannot teach a plain ViT (which
  # overfits at ~85%); the transformer then sees a 4x4 grid of tokens.
  c.model_name = 'R+ViT-Ti_16'
  c.model.resnet_num_layers = (2,)
  c.model.patch_size = 1
  c.model.hidden_size = 64
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 128
  c.model.dropout_rate = 0.
  c.model.classifier = 'gap'

  c.total_steps = 1500
  c.base_lr = 1e-3
  c.warmup_steps = 30
  c.decay_type = 'cosine'
  c.grad_norm_clip = 1.0
  c.optim.optimizer = 'adamw'
  c.optim.weight_decay = 0.05

  c.eval_every = 250
  c.progress_every = 50
  c.checkpoint_every = 250
  return c


def get_sweep():
  """Learning rate x decoupled weight decay around the chosen values (1e-3, 0.05)."""
  return sweep.product(base_lr=[1e-3, 3e-3], optim__weight_decay=[0.01, 0.05])
