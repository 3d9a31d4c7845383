"""Experiment configs: `python -m vit_jax.main --config=configs/<preset>.py[:arg] --workdir=DIR`."""
