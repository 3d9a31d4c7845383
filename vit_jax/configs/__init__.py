"""Config code: `common` (every key and its default, the presets' base) and `models` (google-research/
vision_transformer's `MODEL_CONFIGS`)."""
