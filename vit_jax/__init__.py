"""vit_jax: Vision Transformer pretraining and fine-tuning in JAX/Flax."""
