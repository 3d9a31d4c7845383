"""The MAE paper's ImageNet-1k recipes (He et al. 2022, appendix A.1 and A.2), shared by the MAE presets."""
import ml_collections

from vit_jax.configs import common

IMAGENET_TRAIN = 1_281_167  # TFDS imagenet2012 'train'


def _imagenet(c: ml_collections.ConfigDict, batch: int) -> None:
  c.dataset = 'imagenet2012'
  c.pp.train = 'train'
  c.pp.test = 'validation'
  c.pp.crop = 224
  c.pp.train_crop = 'inception'
  c.pp.flip = True
  c.batch = batch
  c.batch_eval = 1024
  c.model.dropout_rate = 0.  # MAE uses none (the registry's ViT-L_16 has 0.1)
  c.model.attention_dropout_rate = 0.
  c.model.dtype = 'bfloat16'
  c.model.attention_impl = 'auto'  # cuDNN fused attention on GPUs that run it, XLA on TPU and CPU
  c.model.classifier = 'token'
  c.model.posemb = 'sincos2d'  # the paper's fixed sin-cos embeddings (ours are 2-D; its code's too)
  c.decay_type = 'cosine'
  c.grad_norm_clip = 0.  # neither recipe clips
  c.optim.optimizer = 'adamw'
  c.optim.weight_decay = 0.05


def set_objective(c: ml_collections.ConfigDict, *, decoder: tuple, mask_ratio: float = 0.75,
                  norm_pix_loss: bool = True) -> None:
  """config.objective='mae' with its model keys; `decoder`: (layers, width, heads)."""
  c.objective = 'mae'
  c.model.mask_ratio = mask_ratio
  c.model.decoder_num_layers, c.model.decoder_hidden_size, c.model.decoder_num_heads = decoder
  c.model.norm_pix_loss = norm_pix_loss


def pretrain(model_name: str) -> ml_collections.ConfigDict:
  """MAE pretraining: 1600 epochs, batch 4096, AdamW lr 1.5e-4 * 4096/256, betas (0.9, 0.95), wd 0.05, 40 warmup
  epochs then cosine; RandomResizedCrop (area 0.2-1) + flip; mask 0.75, decoder 8 x 512 (16 heads), norm_pix."""
  c = common.get_config()
  _imagenet(c, 4096)
  c.pp.area_range = (0.2, 1.0)
  c.model_name = model_name
  set_objective(c, decoder=(8, 512, 16))
  steps_per_epoch = IMAGENET_TRAIN / c.batch
  c.total_steps = round(1600 * steps_per_epoch)   # 500,456
  c.warmup_steps = round(40 * steps_per_epoch)    # 12,511
  c.base_lr = 1.5e-4 * c.batch / 256
  c.optim.b1, c.optim.b2 = 0.9, 0.95
  c.eval_every = 10_000   # val/loss: the reconstruction loss under fixed masks
  c.progress_every = 500
  c.checkpoint_every = 5_000
  return c


# model -> (epochs, base lr per 256 images, layer decay, drop path): the MAE repository's FINETUNE.md
FINETUNE = {'ViT-B_16': (100, 5e-4, 0.65, 0.1), 'ViT-L_16': (50, 1e-3, 0.75, 0.2)}


def finetune(model_name: str) -> ml_collections.ConfigDict:
  """MAE end-to-end fine-tuning: batch 1024, AdamW (0.9, 0.999), wd 0.05, 5 warmup epochs then cosine, layer-wise
  lr decay, RandAugment (9, 0.5), mixup 0.8, cutmix 1.0, label smoothing 0.1, drop path; config.model_init set to
  the pretraining workdir."""
  epochs, blr, decay, drop_path = FINETUNE[model_name]
  c = common.get_config()
  _imagenet(c, 1024)
  c.model_name = model_name
  c.pp.randaug = (2, 9)  # timm's rand-m9-mstd0.5-inc1: 2 ops of magnitude 9 (the magnitude's std 0.5 is not ours)
  c.pp.randaug_variant = 'increasing'
  c.pp.mixup = 0.8
  c.pp.cutmix = 1.0
  c.pp.label_smoothing = 0.1
  c.model.stochastic_depth = drop_path
  steps_per_epoch = IMAGENET_TRAIN / c.batch
  c.total_steps = round(epochs * steps_per_epoch)
  c.warmup_steps = round(5 * steps_per_epoch)
  c.base_lr = blr * c.batch / 256
  c.optim.layer_decay = decay
  c.eval_every = 2_500
  c.progress_every = 500
  c.checkpoint_every = 2_500
  return c
