"""Data: sources (TFDS, image folders, digits, synthetic), per-example preprocessing, batches on the mesh."""
