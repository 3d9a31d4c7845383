"""Compatibility package: `vit_jax.configs.models` as in google-research/vision_transformer."""
