"""ViT-L/16 pre-training on ImageNet-21k with the ViT paper's recipe.

Command:   python -m vit_jax.main --config=configs/vit_l16_i21k.py --workdir=gs://BUCKET/vit_l16_i21k \
               --config.dataset=/gcs/BUCKET/imagenet21k    (the bucket mounted with gcsfuse on every host)
           after preparing the release once (it has no TFDS builder; README, "ImageNet-21k"):
           python -m vit_jax.prepare_data --input=fall11_whole.tar --output=gs://BUCKET/imagenet21k
           (an extracted folder <root>/train/<wnid>/*.JPEG works too, read file by file); 1% is held out.
Hardware:  a TPU v3-512 (512 cores); multi-host launch with scripts/launch_tpu_pod.sh.
Time:      about 1-2 days (the ViT paper.
Expected:   0.23k TPUv3-core-days):ImageNet-1k top-1 about 85.2% after fine-tuning at 384 px (the ViT paper).
Recipe:    Adam (b1 0.9, b2 0.999), batch 4096, lr 1e-3, weight decay 0.03, 10k warmup steps then linear decay,
           90 epochs, sigmoid cross-entropy (multi-label ImageNet-21k), head bias init -10, pre-logits layer.
"""
from configs import common


def get_config():
  """ViT-L/16, ImageNet-21k, the paper's recipe."""
  c = common.pretrain_i21k('ViT-L_16')
  c.model.remat_policy = 'dots'
  return c
