"""The shared base of every preset: all config keys with their defaults. Presets override a few of them.

Keys keep google-research/vision_transformer's names where it has them (`total_steps`, `batch`, `batch_eval`,
`base_lr`, `warmup_steps`, `decay_type`, `grad_norm_clip`, `accum_steps`, `eval_every`, `progress_every`,
`checkpoint_every`, `model_name`, `dataset`, `pp`, `tfds_data_dir`, `seed`), so sweep scripts carry over.
The config is locked: a misspelt key is an error (with the nearest valid key), not a silent no-op.
"""
import ml_collections
from ml_collections import config_dict

_ph = config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
  """Every key, with defaults that train the embedded 'digits' set; presets start from this."""
  c = ml_collections.ConfigDict()

  # --- Data (vit_jax.data.pipeline). `pp` keys are documented in vit_jax/data/preprocess.py; None = the dataset's
  # default.
  c.dataset = 'digits'             # TFDS name | class folders | prepare_data output | 'digits' | 'synthetic'
  c.tfds_data_dir = _ph(str)
  c.pp = ml_collections.ConfigDict(dict(
      train='train', test='test', crop=_ph(int), train_crop=_ph(str), area_range=_ph(tuple),
      aspect_range=_ph(tuple), resize=_ph(int), eval_crop=_ph(str), flip=_ph(bool), randaug=_ph(tuple),
      randaug_variant=_ph(str), mixup=_ph(float), cutmix=_ph(float), mix_prob=_ph(float),
      label_smoothing=_ph(float), value_range=_ph(tuple), num_classes=_ph(int), num_train=_ph(int),
      num_eval=_ph(int), workers=_ph(int), threads=_ph(int)))
  c.batch = 512                    # global batch (all devices, all processes)
  c.batch_eval = 512
  c.seed = 0

  # --- Model (vit_jax.models): a registered name or variant ('ViT-B_16', 'B/16', 'testing'), then overrides.
  c.model_name = 'ViT-B_16'
  c.model = ml_collections.ConfigDict(dict(
      patch_size=_ph(int), hidden_size=_ph(int), num_layers=_ph(int), num_heads=_ph(int), mlp_dim=_ph(int),
      dropout_rate=_ph(float), attention_dropout_rate=_ph(float), classifier=_ph(str),
      representation_size=_ph(int),  # 0 removes the pre-logits layer of a model that has one
      resnet_num_layers=_ph(tuple),  # hybrids: units per ResNet stage after the root, e.g. (3, 4, 9)
      posemb='learn', head_bias_init=0., head_zeroinit=True, stochastic_depth=0.,
      dtype='float32', attention_impl='xla', scan=False, remat_policy='none',
      # Options of current ViT research (README, "Model options"); the defaults compute the published function.
      num_registers=0,             # learned register tokens after the class token ("ViTs Need Registers")
      layer_scale_init=_ph(float),  # LayerScale on every residual branch from this value, e.g. 1e-4 (CaiT/DeiT III)
      qk_norm=False,               # LayerNorm on each head's queries and keys (ViT-22B)
      parallel_block=False,        # attention and MLP in parallel from one LayerNorm (ViT-22B)
      use_bias=True,               # False: no biases in the q/k/v/out and MLP projections
      patch_dropout=0.,            # training: drop this fraction of the patch tokens (FLIP), e.g. 0.5
      mup_base_width=_ph(int)))    # muP (with optim): the width whose tuned lr carries over to wider models
  c.model_init = _ph(str)          # published .npz to start from (fine-tuning); see the resume order in train.py

  # --- Optimisation (vit_jax.training.optim): schedule keys at the top level as in vit_jax, the rest in `optim`.
  c.total_steps = 10_000
  c.base_lr = 1e-3
  c.warmup_steps = 500
  c.decay_type = 'cosine'          # 'cosine' | 'linear' | 'rsqrt' | 'constant'
  c.grad_norm_clip = 1.0
  c.accum_steps = 1
  c.optim = ml_collections.ConfigDict(dict(
      optimizer='adam', weight_decay=0., b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False,
      mu_dtype=_ph(str), linear_end=1e-5, rsqrt_timescale=10_000, adafactor_decay_rate=0.8,
      adafactor_b2_cap=0.999, adafactor_min_dim_to_factor=32,
      lr_mults=(),                 # ((regex, multiplier), ...) over '/'-joined param paths
      freeze=(),                   # (regex, ...): params that get no updates
      layer_decay=_ph(float)))     # layer-wise lr decay (BEiT/MAE fine-tuning), e.g. 0.75: block i at decay^(depth-i)
  c.loss = 'softmax_xent'          # 'softmax_xent' | 'sigmoid_xent' (multi-label, ImageNet-21k)
  c.ema_decay = 0.                 # > 0: keep an EMA of the params and evaluate it beside the raw params

  # --- Evaluators beside the default 'val' (config.dataset's pp.test split, logged as val/...), big_vision style:
  # name -> dict(split=..., dataset=... (default config.dataset), pp=dict(...) (eval pp overrides), every=...
  # (default eval_every)), logged as <name>/top1, <name>/top5, <name>/loss. Example: configs/vit_b16_i1k_augreg.py.
  c.evals = ml_collections.ConfigDict()

  # --- Few-shot linear evaluation of the pre-logits features during training (vit_jax.fewshot; big_vision's).
  c.fewshot = ml_collections.ConfigDict(dict(
      datasets=(),                 # ((dataset, train split, test split), ...): ('cifar100', 'train[:9000]', 'test')
      every=0,                     # steps between evaluations (0: at the end of training only)
      shots=(1, 5, 10, 25), num_draws=5, l2_reg=2.**10, knn_k=(10,), batch=256))

  # --- Devices (vit_jax.training.sharding): mesh axis sizes (-1 = the rest) and the logical-axis rule table.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = 'dp'          # 'dp' | 'fsdp' | 'tp', or ((logical axis, mesh axes), ...)
  # Multi-process jobs (vit_jax.training.multihost; docs/pods.md): how long a lost process may go unnoticed.
  c.multihost = ml_collections.ConfigDict(dict(
      heartbeat_timeout_s=60,      # a process silent this long is lost: the others exit (status 5) naming it
      barrier_timeout_s=600))      # longest wait for all processes: start-up, committing a checkpoint

  # --- Loop, checkpoints, metrics.
  c.eval_every = 1000
  c.progress_every = 100
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3           # keep the last K checkpoints ...
  c.keep_checkpoint_every = 0      # ... plus every M-th step's (0: none)
  c.resume = _ph(str)              # another workdir or checkpoint directory to continue from
  c.tensorboard = True             # TensorBoard event files beside metrics.jsonl (needs clu + TensorFlow)
  c.profile_steps = 0              # > 0: capture a profiler trace of this many steps, after the first eval
  c.peak_flops = _ph(float)        # per-device peak FLOP/s for the MFU estimate (None: a table by device)
  return c


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
  c.eval_every = 10_000
  c.progress_every = 500
  c.checkpoint_every = 2_000
  c.keep_checkpoint_every = 50_000
  return c


def _width(model_name: str) -> int:
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  return registry.get_config(model_name)['hidden_size']
