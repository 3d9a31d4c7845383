"""DeiT-B/16 distilled on ImageNet-1k (Touvron et al. 2021, "Training data-efficient image transformers &
distillation through attention"): hard distillation through the distillation token.

Command:   python -m vit_jax.main --config=configs/deit_b16_i1k_distill.py --workdir=gs://BUCKET/deit_b16 \
               --config.tfds_data_dir=gs://BUCKET/tfds --config.teacher=gs://BUCKET/teachers/vit_large_patch16_224
Hardware:  a TPU v3-32 (or 8x A100/H100 with scripts/launch_slurm.sh); the teacher's forward runs in every step.
Time:      about 3 days on a TPU v3-32 (300 epochs, student plus a ViT-L/16 teacher forward; estimate).
Expected:  ImageNet-1k validation top-1 about 83% (the paper's DeiT-B distilled, 300 epochs: 83.4%, teacher
           RegNetY-16GF 82.9%; not reproduced here), logged as val/top1 (the two heads' logits averaged).
Recipe:    DeiT table 9 and section 5: AdamW (0.9, 0.999), lr 5e-4 x batch / 512 = 1e-3 at batch 1024, weight
           decay 0.05, 5 warmup epochs then cosine, 300 epochs, no gradient clipping, label smoothing 0.1, no
           dropout, stochastic depth 0.1, RandAugment m9 (timm's 'increasing' levels, 2 layers), mixup 0.8 and
           cutmix 1.0, 224 px inception crop + flip; the class token's head learns the labels, the distillation
           token's head the teacher's argmax, the loss their mean (alpha 0.5).
           "A good teacher is patient and consistent" (Beyer et al. 2022; ResNet-50 student 82.8% after 9,600
           epochs from a BiT-ResNet-152x2 teacher) is this preset with --config.model.distill_token=False
           --config.distill.alpha=1.0 (KL at T = 1 only, the teacher on the same mixed crop) and far more epochs.
Departures: the teacher: DeiT's RegNetY-16GF is a CNN our loaders do not read, so config.teacher is any ViT they
           do (a timm / HF ImageNet-1k ViT such as vit_large_patch16_224.augreg_in21k_ft_in1k, or our workdir);
           no random erasing and no repeated augmentation (we have neither); bf16 compute; the train split is all of
           'train' and val/ is 'validation', as in the paper.
"""
from vit_jax.configs import common

IMAGENET_TRAIN = 1_281_167  # TFDS imagenet2012 'train'


def get_config():
  """DeiT-B/16 with the distillation token, DeiT's recipe, a ViT teacher named by config.teacher."""
  c = common.get_config()
  c.dataset = 'imagenet2012'
  c.pp.train = 'train'
  c.pp.test = 'validation'
  c.pp.crop = 224
  c.pp.train_crop = 'inception'
  c.pp.flip = True
  c.pp.randaug = (2, 9)
  c.pp.randaug_variant = 'increasing'
  c.pp.mixup = 0.8
  c.pp.cutmix = 1.0
  c.pp.label_smoothing = 0.1
  c.batch = 1024
  c.batch_eval = 1024

  c.model_name = 'ViT-B_16'
  c.model.representation_size = 0  # DeiT has no pre-logits layer
  c.model.dropout_rate = 0.
  c.model.attention_dropout_rate = 0.
  c.model.stochastic_depth = 0.1
  c.model.classifier = 'token'
  c.model.distill_token = True
  c.model.dtype = 'bfloat16'
  c.model.attention_impl = 'auto'  # cuDNN fused attention on GPUs that run it, XLA on TPU and CPU

  c.objective = 'distill'
  # config.teacher stays unset: the command names one; without it the run stops in one line.
  c.distill.alpha = 0.5  # hard distillation: the mean of the two heads' losses
  c.distill.temperature = 1.0  # unused by hard distillation

  c.total_steps = 300 * IMAGENET_TRAIN // 1024
  c.base_lr = 1e-3
  c.warmup_steps = 5 * IMAGENET_TRAIN // 1024
  c.decay_type = 'cosine'
  c.grad_norm_clip = 0.
  c.optim.optimizer = 'adamw'
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.weight_decay = 0.05
  c.optim.mu_dtype = 'bfloat16'
  c.eval_every = 5_000
  c.progress_every = 500
  c.checkpoint_every = 2_000
  return c

