"""ViT-B/16 trained from scratch on ImageNet-1k with the AugReg recipe ("How to train your ViT", Steiner et al.).

Command:   python -m vit_jax.main --config=configs/vit_b16_i1k_augreg.py --workdir=gs://BUCKET/vit_b16_i1k \
               --config.tfds_data_dir=gs://BUCKET/tfds
Hardware:  a TPU v3-32 (or 8x A100/H100 with scripts/launch_slurm.sh).
Time:      about 2 days on a TPU v3-32 (300 epochs; estimate).
Expected:  ImageNet-1k validation top-1 about 79-80% (AugReg reports 79.7% for B/16, 300 epochs, medium2), logged
           as val/top1; minival/, v2/ and real/ (ImageNet-v2, ReaL) beside it.
Recipe:    Adam (b1 0.9, b2 0.999), batch 4096, lr 1e-3, weight decay 0.1, 10k warmup then cosine, 300 epochs,
           RandAugment (2 layers, magnitude 10 of 10), mixup 0.5, dropout 0.1, stochastic depth 0.1, GAP-free
           token head without pre-logits.
"""
from configs import common


def get_config():
  """ViT-B/16 on ImageNet-1k from scratch, AugReg 'medium2' augmentation and regularisation."""
  c = common.get_config()
  c.dataset = 'imagenet2012'
  c.pp.train = 'train[:99%]'
  c.pp.test = 'validation'
  c.pp.crop = 224
  c.pp.train_crop = 'inception'
  c.pp.flip = True
  c.pp.randaug = (2, 10)
  c.pp.mixup = 0.5
  c.batch = 4096
  c.batch_eval = 4096
  c.model_name = 'ViT-B_16'
  c.model.dropout_rate = 0.1
  c.model.stochastic_depth = 0.1
  c.model.dtype = 'bfloat16'
  c.total_steps = 93_800           # 300 epochs of 1.27M images at batch 4096
  c.base_lr = 1e-3
  c.warmup_steps = 10_000
  c.decay_type = 'cosine'
  c.grad_norm_clip = 1.0
  c.optim.optimizer = 'adam'
  c.optim.weight_decay = 0.1
  c.optim.mu_dtype = 'bfloat16'
  c.eval_every = 5_000
  # Beside val/ (pp.test = 'validation'), big_vision's evaluators: a train minival held out by pp.train's 99%
  # (disjoint from the training images), ImageNet-v2 and the ReaL labels (a prediction is correct when in the
  # image's ReaL set; images with an empty set are skipped). Needs `tfds build imagenet_v2 imagenet2012_real`.
  c.evals.minival = dict(split='train[99%:]')
  c.evals.v2 = dict(dataset='imagenet_v2', split='test')
  c.evals.real = dict(dataset='imagenet2012_real', split='validation')
  c.progress_every = 500
  c.checkpoint_every = 2_000
  return c
