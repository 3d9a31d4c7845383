"""Sweeps: many runs of `vit_jax.main` from one command, then one table and one plot.

  python -m vit_jax.sweep --config=configs/finetune.py:cifar10 --workdir=DIR [--sweep config.base_lr=1e-3,3e-3 ...]
      [--config.key=value ...] [--runner local|slurm|tpu] [--launcher_args='--nodes 1 ...'] [--dry-run]
  python -m vit_jax.sweep report DIR [--metric val/top1]

The points are the config's `get_sweep()` (if it has one) times every --sweep axis; --config.key=value applies
to all of them. Each point runs in DIR/<name from its overrides>. A point `vit_jax.main` would refuse stops the
sweep before the first run (one line, exit status 2). The library is `vit_jax.tools.sweep`.
"""
import argparse
import os
import shlex
import sys
from typing import Sequence

# `python -m vit_jax.sweep` from anywhere: presets import `configs.common` from the repository root.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

from vit_jax.tools import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.tools import sweep as sweeps  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position


def _run_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m vit_jax.sweep', description=__doc__.split('\n')[0],
                              allow_abbrev=False)
  p.add_argument('--config', required=True, help='config file[:arg], as for vit_jax.main')
  p.add_argument('--workdir', required=True, help='sweep directory; each point runs in a folder of it')
  p.add_argument('--sweep', action='append', default=[], metavar='config.KEY=V1,V2',
                 help='an axis (repeatable); the points are the product of the axes and the config\'s get_sweep()')
  p.add_argument('--runner', choices=sweeps.RUNNERS, default='local')
  p.add_argument('--launcher_args', default='',
                 help='options for scripts/launch_slurm.sh or launch_tpu_pod.sh, e.g. "--tpu NAME --zone Z"')
  p.add_argument('--num_devices', type=int,
                 help='devices per run, for the batch checks (default: local: this machine\'s; cluster: the fewest '
                      'the config\'s mesh fits)')
  p.add_argument('--dry-run', dest='dry_run', action='store_true', help='print the commands, run nothing')
  return p


def _report_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m vit_jax.sweep report', allow_abbrev=False)
  p.add_argument('workdir', help='the sweep directory')
  p.add_argument('--metric', default='val/top1', help='final metric to plot against each swept key')
  return p


def main(argv: Sequence[str]) -> int:
  """Runs (or prints) a sweep, or reports on one; returns the exit status."""
  if argv and argv[0] == 'report':
    args = _report_parser().parse_args(argv[1:])
    table, written = sweeps.report(args.workdir, args.metric)
    print(table)
    print('\n'.join(f'Wrote {w}' for w in written), file=sys.stderr)
    return 0
  args, fixed = _run_parser().parse_known_args(argv)
  local = args.runner == 'local'
  try:
    num_devices = args.num_devices or (sweeps.local_device_count() if local else None)
    sweep = sweeps.plan(args.config, os.path.abspath(args.workdir) if local else args.workdir, args.sweep,
                        fixed, num_devices=num_devices, check_paths=local)
  except config_checks.ConfigError as e:
    print(f'Config error: {e}', file=sys.stderr)
    return 2
  if not args.dry_run:
    sweeps.write_plan(sweep)
  if local:
    return sweeps.run_local(sweep, args.dry_run)
  run = sweeps.run_slurm if args.runner == 'slurm' else sweeps.run_tpu
  return run(sweep, shlex.split(args.launcher_args), args.dry_run)


if __name__ == '__main__':
  raise SystemExit(inference.run_cli(main))
