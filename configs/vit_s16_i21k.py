"""ViT-S/16 pre-training on ImageNet-21k with the ViT paper's ImageNet-21k recipe for B (it has no S/16).

Command:   python -m vit_jax.main --config=configs/vit_s16_i21k.py --workdir=gs://BUCKET/vit_s16_i21k \
               --config.dataset=gs://BUCKET/imagenet21k    (read in place: array_record opens gs://)
           after preparing the release once (it has no TFDS builder; README, "ImageNet-21k"):
           python -m vit_jax.prepare_data --input=fall11_whole.tar --output=gs://BUCKET/imagenet21k
           (an extracted folder <root>/train/<wnid>/*.JPEG works too, read file by file); 1% is held out.
Hardware:  a TPU v3-64 (64 cores); multi-host launch with scripts/launch_tpu_pod.sh.
           GPUs and multi-slice TPU: attention_impl='auto' (cuDNN fused attention on Ampere or later GPUs, XLA
           elsewhere) and a hybrid mesh over slices/nodes (config.mesh.dcn); docs/sharding.md.
Compiled:  7.34 GiB per v3 core of 16 (fits, 8.7 GiB spare); step 30 ms (roofline, compute-bound: 138,448 img/s)
           at 64 images per core on a v3-64, with model.scan=True, as printed by
           `python scripts/compile_presets.py --set model.scan=True` (docs/compile_check.md, presets table;
           the roofline is a ceiling: real ViT steps on TPU reach about half).
Time:      about 2 days (estimate).
Expected:  no published number for this recipe. For comparison, AugReg's S/16 ImageNet-21k checkpoint (a different
           recipe) fine-tunes to about 80-81% ImageNet-1k top-1 at 384 px (configs/finetune.py:imagenet2012).
Recipe:    the ViT paper (Dosovitskiy et al. 2021), table 3 and appendix B.1: Adam (b1 0.9, b2 0.999), batch 4096,
           lr 1e-3, 10k warmup steps then linear decay, weight decay 0.03, dropout 0.1 (attention dropout 0), grad
           clip 1.0, 90 epochs at 224 px, inception crop + flip, no RandAugment/mixup/label smoothing, a pre-logits
           layer as wide as the model (representation_size).
Departures: the loss (sigmoid cross-entropy, head bias init -10) is big_vision's configs/vit_i21k.py, as the
           paper does not state it; weight decay is decoupled and scaled by lr(step) (optax.adamw's convention; the
           paper does not say how it composes with lr); table 3's caption applies the grad clip "for ImageNet", which
           may or may not include ImageNet-21k: we clip; the linear decay ends at 1e-5 (not stated); bf16 compute and
           first moment; 1% held out. total_steps is 90 epochs of the paper's fall11 release (14,197,122 images):
           on winter21 (about 13.15M images) set --config.total_steps=<90 * train images // 4096> for 90 epochs.
           S/16 is not in the ViT paper: this is its ViT-B ImageNet-21k row applied to S/16. AugReg's S/16 checkpoint
           was trained differently (300 epochs, cosine decay, RandAugment (2, 0), weight decay 0.03, dropout 0).
"""
from vit_jax.configs import common


def get_config():
  """ViT-S/16, ImageNet-21k, the paper's recipe."""
  c = common.pretrain_i21k('ViT-S_16')
  return c
