"""Entry point: `python -m vit_jax.main --config=configs/default.py[:arg] --workdir=DIR [--config.key=value ...]`.

Installed (`pip install .`), the same command is `vit-jax-train`.

Parses flags (the config is locked: unknown keys are errors), starts `jax.distributed` when running multi-process
(auto-detected on Cloud TPU pods and under SLURM, or given explicitly with --coordinator_address,
--num_processes, --process_id), keeps TensorFlow off the accelerators, and hands off to
`loop.train_and_evaluate`. User mistakes end in one line on stderr and exit status 2, without a traceback.
"""
import os
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. configs/default.py.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-process runs outside TPU pods / SLURM.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index (with --coordinator_address).')
_PREEMPTED_EXIT = flags.DEFINE_integer(
    'preempted_exit_code', 0, 'Exit status after a SIGTERM save before total_steps (the run is not finished). '
    'scripts/launch_slurm.sh passes 75 (EX_TEMPFAIL) and requeues the job on it.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', None, 'Call jax.distributed.initialize() with cluster auto-detection (Cloud TPU pods, SLURM). '
    'Default: only when SLURM_NTASKS > 1; the launch scripts in scripts/ pass it.')
_PRINT_CONFIG = flags.DEFINE_bool(
    'print_config', False, 'Print every config key with its default, this config\'s value and its meaning '
    '(generated from vit_jax/configs/common.py), then exit; no --workdir needed.')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Compile the train step for the attached devices, print its memory per device against HBM and '
    'a step-time estimate (vit_jax.compile_check), and exit (1: does not fit) before anything is allocated.')

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_STORAGE = 4


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv):
  """absl flag parsing, with config mistakes (unknown key, bad value) reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
    config = None
    config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    if config_arg:
      try:
        config = _load_config_file(config_arg)
      except Exception:  # pylint: disable=broad-except
        config = None
    _fail(f'Config error: {config_checks.explain_flag_error(e, argv, config)}')


def _load_config_file(spec: str):
  """Loads `path[:arg]` as config_flags does, for naming the valid keys in an error message."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_vit_jax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _start_distributed(multihost_config) -> Optional['multihost.Watchdog']:
  """jax.distributed with the config's timeouts and the lost-process watchdog; None for a single process."""
  from vit_jax.training import multihost  # pylint: disable=g-import-not-at-top
  auto = _DISTRIBUTED.value or (_DISTRIBUTED.value is None and int(os.environ.get('SLURM_NTASKS', '1')) > 1)
  if not (_COORDINATOR.value or auto):
    return None
  # Without --coordinator_address: cluster auto-detection (Cloud TPU pods, SLURM).
  return multihost.start(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                         process_id=_PROCESS_ID.value, heartbeat_timeout_s=multihost_config.heartbeat_timeout_s,
                         barrier_timeout_s=multihost_config.barrier_timeout_s)


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow (TFDS, TensorBoard) must not grab GPU/TPU memory; skipped where TF is not installed."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


def _quiet_orbax() -> None:
  """Orbax logs several INFO lines per save; keep its warnings and errors only."""
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or '/orbax/' not in r.pathname)


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f'Unexpected arguments {argv[1:]}; use --config=... --workdir=... --config.key=value.')
  if _CONFIG.value is not None and _PRINT_CONFIG.value:
    from vit_jax.configs import describe  # pylint: disable=g-import-not-at-top
    print(describe.markdown_table(_CONFIG.value))
    return
  if _CONFIG.value is None or not (_WORKDIR.value or _DRY_RUN.value):
    _fail('Both --config (e.g. configs/default.py) and --workdir (e.g. /tmp/vit_default) are required.')
  # Only where TensorFlow will be imported anyway (TensorBoard, TFDS): importing it costs seconds.
  config = _CONFIG.value
  if config.get('tensorboard', False) or config.get('dataset') not in ('digits', 'synthetic'):
    _hide_accelerators_from_tensorflow()
  from vit_jax import storage  # pylint: disable=g-import-not-at-top
  storage.configure()  # Before any path is opened: gs:// through gcsfs, STORAGE_EMULATOR_HOST for every client.
  watchdog = _start_distributed(config.multihost)
  _quiet_orbax()

  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  from vit_jax.training import loop  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_transfer_guard', 'allow')  # The loop disallows device->host inside the step.
  if _DRY_RUN.value:
    from vit_jax.perf import tpu_compile  # pylint: disable=g-import-not-at-top
    try:
      sys.exit(tpu_compile.dry_run(_CONFIG.value))
    except tpu_compile.CompileCheckError as e:
      _fail(f'Config error: {e}')
  logging.info('JAX %s, process %d of %d, %d devices.', jax.__version__, jax.process_index(),
               jax.process_count(), jax.device_count())
  try:
    metrics = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (config_checks.ConfigError, checkpointing.CheckpointMismatch) as e:
    _fail(f'Config error: {e}')
  except checkpointing.CheckpointUnavailable as e:
    _fail(str(e), EXIT_STORAGE)
  except loop.TrainingDiverged as e:
    _fail(str(e), EXIT_DIVERGED)
  except Exception:
    if watchdog is not None:  # A lost peer ends this process here; else the others are told that this one failed.
      watchdog.after_error()
    raise
  if watchdog is not None:
    watchdog.close()
  if metrics['step'] < config.total_steps:  # Saved on SIGTERM (preemption, a time limit): not finished.
    sys.exit(_PREEMPTED_EXIT.value)
  if 'val/top1' in metrics and jax.process_index() == 0:
    print(f'Final test accuracy: {metrics["val/top1"]:.4f} (top-5 {metrics["val/top5"]:.4f}, loss '
          f'{metrics["val/loss"]:.4f}) at step {metrics["step"]}, {metrics["seconds"]:.0f} s.', flush=True)


def run() -> None:
  """The `vit-jax-train` console script: absl's app.run (flag parsing, logging) around `main`."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
