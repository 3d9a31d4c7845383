"""MAE pretraining of ViT-B/16 on ImageNet-1k without labels (He et al. 2022, "Masked Autoencoders Are Scalable
Vision Learners", appendix A.1).

Command:   python -m vit_jax.main --config=configs/mae_vit_b16_i1k.py --workdir=gs://BUCKET/mae_b16 \
               --config.tfds_data_dir=gs://BUCKET/tfds
           then fine-tune: configs/mae_finetune_i1k.py:b16 with --config.model_init=gs://BUCKET/mae_b16.
Hardware:  a TPU v3-128 or 32 GPUs (A100/H100); the encoder sees 49 of 196 patches, so with the decoder a step
           costs 0.56x the FLOPs of a supervised ViT-B step (vit_jax/models/flops.py's count at 224 px).
Time:      about a day on a TPU v3-128 (estimate, not measured: the paper reports 31 hours on 128 TPU v3 cores
           for the 1600 epochs of ViT-L, which costs ~3.5x ViT-B per image).
Expected:  pretraining logs val/loss (the masked-patch reconstruction loss on normalised pixels);
           after configs/mae_finetune_i1k.py:b16, ImageNet-1k top-1 83.6% (the paper's table 3, ViT-B,
           1600 epochs). Not reproduced here.
Recipe:    1600 epochs, batch 4096, AdamW lr 1.5e-4 * 4096 / 256 = 2.4e-3, betas (0.9, 0.95), weight decay 0.05,
           40 warmup epochs then cosine; RandomResizedCrop (area 0.2-1) + flip only; mask ratio 0.75 drawn per
           example; decoder 8 blocks, 512 wide, 16 heads; loss on normalised pixels (norm_pix_loss).
Departures: fixed 2-D sin-cos position embeddings in the encoder as in the paper's code, but our blocks use the
           ViT's tanh GELU and LayerNorm eps 1e-6 (the paper's timm blocks: erf GELU, eps 1e-6); masks are drawn
           from (seed, step, example) rather than torch's per-batch noise; weight decay multiplies lr(step) (optax
           AdamW, as torch's); bf16 compute; no gradient clipping (as the paper).
"""
from vit_jax.configs import mae


def get_config():
  """ViT-B/16 MAE pretraining on ImageNet-1k: the paper's recipe (see the module docstring)."""
  return mae.pretrain('ViT-B_16')
