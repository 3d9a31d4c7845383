"""Checkpoints from timm and Hugging Face `transformers` into our models, and ours out to theirs (docs/timm_hf.md)."""
from vit_jax.interop.load import config_model, is_foreign, load, Preprocess, read, to_params
