"""vit_jax: Vision Transformer pretraining and fine-tuning in JAX/Flax."""
import os as _os

# gs:// through fsspec/gcsfs rather than TensorFlow's GCS client, which cannot be pointed at an emulator (see
# vit_jax/storage.py). etils reads this once, at its first remote path, so it is set when the package is imported,
# before any module of it (or of a program using it) can touch one. A user's own setting wins.
_os.environ.setdefault('EPATH_USE_TF', 'false')
