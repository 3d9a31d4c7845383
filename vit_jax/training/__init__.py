"""Training: the loop, the pure train/eval step, optimizer, losses, sharding, Orbax checkpoints, metrics, config
validation."""
