"""Sweeps: a config's `get_sweep()` points times the command line's axes, each a normal run of `vit_jax.main`.

A point is a dict of config overrides ({'base_lr': 1e-3, 'optim.weight_decay': 1e-4}). Its run lives in
`<sweep dir>/<name>`, the name made of the overrides that vary over the sweep ('base_lr=0.001,weight_decay=0.0001');
`overrides.json` beside its checkpoints records them, and `<sweep dir>/sweep.json` lists every point, so that
`report` has a row for points that never started. Every point is parsed as `vit_jax.main` parses its flags (the
locked config; ml_collections' flag parsing) and checked by `config_checks.validate(check_data=False)` before
the first run starts.

Runners: 'local' (one point after another, each `python -m vit_jax.main ...` in a subprocess; finished points are
skipped, an interrupted one resumes from its own checkpoint), 'slurm' (one job array through
scripts/launch_slurm.sh --array-file) and 'tpu' (one pod job per point through scripts/launch_tpu_pod.sh).
"""
import csv
import io
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_FILE = 'sweep.json'
POINT_FILE = 'overrides.json'
EXIT_FILE = 'sweep_exit.json'  # The local runner's record of a point's last exit status.
LOG_FILE = 'train.log'
REPORT = 'sweep_report'        # .csv, .json and .png beside the points
RUNNERS = ('local', 'slurm', 'tpu')


def _config_error(message: str) -> Exception:
  """config_checks.ConfigError, imported late: config files import `product` and must stay light (no JAX)."""
  from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  return config_checks.ConfigError(message)


# ------------------------------------------------------------------------------------------------ points
def product(*grids: Mapping[str, Sequence[Any]], **axes: Sequence[Any]) -> List[Dict[str, Any]]:
  """Every combination of the axes' values, the last axis fastest: product(base_lr=[1, 2], optim__weight_decay=[3]).

  Keyword names use '__' for '.'; dotted keys can also come in dicts given positionally.
  """
  merged: Dict[str, Sequence[Any]] = {}
  for grid in (*grids, {k.replace('__', '.'): v for k, v in axes.items()}):
    merged.update(grid)
  keys = list(merged)
  return [dict(zip(keys, values)) for values in itertools.product(*(list(merged[k]) for k in keys))]


def split_values(text: str) -> List[str]:
  """'1e-3,3e-3' -> ['1e-3', '3e-3']; commas inside brackets or quotes stay: '(2,10),(2,15)' is two values."""
  values, depth, quote, start = [], 0, '', 0
  for i, ch in enumerate(text):
    if quote:
      quote = '' if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      values.append(text[start:i])
      start = i + 1
  values.append(text[start:])
  return [v.strip() for v in values]


def _key(key: str) -> str:
  return key[len('config.'):] if key.startswith('config.') else key


def parse_axis(spec: str) -> Tuple[str, List[str]]:
  """'config.base_lr=1e-3,3e-3' -> ('base_lr', ['1e-3', '3e-3'])."""
  key, sep, values = spec.partition('=')
  if not sep or not key or not values:
    raise _config_error(f'--sweep {spec!r} is not KEY=V1,V2,...; write e.g. '
                                    '--sweep config.base_lr=1e-3,3e-3.')
  return _key(key.strip()), split_values(values)


def flag_value(value: Any) -> str:
  """A Python value as `--config.key=` text that ml_collections parses back to it."""
  return value if isinstance(value, str) else repr(value)


def combine(config_points: Sequence[Mapping[str, Any]], axes: Sequence[Tuple[str, Sequence[str]]]
            ) -> List[Dict[str, str]]:
  """The config's points times the command line's axes (which win on a shared key), as flag text, deduplicated."""
  cli = product(dict(axes)) if axes else [{}]
  points, seen = [], set()
  for base in config_points or [{}]:
    for extra in cli:
      point = {**{_key(k): flag_value(v) for k, v in base.items()}, **extra}
      ident = tuple(sorted(point.items()))
      if ident not in seen:
        seen.add(ident)
        points.append(point)
  return points


