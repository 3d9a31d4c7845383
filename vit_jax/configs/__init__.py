"""Config code: `common` (every key and its default, the presets' base), `models` (google-research/
vision_transformer's `MODEL_CONFIGS`), and that repository's config files `vit` and `augreg`, which
`reference_compat` maps onto our keys (docs/migration.md)."""
