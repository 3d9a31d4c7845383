"""Paths: every path the project reads or writes is an `etils.epath.Path`, local or a URL (gs://, s3://, ...).

gs:// file I/O goes through fsspec/gcsfs rather than TensorFlow's GCS filesystem (etils' default when TF is
installed; `vit_jax/__init__.py` sets EPATH_USE_TF=false), because TF's endpoints are fixed to www.googleapis.com and
cannot be pointed at an emulator; gcsfs, google-cloud-storage and tensorstore (Orbax's array I/O) can.
`configure()` runs first in every command: with `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` set, it derives
tensorstore's own variable from it, so that one variable points every client at the emulator. TensorFlow's writers (TensorBoard
events) cannot follow; `emulated(path)` tells the callers to leave them out for such paths.
"""
import logging
import os

from etils import epath


def configure() -> None:
  """An emulator named by STORAGE_EMULATOR_HOST reaches tensorstore and array_record too. Idempotent.

  (gs:// through gcsfs, EPATH_USE_TF=false, is set by `vit_jax/__init__.py`, before any module can open a path.)
  """
  host = os.environ.get('STORAGE_EMULATOR_HOST')
  if host:
    url = host if '://' in host else f'http://{host}'
    os.environ.setdefault('TENSORSTORE_GCS_HTTP_URL', url)
    # array_record reads gs:// through google-cloud-cpp (riegeli), which has its own variable.
    os.environ.setdefault('CLOUD_STORAGE_EMULATOR_ENDPOINT', url)
    # gcsfs asks the storage-control API (not emulated) for the bucket type at each open and warns.
    logging.getLogger('gcsfs').setLevel(logging.ERROR)


def is_remote(path: epath.PathLike) -> bool:
  """True for a URL (gs://bucket/...), False for a local path."""
  return '://' in os.fspath(path)


def emulated(path: epath.PathLike) -> bool:
  """True when `path` is in gs:// and STORAGE_EMULATOR_HOST points the clients at an emulator."""
  return os.fspath(path).startswith('gs://') and bool(os.environ.get('STORAGE_EMULATOR_HOST'))


def absolute(path: epath.PathLike) -> epath.Path:
  """`path` as an epath.Path; a local one made absolute (the working directory may change), a URL as is."""
  p = epath.Path(path)
  return p if is_remote(path) else p.absolute()
