"""Evaluators: classification over a padded, masked split; few-shot linear and kNN on pre-logits features."""
