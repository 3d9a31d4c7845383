"""Vision Transformer models and the model table."""
from vit_jax.models import build
from vit_jax.models.registry import get_config, get_model, MODEL_CONFIGS, parse_variant, VARIANTS
from vit_jax.models.resnet import ResidualUnit, ResNetStage, StdConv
from vit_jax.models.vit import (AddPositionEmbs, Encoder, Encoder1DBlock, init_with_axes, MAPHead, MlpBlock,
                                MultiHeadDotProductAttention, VisionTransformer, stack_encoder_blocks,
                                unstack_encoder_blocks)
