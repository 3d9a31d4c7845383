"""The shared base of every preset: all config keys with their defaults. Presets override a few of them.

Keys keep google-research/vision_transformer's names where it has them (`total_steps`, `batch`, `batch_eval`,
`base_lr`, `warmup_steps`, `decay_type`, `grad_norm_clip`, `accum_steps`, `eval_every`, `progress_every`,
`checkpoint_every`, `model_name`, `dataset`, `pp`, `tfds_data_dir`, `seed`), so sweep scripts carry over.
The config is locked: a misspelt key is an error (with the nearest valid key), not a silent no-op.
"""
import copy

import ml_collections
from ml_collections import config_dict

_ph = config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
  """Every key, with defaults that train the embedded 'digits' set; presets start from this."""
  c = ml_collections.ConfigDict()
  # Every key has its meaning as the trailing comment of its line: `python -m vit_jax.main --print_config` and
  # docs/config.md are generated from these comments (vit_jax/configs/describe.py), so write one per key.

  # --- Data (vit_jax.data.pipeline; per-example ops in vit_jax/data/preprocess.py). pp: None = the dataset's default.
  c.dataset = 'digits'             # TFDS name | image folder <root>/<split>/<class>/* | prepare_data output | 'digits' | 'synthetic'
  c.tfds_data_dir = _ph(str)       # TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets)
  c.pp = ml_collections.ConfigDict(dict(
      train='train',               # training split, TFDS split syntax ('train[:99%]')
      test='test',                 # split of the 'val' evaluator
      crop=_ph(int),               # image side in pixels (default 224; digits 8)
      train_crop=_ph(str),         # 'inception' (random resized crop) | 'resize_crop' | 'resize'
      area_range=_ph(tuple),       # inception crop: fraction of the area kept (default (0.08, 1.0))
      aspect_range=_ph(tuple),     # inception crop: width/height range (default (3/4, 4/3))
      resize=_ph(int),             # 'resize_crop' train side; eval smaller side (default crop * 8 / 7)
      eval_crop=_ph(str),          # 'resize_small_crop' (resize smaller side, central crop) | 'resize'
      flip=_ph(bool),              # random horizontal flip in training (default True; digits False)
      randaug=_ph(tuple),          # RandAugment (num_layers, magnitude), e.g. (2, 15); None = off
      randaug_variant=_ph(str),    # 'tf' (big_vision's level mapping) | 'increasing' (timm's -inc1)
      mixup=_ph(float),            # mixup Beta(a, a) concentration; 0 = off
      cutmix=_ph(float),           # cutmix Beta(a, a) concentration; 0 = off (both on: one per batch)
      mix_prob=_ph(float),         # probability that a batch is mixed at all (default 1.0)
      label_smoothing=_ph(float),  # y * (1 - s) + s / num_classes (multi-hot: s / 2); default 0
      value_range=_ph(tuple),      # pixel range the model sees (default (-1, 1))
      num_classes=_ph(int),        # synthetic only: number of classes (default 1000)
      num_train=_ph(int),          # synthetic only: training examples (default 1,281,167)
      num_eval=_ph(int),           # synthetic only: evaluation examples (default 50,000)
      workers=_ph(int),            # grain worker processes decoding images (0: threads in this process)
      threads=_ph(int),            # grain reader threads per process (default: the CPU count)
  ))
  c.batch = 512                    # global training batch (all devices, all processes)
  c.batch_eval = 512               # global evaluation batch (the last one padded and masked)
  c.seed = 0                       # seeds init, data order, augmentation and dropout

  # --- Model (vit_jax.models): a registered name or variant, then overrides (None: the registered value).
  c.model_name = 'ViT-B_16'        # registered name or variant: 'ViT-B_16', 'B/16', 'R50+ViT-B_16', 'testing'
  c.model = ml_collections.ConfigDict(dict(
      patch_size=_ph(int),         # patch side in pixels (hybrids: after the ResNet stem)
      hidden_size=_ph(int),        # token width D
      num_layers=_ph(int),         # encoder blocks
      num_heads=_ph(int),          # attention heads
      mlp_dim=_ph(int),            # MLP hidden width
      dropout_rate=_ph(float),     # dropout after the MLP and the position embeddings
      attention_dropout_rate=_ph(float),  # dropout on the attention weights
      classifier=_ph(str),         # 'token' | 'gap' | 'map' | 'unpooled' | 'token_unpooled'
      representation_size=_ph(int),  # pre-logits layer width; 0 removes the one a model has
      resnet_num_layers=_ph(tuple),  # hybrids: units per ResNet stage after the root, e.g. (3, 4, 9)
      posemb='learn',              # position embeddings: 'learn' | 'sincos2d'
      head_bias_init=0.,           # initial bias of the classification head (e.g. -10 for sigmoid xent)
      head_zeroinit=True,          # zero-initialise the head kernel
      stochastic_depth=0.,         # drop-path rate of the last block (linear from 0 over depth)
      dtype='float32',             # compute dtype ('bfloat16'); parameters stay float32
      attention_impl='xla',        # 'xla' | 'dot_product' | 'cudnn' | 'auto' (cuDNN on GPU, else XLA)
      scan=False,                  # nn.scan over the blocks (compile time independent of depth)
      remat_policy='none',         # rematerialisation: 'none' | 'full' | 'dots' | 'dots_no_batch'
      num_registers=0,             # learned register tokens after the class token ("ViTs Need Registers")
      layer_scale_init=_ph(float),  # LayerScale on every residual branch from this value, e.g. 1e-4 (CaiT)
      qk_norm=False,               # LayerNorm on each head's queries and keys (ViT-22B)
      parallel_block=False,        # attention and MLP in parallel from one LayerNorm (ViT-22B)
      use_bias=True,               # False: no biases in the q/k/v/out and MLP projections
      patch_dropout=0.,            # training: drop this fraction of the patch tokens (FLIP), e.g. 0.5
      mup_base_width=_ph(int),     # muP: the width whose tuned lr carries over to wider models
      # Options of checkpoints trained elsewhere (docs/timm_hf.md); vit_jax.interop sets them from the checkpoint.
      mlp_activation='gelu_tanh',  # 'gelu_tanh' (ours) | 'gelu' (erf: timm, HF) | 'quick_gelu' (CLIP) | 'swiglu'
      norm_eps=1e-6,               # LayerNorm epsilon (CLIP 1e-5, HF ViT 1e-12)
      pre_norm=False,              # LayerNorm before the first block (CLIP)
      fc_norm=False,               # LayerNorm after pooling instead of before it (timm's fc_norm, GAP models)
      projection_dim=_ph(int),     # bias-free linear map of the pooled features before the head (CLIP)
      pixel_mean=_ph(tuple),       # (r, g, b): the model re-normalises its [-1, 1] input to (x01 - mean) / std
      pixel_std=_ph(tuple),        # (r, g, b), with pixel_mean (ImageNet, OpenAI CLIP statistics)
      # MAE pretraining (config.objective='mae', docs/mae.md); a plain ViT's encoder, this decoder.
      mask_ratio=0.75,             # fraction of each image's patches masked (the encoder sees the rest); in (0, 1)
      decoder_num_layers=8,        # MAE decoder blocks
      decoder_hidden_size=512,     # MAE decoder width (its MLP is 4x); fixed sin-cos position embeddings
      decoder_num_heads=16,        # MAE decoder attention heads
      norm_pix_loss=True,          # MAE: normalise each target patch by its own mean and variance
      distill_token=False,         # DeiT's distillation token: own head on the teacher's hard label (classifier 'token')
  ))
  c.model_init = _ph(str)          # checkpoint to fine-tune from: .npz, workdir, timm/HF file or folder (docs/timm_hf.md)
  c.model_init_arch = _ph(str)     # timm architecture of a bare timm state dict in model_init

  # --- Optimisation (vit_jax.training.optim): schedule keys at the top level as in vit_jax, the rest in `optim`.
  c.total_steps = 10_000           # training steps
  c.base_lr = 1e-3                 # peak learning rate (after warmup)
  c.warmup_steps = 500             # linear warmup from 0
  c.decay_type = 'cosine'          # 'cosine' | 'linear' | 'rsqrt' | 'constant'
  c.grad_norm_clip = 1.0           # clip the gradient's global norm to this (0: off)
  c.accum_steps = 1                # gradient accumulation: micro-batches per step
  c.optim = ml_collections.ConfigDict(dict(
      optimizer='adam',            # 'adam' | 'adamw' (the same chain) | 'sgd' | 'adafactor'
      weight_decay=0.,             # decoupled weight decay (kernels only), scaled by lr(step) as optax.adamw
      b1=0.9,                      # Adam beta1; adafactor momentum (None: none)
      b2=0.999,                    # Adam second-moment decay
      eps=1e-8,                    # Adam epsilon
      momentum=0.9,                # sgd momentum (None or 0: plain sgd)
      nesterov=False,              # sgd: Nesterov momentum
      mu_dtype=_ph(str),           # dtype of Adam's first moment / momentum (e.g. 'bfloat16')
      linear_end=1e-5,             # lr at the end of 'linear' decay
      rsqrt_timescale=10_000,      # 'rsqrt' decay timescale in steps
      adafactor_decay_rate=0.8,    # adafactor second-moment decay exponent
      adafactor_b2_cap=0.999,      # adafactor cap on the second-moment decay
      adafactor_min_dim_to_factor=32,  # adafactor: factor only dimensions at least this large
      lr_mults=(),                 # ((regex, multiplier), ...) over '/'-joined param paths
      freeze=(),                   # (regex, ...): params that get no updates
      layer_decay=_ph(float),      # layer-wise lr decay (BEiT/MAE fine-tuning), e.g. 0.75
  ))
  c.objective = 'classification'   # 'classification' (labels) | 'mae' (masked-autoencoder pretraining, docs/mae.md)
  c.loss = 'softmax_xent'          # 'softmax_xent' | 'sigmoid_xent' (multi-label, ImageNet-21k)
  c.ema_decay = 0.                 # > 0: keep an EMA of the params and evaluate it beside the raw params

  # --- Objective (vit_jax.training.objectives); distillation (vit_jax.training.distill, docs/distillation.md).
  c.objective = 'classification'   # 'classification' (labels) | 'distill' (a frozen teacher, config.teacher)
  c.teacher = _ph(str)             # distill: teacher checkpoint: our workdir (its newest, EMA if any), .npz, timm/HF file
  c.teacher_model_name = _ph(str)  # distill: the teacher's registered model (None: the workdir's own, or timm/HF's)
  c.teacher_model = ml_collections.ConfigDict()  # distill: config.model-style overrides of the teacher's model
  c.distill = ml_collections.ConfigDict(dict(
      temperature=1.0,             # T: KL(teacher || student) of the logits / T, times T**2
      alpha=1.0,                   # loss = alpha * distillation + (1 - alpha) * label loss
  ))

  # --- Evaluators beside the default 'val' (config.dataset's pp.test split, logged as val/...), big_vision style:
  # name -> dict(split=..., dataset=... (default config.dataset), pp=dict(...) (eval pp overrides), every=...
  # (default eval_every)), logged as <name>/top1, <name>/top5, <name>/loss. Example: configs/vit_b16_i1k_augreg.py.
  c.evals = ml_collections.ConfigDict()  # name -> dict(split, dataset, pp, every): more evaluators

  # --- Few-shot linear evaluation of the pre-logits features during training (vit_jax.fewshot; big_vision's).
  c.fewshot = ml_collections.ConfigDict(dict(
      datasets=(),                 # ((dataset, train split, test split), ...): ('cifar100', 'train[:9000]', 'test')
      every=0,                     # steps between evaluations (0: at the end of training only)
      shots=(1, 5, 10, 25),        # examples per class of each few-shot problem
      num_draws=5,                 # random draws of the shots, averaged
      l2_reg=2.**10,               # ridge regularisation of the closed-form linear classifier
      knn_k=(10,),                 # k of the cosine kNN evaluations
      batch=256,                   # feature-extraction batch
  ))

  # --- Devices (vit_jax.training.sharding): mesh axis sizes (-1 = the rest) and the logical-axis rule table.
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                     # data-parallel axis size (-1: the devices left)
      fsdp=1,                      # parameter-sharding (FSDP) axis size
      tensor=1,                    # tensor-parallel axis size
      # How many TPU slices / GPU nodes ("granules") each axis spans (docs/sharding.md); sizes above are totals.
      dcn=ml_collections.ConfigDict(dict(
          data=-1,                 # slices/nodes along the data axis (-1: all of them)
          fsdp=1,                  # slices/nodes along the fsdp axis
          tensor=1,                # slices/nodes along the tensor axis
      )),
  ))
  c.sharding_rules = 'dp'          # 'dp' | 'fsdp' | 'tp', or ((logical axis, mesh axes), ...)
  # Multi-process jobs (vit_jax.training.multihost; docs/pods.md): how long a lost process may go unnoticed.
  c.multihost = ml_collections.ConfigDict(dict(
      heartbeat_timeout_s=60,      # a process silent this long is lost: the others exit (status 5) naming it
      barrier_timeout_s=600))      # longest wait for all processes: start-up, committing a checkpoint

  # --- Loop, checkpoints, metrics.
  c.eval_every = 1000              # steps between evaluations (and at the end)
  c.progress_every = 100           # steps between progress reports (loss, img/s, MFU)
  c.checkpoint_every = 1000        # steps between checkpoints (and at the end, and on SIGTERM)
  c.keep_checkpoints = 3           # keep the last K checkpoints ...
  c.keep_checkpoint_every = 0      # ... plus every M-th step's (0: none)
  c.resume = _ph(str)              # another workdir or checkpoint directory to continue from
  c.tensorboard = True             # TensorBoard event files beside metrics.jsonl
  c.profile_steps = 0              # > 0: capture a profiler trace of this many steps, after the first eval
  c.peak_flops = _ph(float)        # per-device peak FLOP/s for the MFU estimate (None: a table by device)

  # --- google-research/vision_transformer's own keys, so its config files and its command lines run here; unset
  # (None) in ours. vit_jax/configs/reference_compat.py maps them (docs/migration.md); prefer the keys above.
  c.pretrained_dir = _ph(str)      # reference: folder of <model_name>.npz -> model_init
  c.model_or_filename = _ph(str)   # reference (augreg.py): AugReg model or file name in pretrained_dir -> model_init
  c.optim_dtype = _ph(str)         # reference: momentum dtype -> optim.mu_dtype
  c.shuffle_buffer = _ph(int)      # reference: no meaning here (epoch-wise random order, no buffer); logged
  c.prefetch = _ph(int)            # reference: no meaning here (the loop prefetches two batches); logged
  c.tfds_manual_dir = _ph(str)     # reference: no meaning here (TFDS sets are prepared beforehand); logged
  c.trainer = _ph(str)             # reference: 'train' only ('inference_time': scripts/benchmark.py)
  return c


