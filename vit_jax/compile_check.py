"""Compile a preset's train step for a TPU slice that is not there; print memory per device and a step-time estimate.

  python -m vit_jax.compile_check --config=configs/vit_l16_i21k.py --topology=v4-256 [--config.key=value ...]

Needs libtpu (`pip install 'jax[tpu]'`), not a TPU: the TPU compiler runs on this machine
(`vit_jax.perf.tpu_compile`). Exit status: 0 fits, 1 does not fit in HBM, 2 a user error (one line: unknown
topology, missing libtpu, a config mistake). `--json` adds the figures as one JSON line. On a pod,
`python -m vit_jax.main --dry_run ...` runs the same check on the attached devices (`tpu_compile.dry_run`).
"""
import os
import sys
from typing import Any, Optional

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. configs/vit_l16_i21k.py.',
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string('topology', None, 'TPU slice: v4-256, v5p-128, v5litepod-16, v6e-256, v3-32, '
                                '2xv4-256 (two slices) or libtpu\'s v4:4x4x8.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None, 'Class count where config.pp.num_classes is unset and the '
                                    'dataset is not a known one.')
_JSON = flags.DEFINE_bool('json', False, 'Also print the figures as one JSON line.')

EXIT_USER_ERROR = 2


def _parse_flags(argv):
  """absl flag parsing, with config mistakes (unknown key, bad value) in one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
    print(f'Config error: {config_checks.explain_flag_error(e, argv)}', file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def check_topology(config: Any, topology: str, num_classes: Optional[int] = None, as_json: bool = False) -> int:
  """The command: the check on the devices of `topology` (needs libtpu, not a TPU)."""
  from vit_jax.perf import tpu_compile  # pylint: disable=g-import-not-at-top
  try:
    report = tpu_compile.topology_report(config, tpu_compile.parse_topology(topology), num_classes)
  except tpu_compile.CompileCheckError as e:
    print(str(e), file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
  except tpu_compile.DoesNotFit as e:  # the compiler's own out-of-HBM verdict
    print(e, flush=True)
    return tpu_compile.EXIT_DOES_NOT_FIT
  return tpu_compile.print_report(report, as_json)


def main(argv) -> None:
  if len(argv) > 1:
    print(f'Unexpected arguments {argv[1:]}; use --config=... --topology=... --config.key=value.', file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  if _CONFIG.value is None or not _TOPOLOGY.value:
    print('Both --config (e.g. configs/vit_l16_i21k.py) and --topology (e.g. v4-256) are required.',
          file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  from vit_jax.perf import tpu_compile  # pylint: disable=g-import-not-at-top
  missing = tpu_compile.libtpu_missing()
  if missing:
    print(missing, file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  sys.exit(check_topology(_CONFIG.value, _TOPOLOGY.value, _NUM_CLASSES.value, _JSON.value))


def run() -> None:
  """absl's app.run with vit_jax.main's one-line config errors; compile-only, so jax stays on the CPU."""
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the TPU devices come from libtpu's topology, not a backend
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
