"""What produced a run: the code's git commit, the package versions and the devices, for `<workdir>/provenance.json`.

Written beside `config.json` by process 0 at every start (a resumed run on other hardware or code overwrites
it; `metrics.jsonl` keeps the numbers of both). Gathering it never fails a run: what cannot be read is None.
"""
import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Any, Dict, Optional

import jax
from etils import epath

# Distribution names (as pip knows them) whose versions change numbers or behaviour.
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'numpy', 'ml-collections', 'clu',
            'tensorflow', 'tensorflow-cpu', 'tensorflow-datasets', 'array-record', 'scikit-learn', 'pillow')


def git_commit(directory: Optional[str] = None) -> Optional[str]:
  """`git rev-parse HEAD` of the checkout holding `directory` (default: the vit_jax package), else None."""
  directory = directory or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=directory, capture_output=True, text=True, timeout=10,
                         check=False)
  except (OSError, subprocess.SubprocessError):  # no git binary, a vanished directory, a hung filesystem
    return None
  commit = out.stdout.strip()
  return commit if out.returncode == 0 and len(commit) == 40 else None


def package_versions() -> Dict[str, Optional[str]]:
  """Installed version of each of PACKAGES (None where it is not installed)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def collect() -> Dict[str, Any]:
  """The provenance record of this process's run."""
  return {
      'git_commit': git_commit(),
      'packages': package_versions(),
      'python': platform.python_version(),
      'backend': jax.default_backend(),
      'device_kind': jax.devices()[0].device_kind,
      'device_count': jax.device_count(),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(),
  }


def write(workdir: epath.PathLike) -> None:
  """Writes `<workdir>/provenance.json` (local or a URL) on process 0."""
  if jax.process_index() == 0:
    (epath.Path(workdir) / 'provenance.json').write_text(json.dumps(collect(), indent=2))