def _short(value: Any) -> str:
  text = f'{value:g}' if isinstance(value, float) else str(value)
  return ''.join(c if c.isalnum() or c in '.-+' else '_' for c in text).strip('_') or '_'


def point_names(points: Sequence[Mapping[str, Any]]) -> List[str]:
  """Short unique directory names: the varying keys' last components (longer where two would clash) and values."""
  keys = list(dict.fromkeys(k for p in points for k in p))
  varying = [k for k in keys if len({repr(p.get(k)) for p in points}) > 1] or keys
  labels = {}
  for k in varying:
    parts = k.split('.')
    for n in range(1, len(parts) + 1):
      label = '.'.join(parts[-n:])
      if sum(1 for other in varying if other.split('.')[-n:] == parts[-n:]) == 1:
        break
    labels[k] = label
  names = [','.join(f'{labels[k]}={_short(p[k])}' for k in varying if k in p) or 'base' for p in points]
  for i, name in enumerate(names):  # Values that only differ in characters the names drop.
    if names.count(name) > 1:
      names[i] = f'{name},{i}'
  return names


# ------------------------------------------------------------------------------------------------ the sweep
def load_module(config_spec: str):
  """The config file of `path[:arg]` as a module, plus its arg."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = config_spec.partition(':')
  if not os.path.isfile(path):
    raise _config_error(f'--config={config_spec}: {path} does not exist; give a file in configs/.')
  spec = importlib.util.spec_from_file_location('_vit_jax_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, arg


def config_points(config_spec: str) -> List[Dict[str, Any]]:
  """The config file's `get_sweep([arg])` points, or one empty point when it has none."""
  module, arg = load_module(config_spec)
  if not hasattr(module, 'get_sweep'):
    return [{}]
  return list(module.get_sweep(arg) if arg else module.get_sweep())


def parse_point(config_spec: str, flags_: Sequence[str]) -> Any:
  """The locked config that `vit_jax.main --config=SPEC FLAGS` would train, or the one-line ConfigError."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  argv = ['vit_jax.main', f'--config={config_spec}', *flags_]
  # sys_argv: the override flags (--config.key) are defined from the argv the config flag is given.
  holder = config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    try:
      base = load_module(config_spec)[0]
      arg = config_spec.partition(':')[2]
      config = base.get_config(arg) if arg else base.get_config()
    except Exception:  # pylint: disable=broad-except
      config = None
    from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
    raise config_checks.explain_flag_error(e, argv, config) from None
  return holder.value


def _get(config: Any, key: str) -> Any:
  for part in key.split('.'):
    config = config[part]
  return config.to_dict() if hasattr(config, 'to_dict') else config


def _mesh_devices(config: Any) -> int:
  """The fewest devices the config's mesh fits: where a sweep runs elsewhere, its checks hold for any such count."""
  n = 1
  for axis, size in config.mesh.items():
    n *= size if axis != 'dcn' and size > 0 else 1
  return n


def local_device_count() -> int:
  """The devices a run started from here sees, asked of a subprocess so this process holds no accelerator."""
  out = subprocess.run([sys.executable, '-c', 'import jax; print(jax.device_count())'], capture_output=True,
                       text=True, check=True)
  return int(out.stdout.strip().splitlines()[-1])


def plan(config_spec: str, workdir: str, axes: Sequence[str] = (), fixed: Sequence[str] = (), *,
         num_devices: Optional[int] = None, check_paths: bool = True) -> Dict[str, Any]:
  """Every point of the sweep, checked: {'config', 'workdir', 'fixed', 'points': [{name, overrides, flags}]}.

  Raises ConfigError (one line, naming the point) for the first point that `vit_jax.main` would refuse.
  `check_paths=False` leaves `resume` / `model_init` to the machines the runs go to.
  """
  for flag in fixed:
    if not flag.startswith('--config.'):
      raise _config_error(f'Unexpected argument {flag!r}: give config overrides as --config.key=value.')
  points = combine(config_points(config_spec), [parse_axis(a) for a in axes])
  names = point_names(points)
  from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  planned = []
  for name, point in zip(names, points):
    flags_ = [f'--config.{k}={v}' for k, v in point.items()]
    try:
      config = parse_point(config_spec, [*fixed, *flags_])
      checked = config
      if not check_paths:
        checked = config.copy_and_resolve_references()
        checked.resume, checked.model_init = None, None
      config_checks.validate(checked, num_devices=num_devices or _mesh_devices(config), check_data=False)
    except config_checks.ConfigError as e:
      raise _config_error(f'point {name}: {e}') from None
    planned.append({'name': name, 'overrides': {k: _get(config, k) for k in point}, 'flags': flags_,
                    'total_steps': config.total_steps})
  return {'config': config_spec, 'workdir': workdir, 'fixed': list(fixed), 'points': planned}


