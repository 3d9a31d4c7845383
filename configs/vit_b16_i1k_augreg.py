"""ViT-B/16 trained from scratch on ImageNet-1k with the AugReg recipe ("How to train your ViT", Steiner et al.).

Command:   python -m vit_jax.main --config=configs/vit_b16_i1k_augreg.py --workdir=gs://BUCKET/vit_b16_i1k \
               --config.tfds_data_dir=gs://BUCKET/tfds
Hardware:  a TPU v3-32 (or 8x A100/H100 with scripts/launch_slurm.sh).
           GPUs and multi-slice TPU: attention_impl='auto' (cuDNN fused attention on Ampere or later GPUs, XLA
           elsewhere) and a hybrid mesh over slices/nodes (config.mesh.dcn); docs/sharding.md.
Compiled:  9.39 GiB per v3 core of 16 (fits, 6.6 GiB spare); step 224 ms (roofline, compute-bound: 18,260
           img/s) at 128 images per core in 4 accumulation steps of 32 on a v3-32, with model.scan=True, as
           printed by `python scripts/compile_presets.py --presets vit_b16_i1k_augreg --set model.scan=True`
           (docs/compile_check.md, presets table; the roofline is a ceiling). The whole batch at once needs 27.4
           GiB of temporaries per core, 2 accumulation steps 16.2 GiB in all: hence accum_steps=4 (below).
Time:      about 2 days on a TPU v3-32 (300 epochs; estimate).
Expected:  ImageNet-1k validation top-1 about 79-80% (AugReg, B/16 from scratch, 300 epochs; not reproduced here),
           logged as val/top1; minival/ (train[99%:]), v2/ (ImageNet-v2) and real/ (ReaL labels) beside it.
Recipe:    big_vision's configs/vit_i1k.py for B/16 (the AugReg paper's ImageNet-1k setup): augmentation 'medium2' =
           RandAugment (2 layers, magnitude 15; TF's level mapping, pp.randaug_variant 'tf') and mixup 0.5;
           Adam (b1 0.9, b2 0.999, first moment in bf16), batch 4096, lr 1e-3, 10k warmup steps then cosine,
           weight decay 0.1 (big_vision's wd 1e-4 = 0.1 x lr: ours is scaled by lr(step), as there), grad clip 1.0,
           300 epochs of train[:99%] (1,268,355 images), 224 px inception crop + flip, eval resize 256 + central
           224 crop, softmax cross-entropy, class-token head with a pre-logits layer (big_vision's rep_size=True),
           no label smoothing.
Departures: dropout 0.1 and stochastic depth 0.1 are the AugReg checkpoints' ('..._do_0.1-sd_0.1'); big_vision's
           vit_i1k.py sets neither. The AugReg ImageNet-1k B/16 checkpoint that timm ships ('augreg_in1k') used
           'strong2' (RandAugment (2, 20), mixup 0.8) rather than this config's default medium2. bf16 compute.
"""
from vit_jax.configs import common

IMAGENET_TRAIN_99 = 1_268_355  # TFDS imagenet2012 'train[:99%]' of 1,281,167


def get_config():
  """ViT-B/16 on ImageNet-1k from scratch, AugReg 'medium2' augmentation and regularisation."""
  c = common.get_config()
  c.dataset = 'imagenet2012'
  c.pp.train = 'train[:99%]'
  c.pp.test = 'validation'
  c.pp.crop = 224
  c.pp.train_crop = 'inception'
  c.pp.flip = True
  c.pp.randaug = (2, 15)
  c.pp.randaug_variant = 'tf'
  c.pp.mixup = 0.5
  c.batch = 4096
  # Memory, not recipe: 4 micro-batches of 1024 (32 images per v3 core) fit a v3-32 (9.4 GiB per core); the whole
  # batch (27.4 GiB of temporaries) and 2 micro-batches (16.2 GiB) do not (docs/compile_check.md). Accumulation
  # recomputes nothing (remat would) and gives the whole batch's update: mixup mixes the whole batch before the
  # split, the loss is a mean, and each micro-batch draws its own dropout/drop-path masks, as independent as one
  # draw over the batch. The recipe and its expected results are unchanged.
  c.accum_steps = 4
  c.batch_eval = 4096
  c.model_name = 'ViT-B_16'
  c.model.representation_size = 768
  c.model.dropout_rate = 0.1
  c.model.stochastic_depth = 0.1
  c.model.dtype = 'bfloat16'
  c.model.attention_impl = 'auto'  # cuDNN fused attention on GPUs that run it, XLA on TPU and CPU
  c.total_steps = 300 * IMAGENET_TRAIN_99 // 4096  # 92,897
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
