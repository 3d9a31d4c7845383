"""google-research/vision_transformer's `vit_jax.models_resnet`: its names, served by `vit_jax.models.resnet`."""
# pylint: disable=unused-import
from vit_jax.models.resnet import ResidualUnit, ResNetStage, StdConv, weight_standardize
