"""Optional parts of the install (pip extras): importing one that is missing names the extra to install.

The base install (`pip install vit_jax`, requirements.txt) trains on the embedded digits, image folders, prepared
shards and synthetic data. Two heavy parts are extras (pyproject.toml, [project.optional-dependencies]):

  tfds      TensorFlow + TensorFlow Datasets (1.3 GB): TFDS datasets such as cifar10 or imagenet2012
  prepare   Apache Beam (0.3 GB with pyarrow): `python -m vit_jax.prepare_data`
"""
import importlib
import types

# extra -> what it enables; pyproject.toml's [project.optional-dependencies] has these keys (a test checks).
EXTRAS = {
    'tfds': 'TFDS datasets (config.dataset=<TFDS name>)',
    'prepare': 'the ArrayRecord ingest (python -m vit_jax.prepare_data)',
}


class MissingExtra(ImportError):
  """An optional dependency is not installed; the message names the pip extra that installs it."""


def require(module: str, extra: str, purpose: str) -> types.ModuleType:
  """Imports `module`, or raises MissingExtra saying that `purpose` needs `pip install 'vit_jax[extra]'`."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    top = module.split('.')[0]
    if e.name is None or e.name.split('.')[0] != top:  # A broken install of the package itself: keep its error.
      raise
    raise MissingExtra(f"{purpose} needs {top}, which is not installed: pip install 'vit_jax[{extra}]' "
                       f"(or, from a checkout, pip install -e '.[{extra}]').") from None
