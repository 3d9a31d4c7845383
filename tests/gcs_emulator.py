"""A local GCS emulator (gcp-storage-emulator) on 127.0.0.1 for the storage tests, started as a subprocess.

`python tests/gcs_emulator.py PORT` serves in memory until killed. One fidelity fix: the emulator's media download
omits the `x-goog-generation` header that real GCS sends and that tensorstore (Orbax's array I/O) requires, so
the launcher adds it from the object's metadata (`generation`, `metageneration`) before serving.
"""
import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Dict, Iterator

from gcp_storage_emulator.handlers import objects as _objects

_download = _objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    response['x-goog-generation'] = obj['generation']
    response['x-goog-metageneration'] = obj['metageneration']
  except Exception:  # pylint: disable=broad-except  # Missing object: the original handler answers 404.
    pass
  return _download(request, response, storage, *args, **kwargs)


_objects.download = _download_with_generation  # Before the server module builds its route table from it.
from gcp_storage_emulator import server as _server  # pylint: disable=g-import-not-at-top,wrong-import-position


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def emulator_env(host: str) -> Dict[str, str]:
  """The one variable a user sets to point the project at an emulator."""
  return {'STORAGE_EMULATOR_HOST': host}


@contextlib.contextmanager
def running(bucket: str = 'bucket') -> Iterator[str]:
  """Starts the emulator on a free port, creates `bucket` with the real GCS client; yields the host URL."""
  port = free_port()
  host = f'http://127.0.0.1:{port}'
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 30
    while True:
      try:
        with socket.create_connection(('127.0.0.1', port), timeout=0.2):
          break
      except OSError:
        if time.time() > deadline or proc.poll() is not None:
          raise RuntimeError(f'the GCS emulator did not start on port {port}')
        time.sleep(0.05)
    client(host).create_bucket(bucket)
    yield host
  finally:
    proc.kill()
    proc.wait()


def client(host: str):
  """The real google-cloud-storage client, anonymous, talking to the emulator at `host`."""
  from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  return storage.Client(project='test', credentials=AnonymousCredentials(), client_options={'api_endpoint': host})


if __name__ == '__main__':
  _server.create_server('127.0.0.1', int(sys.argv[1]), in_memory=True).run()