def main_args(sweep: Mapping[str, Any], point: Mapping[str, Any]) -> List[str]:
  """The `vit_jax.main` flags of one point."""
  return [f'--config={sweep["config"]}', f'--workdir={os.path.join(sweep["workdir"], point["name"])}',
          *sweep['fixed'], *point['flags']]


def _write_json(path: str, obj: Any) -> None:
  """Writes local files atomically; a gs:// sweep directory (TPU pods) through etils.epath."""
  if '://' in path:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_text(json.dumps(obj, indent=2))
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=2)
  os.replace(path + '.tmp', path)


def _path(path: str) -> Any:
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)


def _read_json(path: str) -> Optional[Any]:
  try:
    return json.loads(_path(path).read_text())
  except Exception:  # pylint: disable=broad-except  # Missing, cut by a kill, or a remote file out of reach.
    return None


def _exists(path: str) -> bool:
  try:
    return _path(path).exists()
  except Exception:  # pylint: disable=broad-except
    return False


def write_plan(sweep: Mapping[str, Any]) -> None:
  """sweep.json in the sweep directory and overrides.json in each point's."""
  _write_json(os.path.join(sweep['workdir'], SWEEP_FILE), sweep)
  for point in sweep['points']:
    _write_json(os.path.join(sweep['workdir'], point['name'], POINT_FILE),
                {'config': sweep['config'], 'overrides': point['overrides'],
                 'args': ['python', '-m', 'vit_jax.main', *main_args(sweep, point)]})


def status(point_dir: str, total_steps: int) -> str:
  """'done' | 'failed (exit N)' | 'unfinished' | 'not started'."""
  final = _read_json(os.path.join(point_dir, 'final_metrics.json'))
  if final is not None and final.get('step', -1) >= total_steps:
    return 'done'
  exit_record = _read_json(os.path.join(point_dir, EXIT_FILE))
  if exit_record and exit_record.get('returncode'):
    return f'failed (exit {exit_record["returncode"]})'
  if any(_exists(os.path.join(point_dir, f)) for f in ('metrics.jsonl', 'checkpoints')):
    return 'unfinished'
  return 'not started'


# ------------------------------------------------------------------------------------------------ runners
def run_local(sweep: Mapping[str, Any], dry_run: bool = False) -> int:
  """The points one after another, each `python -m vit_jax.main` in a subprocess; returns the exit status.

  Finished points are skipped; an interrupted point's own checkpoint resumes it. A config error (exit 2) stops
  the sweep; a diverged or crashed point is recorded as failed and the next one starts.
  """
  failed = 0
  for point in sweep['points']:
    point_dir = os.path.join(sweep['workdir'], point['name'])
    command = [sys.executable, '-m', 'vit_jax.main', *main_args(sweep, point)]
    if dry_run:
      print(shlex.join(['python', *command[1:]]))
      continue
    if status(point_dir, point['total_steps']) == 'done':
      print(f'{point["name"]}: done, skipped.', flush=True)
      continue
    print(f'{point["name"]}: running (log: {os.path.join(point_dir, LOG_FILE)}).', flush=True)
    if os.path.exists(os.path.join(point_dir, EXIT_FILE)):
      os.remove(os.path.join(point_dir, EXIT_FILE))
    start = time.time()
    with open(os.path.join(point_dir, LOG_FILE), 'a') as log:
      proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
      # SIGTERM (a preemption notice) goes on to the run, which saves; the sweep stops after it.
      previous = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
      try:
        returncode = proc.wait()
      finally:
        signal.signal(signal.SIGTERM, previous)
    _write_json(os.path.join(point_dir, EXIT_FILE), {'returncode': returncode, 'seconds': time.time() - start})
    if returncode == 2:
      print(f'Config error in point {point["name"]}: {_last_line(point_dir)}', file=sys.stderr, flush=True)
      return 2
    if returncode == 0 and status(point_dir, point['total_steps']) != 'done':
      print(f'{point["name"]}: stopped before the end (preempted); start the sweep again to resume.', flush=True)
      return 1
    if returncode:
      failed += 1
      print(f'{point["name"]}: failed (exit {returncode}): {_last_line(point_dir)}', flush=True)
    else:
      print(f'{point["name"]}: done.', flush=True)
  return 1 if failed else 0


