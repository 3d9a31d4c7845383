"""google-research/vision_transformer's `vit_jax.models_vit`: its module names, served by `vit_jax.models.vit`."""
import flax.linen as nn

# pylint: disable=unused-import
from vit_jax.models.vit import AddPositionEmbs, Encoder, Encoder1DBlock, MlpBlock, VisionTransformer


class IdentityLayer(nn.Module):
  """Returns its input; a named no-op (the reference's `pre_logits` when there is no representation layer)."""

  @nn.compact
  def __call__(self, x):
    return x
