"""What the research tools (predict, visualize, fewshot, export) share: loading a checkpoint and its model."""
