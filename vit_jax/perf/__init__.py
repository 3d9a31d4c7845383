"""Performance: the train-step benchmark and the lowering of the GPU program on any machine."""