# google-research/vision_transformer's fine-tuning presets (its `DATASET_PRESETS`, 384 px): name -> overrides.
DATASET_PRESETS = {
    name: ml_collections.ConfigDict(dict(total_steps=steps, pp=ml_collections.ConfigDict(
        dict(train=train, test=test, crop=384))))
    for name, steps, train, test in (('cifar10', 10_000, 'train[:98%]', 'test'),
                                     ('cifar100', 10_000, 'train[:98%]', 'test'),
                                     ('imagenet2012', 20_000, 'train[:99%]', 'validation'))
}


def with_dataset(config: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` for fine-tuning on `dataset` (a `DATASET_PRESETS` name), as the reference's."""
  if dataset not in DATASET_PRESETS:
    raise ValueError(f'No fine-tuning preset for {dataset!r}: use one of {", ".join(DATASET_PRESETS)}, or set '
                     'config.dataset and config.pp yourself.')
  config = copy.deepcopy(config).unlock()  # placeholders keep their types: --config.pp.resize=... still parses
  config.dataset = dataset
  config.update(DATASET_PRESETS[dataset])
  return config


# 90 epochs (ViT paper, table 3) of the ImageNet-21k release the paper used (fall11: 14,197,122 images) at batch 4096.
I21K_STEPS = 90 * 14_197_122 // 4096


def pretrain_i21k(model_name: str) -> ml_collections.ConfigDict:
  """The ViT paper's ImageNet-21k pre-training recipe for `model_name` (Dosovitskiy et al. 2021, table 3).

  Adam (0.9, 0.999), batch 4096, lr 1e-3 with 10k warmup steps then linear decay, weight decay 0.03, dropout 0.1,
  grad clip 1 (global norm), 90 epochs at 224 px, and a pre-logits layer as wide as the model.
  """
  c = get_config()
  c.dataset = 'imagenet21k'        # no TFDS builder: pass the output of vit_jax.prepare_data (or a folder)
  c.pp.train = 'train[:99%]'       # the release has one split: hold out a fixed random 1% for validation
  c.pp.test = 'train[99%:]'
  c.pp.crop = 224
  c.pp.train_crop = 'inception'
  c.pp.flip = True
  c.batch = 4096
  c.batch_eval = 4096
  c.model_name = model_name
  c.model.representation_size = _width(model_name)  # the paper's pre-logits layer, as wide as the model
  c.model.dropout_rate = 0.1       # table 3 (the registry's published-checkpoint rate is 0 for S/16 and B/16)
  c.model.attention_dropout_rate = 0.
  c.model.head_bias_init = -10.    # sigmoid xent over 21k classes: start every class at p ~ 4.5e-5
  c.model.head_zeroinit = True
  c.loss = 'sigmoid_xent'
  c.total_steps = I21K_STEPS
  c.base_lr = 1e-3
  c.warmup_steps = 10_000
  c.decay_type = 'linear'
  c.grad_norm_clip = 1.0
  c.optim.optimizer = 'adam'
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.weight_decay = 0.03
  c.optim.mu_dtype = 'bfloat16'
  c.model.dtype = 'bfloat16'
  c.model.attention_impl = 'auto'  # cuDNN fused attention on GPUs that run it, XLA on TPU and CPU
  c.eval_every = 10_000
  c.progress_every = 500
  c.checkpoint_every = 2_000
  c.keep_checkpoint_every = 50_000
  return c


def _width(model_name: str) -> int:
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  return registry.get_config(model_name)['hidden_size']
