"""The vendored google-research/vision_transformer tests run unchanged; conftest only chooses their rows.

Its Mixer and LiT rows are skipped (vit_jax has no such models). Its model table initialises and runs every model
eagerly at 224 px, minutes per large model on a CPU, so by default only the rows up to 25M parameters run
concretely; `VIT_JAX_REFERENCE_ALL=1` runs all of them. compat_test.py checks every row's count and output shape
abstractly (jax.eval_shape) in seconds.
"""
import os

import pytest

_ABSENT = ("('Mixer-", "('LiT-")  # absl's repr of a row's parameters: "('Mixer-B_16', 59880472)"
_DEFAULT_MAX_PARAMS = 25_000_000


def pytest_collection_modifyitems(items):
  run_all = os.environ.get('VIT_JAX_REFERENCE_ALL') == '1'
  for item in items:
    if item.path.name != 'reference_models_test.py':
      continue
    params = getattr(getattr(item, 'obj', None), '__x_params_repr__', '')
    if params.startswith(_ABSENT):
      item.add_marker(pytest.mark.skip(reason=f'{params}: vit_jax has no MLP-Mixer or LiT models'))
    elif params and not run_all and float(params.rstrip(')').rsplit(', ', 1)[1]) > _DEFAULT_MAX_PARAMS:
      item.add_marker(pytest.mark.skip(reason=f'{params}: large (minutes on CPU); VIT_JAX_REFERENCE_ALL=1 runs it'))