def _last_line(point_dir: str) -> str:
  with open(os.path.join(point_dir, LOG_FILE)) as f:
    lines = [l.strip() for l in f if l.strip()]
  return lines[-1] if lines else '(no output)'


def _pending(sweep: Mapping[str, Any]) -> List[Mapping[str, Any]]:
  return [p for p in sweep['points']
          if status(os.path.join(sweep['workdir'], p['name']), p['total_steps']) != 'done']


def _launch(script: str, args: Sequence[str]) -> int:
  """Runs a launch script, its output passed on; returns its exit status."""
  result = subprocess.run([os.path.join(REPO, 'scripts', script), *args], capture_output=True, text=True,
                          check=False)
  sys.stdout.write(result.stdout)
  sys.stderr.write(result.stderr)
  sys.stdout.flush()
  return result.returncode


def run_slurm(sweep: Mapping[str, Any], launcher_args: Sequence[str] = (), dry_run: bool = False) -> int:
  """One SLURM job array, one task per unfinished point, through scripts/launch_slurm.sh --array-file."""
  points = _pending(sweep)
  if not points:
    print('Every point is done.')
    return 0
  lines = [shlex.join([f'--workdir={os.path.join(sweep["workdir"], p["name"])}', *sweep['fixed'], *p['flags']])
           for p in points]
  path = os.path.join(sweep['workdir'], 'slurm_array.txt')
  if dry_run:  # A dry run leaves the sweep directory alone.
    import tempfile  # pylint: disable=g-import-not-at-top
    fd, path = tempfile.mkstemp(suffix='.txt')
    os.close(fd)
  try:
    with open(path, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    return _launch('launch_slurm.sh', [*(['--dry-run'] if dry_run else []), *launcher_args, '--array-file', path,
                                       '--', f'--config={sweep["config"]}'])
  finally:
    if dry_run:
      os.remove(path)


def run_tpu(sweep: Mapping[str, Any], launcher_args: Sequence[str] = (), dry_run: bool = False) -> int:
  """One pod job per unfinished point, one after another, through scripts/launch_tpu_pod.sh (set-up once)."""
  for i, point in enumerate(_pending(sweep)):
    returncode = _launch('launch_tpu_pod.sh', [*(['--dry-run'] if dry_run else []), *launcher_args,
                                               *(['--no-setup'] if i else []), '--', *main_args(sweep, point)])
    if returncode:
      return returncode
  return 0


# ------------------------------------------------------------------------------------------------ report
def _metrics(point_dir: str) -> List[Dict[str, Any]]:
  records = []
  try:
    text = _path(os.path.join(point_dir, 'metrics.jsonl')).read_text()
  except Exception:  # pylint: disable=broad-except
    return records
  for line in text.splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # A line cut by a kill.
  return records


def collect(sweep_dir: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
  """(the sweep's plan, one row per point: name, overrides, status, steps, final metrics, best val/top1, wall)."""
  sweep = _read_json(os.path.join(sweep_dir, SWEEP_FILE))
  if sweep is None:
    raise FileNotFoundError(f'{sweep_dir} has no {SWEEP_FILE}; pass the --workdir a sweep was started with.')
  rows = []
  for point in sweep['points']:
    point_dir = os.path.join(sweep_dir, point['name'])
    records = _metrics(point_dir)
    final = _read_json(os.path.join(point_dir, 'final_metrics.json')) or {}
    state = status(point_dir, point['total_steps'])
    val = [r for r in records if isinstance(r.get('val/top1'), (int, float))]
    best = max(val, key=lambda r: r['val/top1'], default=None)
    row = {'name': point['name'], **point['overrides'], 'status': state,
           'steps': max((r['step'] for r in records if 'step' in r), default=0)}
    if state == 'done':
      row.update({k: v for k, v in final.items() if k not in ('step', 'seconds')})
    row['best val/top1'] = best['val/top1'] if best else None
    row['best step'] = best['step'] if best else None
    row['wall s'] = final.get('seconds') if state == 'done' else None
    rows.append(row)
  return sweep, rows


def swept_keys(sweep: Mapping[str, Any]) -> List[str]:
  """The override keys whose values differ between points."""
  points = sweep['points']
  keys = list(dict.fromkeys(k for p in points for k in p['overrides']))
  return [k for k in keys if len({json.dumps(p['overrides'].get(k)) for p in points}) > 1]


def _columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
  columns = list(dict.fromkeys(k for r in rows for k in r))
  tail = ['best val/top1', 'best step', 'wall s']
  return [c for c in columns if c not in tail] + tail


def _cell(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
  lines += ['| ' + ' | '.join(_cell(r.get(c)) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)


def plot(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str, path: str) -> Optional[str]:
  """One panel per swept key: `metric` against its values, one line per value of the other swept keys."""
  done = [r for r in rows if isinstance(r.get(metric), (int, float))]
  if not done:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = list(keys) or ['name']
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    others = [k for k in keys if k != key]
    values = sorted({json.dumps(r[key]) for r in done}, key=lambda v: (not _numeric(json.loads(v)), json.loads(v)
                                                                       if _numeric(json.loads(v)) else v))
    numeric = all(_numeric(json.loads(v)) for v in values)
    lines: Dict[str, List[Tuple[Any, float]]] = {}
    for r in done:
      label = ', '.join(f'{k.split(".")[-1]}={_cell(r[k])}' for k in others) or metric
      x = r[key] if numeric else values.index(json.dumps(r[key]))
      lines.setdefault(label, []).append((x, r[metric]))
    for label, xy in sorted(lines.items()):
      xy.sort()
      ax.plot([x for x, _ in xy], [y for _, y in xy], marker='o', label=label)
    xs = [json.loads(v) for v in values]
    if numeric and min(xs) > 0 and len(xs) > 1:
      ax.set_xscale('log')
      ax.minorticks_off()
    ax.set_xticks(xs if numeric else range(len(xs)), [_cell(x) for x in xs], rotation=0 if numeric else 30,
                  fontsize=8)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _numeric(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def report(sweep_dir: str, metric: str = 'val/top1') -> Tuple[str, List[str]]:
  """(the Markdown table, the files written: sweep_report.csv, .json and .png in the sweep directory)."""
  sweep, rows = collect(sweep_dir)
  columns = _columns(rows)
  base = os.path.join(sweep_dir, REPORT)
  with open(base + '.json', 'w') as f:
    json.dump({'config': sweep['config'], 'fixed': sweep['fixed'], 'rows': rows}, f, indent=2)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns, extrasaction='ignore')
  writer.writeheader()
  for r in rows:
    writer.writerow({c: (repr(v) if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict))
                         else v) for c, v in r.items()})
  with open(base + '.csv', 'w') as f:
    f.write(buf.getvalue())
  written = [base + '.csv', base + '.json']
  png = plot(rows, swept_keys(sweep), metric, base + '.png')
  if png:
    written.append(png)
  keys = swept_keys(sweep)
  shown = ['name', *keys, *[c for c in columns if c not in ('name', *sweep['points'][0]['overrides'])]]
  title = f'Sweep of {sweep["config"]} in {sweep_dir}' + (f' ({" ".join(sweep["fixed"])})' if sweep['fixed'] else '')
  return f'{title}\n\n{markdown(rows, shown)}', written
