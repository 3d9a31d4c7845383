"""ViT-H/14 pre-training on ImageNet-21k with the ViT paper's recipe.

Command:   python -m vit_jax.main --config=configs/vit_h14_i21k.py --workdir=gs://BUCKET/vit_h14_i21k \
               --config.dataset=/gcs/BUCKET/imagenet21k    (the bucket mounted with gcsfuse on every host)
           after preparing the release once (it has no TFDS builder; README, "ImageNet-21k"):
           python -m vit_jax.prepare_data --input=fall11_whole.tar --output=gs://BUCKET/imagenet21k
           (an extracted folder <root>/train/<wnid>/*.JPEG works too, read file by file); 1% is held out.
Hardware:  a TPU v3-1024 or v4-512 (FSDP); multi-host launch with scripts/launch_tpu_pod.sh.
Time:      about 3-4 days (estimate from the paper's core-days).
Expected:  ImageNet-1k top-1 about 85-86% after fine-tuning at 384/518 px (estimate; the paper reports H/14 from JFT only).
Recipe:    Adam (b1 0.9, b2 0.999), batch 4096, lr 1e-3, weight decay 0.03, 10k warmup steps then linear decay,
           90 epochs, sigmoid cross-entropy (multi-label ImageNet-21k), head bias init -10, pre-logits layer.
"""
from configs import common


def get_config():
  """ViT-H/14, ImageNet-21k, the paper's recipe."""
  c = common.pretrain_i21k('ViT-H_14')
  c.sharding_rules = 'fsdp'  # 632M params: shard params and optimizer state over the fsdp axis
  c.mesh.data, c.mesh.fsdp = -1, 8
  c.model.remat_policy = 'dots'
  c.model.scan = True
  return c
