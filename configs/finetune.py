"""Fine-tuning a published ImageNet-21k ViT-B/16 at 384 px (google-research/vision_transformer's recipe).

Command:   python -m vit_jax.main --config=configs/finetune.py:cifar10 --workdir=/tmp/ft_cifar10 \
               --config.model_init=ViT-B_16.npz
           (arg: cifar10 | cifar100 | oxford_iiit_pet | oxford_flowers102 | imagenet2012; the checkpoint is
           gs://vit_models/imagenet21k/ViT-B_16.npz, downloaded beforehand; other models: --config.model_name.)
Hardware:  one TPU v3-8 or 8 GPUs (A100/H100); one GPU runs the same 8 accumulation steps, 64 images at a time.
           GPUs and multi-slice TPU: attention_impl='auto' (cuDNN fused attention on Ampere or later GPUs, XLA
           elsewhere) and a hybrid mesh over slices/nodes (config.mesh.dcn); docs/sharding.md.
Compiled:  8.67 GiB per v3 core of 16 (fits, 7.3 GiB spare); step 346 ms (roofline, compute-bound: 1,478
           img/s) for imagenet2012 at 64 images per core in 8 accumulation steps of 8 on a v3-8, with
           model.scan=True, as printed by `python scripts/compile_presets.py --presets finetune_imagenet2012
           --set model.scan=True` (docs/compile_check.md, presets table; the roofline is a ceiling). The
           other datasets differ only in the head: cifar10 8.66 GiB, 346 ms (`python -m vit_jax.compile_check
           --config=configs/finetune.py:cifar10 --topology=v3-8 --config.model.scan=True`). The whole batch at
           once needs 49.5 GiB of temporaries per core: hence accum_steps=8 (below).
Time:      cifar10/cifar100 (10k steps) about 3 hours on a TPU v3-8; pets/flowers (500 steps) about 10 minutes;
           imagenet2012 (20k steps) about 7 hours.
Expected:  top-1 (vit_jax README, ViT-B/16 from ImageNet-21k at 384 px): cifar10 ~99.0%, cifar100 ~92.4%,
           oxford_iiit_pet ~94.3%, oxford_flowers102 ~99.4%, imagenet2012 ~84.0%.
Recipe:    SGD momentum 0.9, batch 512, lr 0.03 (0.06 for imagenet2012), grad clip 1.0, 500 warmup steps then
           cosine, no weight decay; the head is re-initialised and the position embeddings resampled to 24x24.
Sweep:     python -m vit_jax.sweep --config=configs/finetune.py:cifar10 --workdir=/tmp/ft_sweep \
               --config.model_init=ViT-B_16.npz   (get_sweep: lr x weight decay, 8 runs; report: ... report DIR)
"""
from vit_jax.configs import common
from vit_jax.tools import sweep

# dataset -> (total_steps, train split, base_lr): vit_jax's `with_dataset` table.
DATASETS = {
    'cifar10': (10_000, 'train[:98%]', 0.03),
    'cifar100': (10_000, 'train[:98%]', 0.03),
    'oxford_iiit_pet': (500, 'train[:90%]', 0.03),
    'oxford_flowers102': (500, 'train[:90%]', 0.03),
    'imagenet2012': (20_000, 'train[:99%]', 0.06),
}


def get_config(dataset: str = 'cifar10'):
  """Fine-tuning ViT-B/16 at 384 px on `dataset` (one of DATASETS)."""
  if dataset not in DATASETS:
    raise ValueError(f'Unknown fine-tuning dataset {dataset!r}: use configs/finetune.py:<one of '
                     f'{", ".join(DATASETS)}>.')
  total_steps, train_split, base_lr = DATASETS[dataset]
  c = common.get_config()
  c.dataset = dataset
  c.pp.train = train_split
  c.pp.test = 'validation' if dataset == 'imagenet2012' else 'test'
  c.pp.crop = 384
  c.pp.train_crop = 'resize_crop'
  c.pp.eval_crop = 'resize'
  c.batch = 512
  # Memory, not recipe: 8 micro-batches of 64 (8 images per v3 core) fit a v3-8 with room to spare; the whole
  # batch at 384 px needs 49.5 GiB of temporaries per core and 4 micro-batches 14.8 GiB in all, 0.65 GiB under the
  # compiler's limit (docs/compile_check.md). Accumulation recomputes nothing (remat would) and gives the whole
  # batch's update (the loss is a batch mean; no dropout here): the recipe and its results are unchanged. GPUs with
  # more memory per device may lower it.
  c.accum_steps = 8
  c.batch_eval = 512
  c.model_name = 'ViT-B_16'
  c.model_init = 'ViT-B_16.npz'
  c.model.dtype = 'bfloat16'
  c.model.attention_impl = 'auto'  # cuDNN fused attention on GPUs that run it, XLA on TPU and CPU
  c.total_steps = total_steps
  c.base_lr = base_lr
  c.warmup_steps = 500 if total_steps > 500 else 50
  c.decay_type = 'cosine'
  c.grad_norm_clip = 1.0
  c.optim.optimizer = 'sgd'
  c.optim.momentum = 0.9
  c.optim.weight_decay = 0.
  c.eval_every = max(total_steps // 10, 100)
  c.progress_every = 50
  c.checkpoint_every = 1_000
  return c


def get_sweep(dataset: str = 'cifar10'):
  """The learning rates vit_jax's paper sweeps for fine-tuning ({0.003, 0.01, 0.03, 0.06}) x weight decay {0, 1e-4}."""
  del dataset  # The same grid for every dataset.
  return sweep.product(base_lr=[0.003, 0.01, 0.03, 0.06], optim__weight_decay=[0., 1e-4])
