"""The preset table of docs/compile_check.md: every TPU preset's train step compiled for the slice its docstring names.

  python scripts/compile_presets.py [--presets vit_b16_i21k,...] [--set model.scan=True ...] [--out rows.jsonl]

Each preset is compiled in its own process (`python -m vit_jax.compile_check ... --json`, one at a time: a large
compile takes minutes and gigabytes), its JSON line appended to --out, and the markdown table printed at the end.
`--set key=value` applies to every preset (e.g. model.scan=True, so that compile time does not grow with depth).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (preset config spec, topology): the hardware line of each preset's docstring.
PRESETS = {
    'vit_s16_i21k': ('configs/vit_s16_i21k.py', 'v3-64'),
    'vit_b16_i21k': ('configs/vit_b16_i21k.py', 'v3-256'),
    'vit_l16_i21k': ('configs/vit_l16_i21k.py', 'v3-512'),
    'vit_h14_i21k': ('configs/vit_h14_i21k.py', 'v4-512'),
    'vit_b16_i1k_augreg': ('configs/vit_b16_i1k_augreg.py', 'v3-32'),
    'finetune_imagenet2012': ('configs/finetune.py:imagenet2012', 'v3-8'),
}


def compile_one(name: str, sets: List[str]) -> Dict[str, Any]:
  """One preset's report (compile_check's JSON line), or {'error': its last stderr line}."""
  config, topology = PRESETS[name]
  cmd = [sys.executable, '-m', 'vit_jax.compile_check', f'--config={config}', f'--topology={topology}', '--json']
  cmd += [f'--config.{s}' for s in sets]
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if not lines:  # the compiler's out-of-HBM verdict (stdout), or a user error (stderr)
    verdict = [l for l in proc.stdout.splitlines() if l.startswith('DOES NOT FIT')]
    return {'preset': name, 'error': (verdict or proc.stderr.strip().splitlines() or ['no output'])[-1]}
  return {'preset': name, 'set': sets, **json.loads(lines[-1])}


def refresh(row: Dict[str, Any]) -> Dict[str, Any]:
  """The row with its estimate, img/s and MFU recomputed by the current `tpu_compile.estimate_step`."""
  from vit_jax.perf import tpu_compile  # pylint: disable=g-import-not-at-top
  fields = {f.name for f in dataclasses.fields(tpu_compile.Report)}
  report = tpu_compile.Report(**{k: v for k, v in row.items() if k in fields})
  report.step_seconds, report.estimate = tpu_compile.estimate_step(report)
  return {**row, **report.as_dict()}


def table(rows: List[Dict[str, Any]]) -> str:
  """The markdown table of the docs page."""
  out = ['| preset | topology | batch / device | total GiB / HBM GiB | fits (margin) | step ms | estimate | img/s '
         '| MFU | compile s |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    if 'error' in r:
      out.append(f'| {r["preset"]} | | | | {r["error"]} | | | | | |')
      continue
    r = refresh(r)
    out.append(f'| {r["preset"]} | {r["topology"]} ({r["libtpu_name"]}) | {r["global_batch"] // r["num_devices"]} '
               f'| {r["total_bytes"] / 2**30:.2f} / {r["hbm_bytes"] / 2**30:.0f} | '
               f'{"yes" if r["fits"] else "**no**"} ({r["margin_bytes"] / 2**30:.1f} GiB) | '
               f'{r["step_seconds"] * 1e3:.0f} | {r["estimate"].split(";")[0]} | {r["images_per_second"]:,.0f} | '
               f'{100 * r["mfu"]:.0f}% | {r["compile_seconds"]:.0f} |')
  return '\n'.join(out)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--presets', default=','.join(PRESETS))
  p.add_argument('--set', action='append', default=[], help='config override for every preset, key=value')
  p.add_argument('--out', default=None, help='append each JSON row to this file')
  p.add_argument('--table_from', default=None, help='only print the table of the JSON rows in this file')
  args = p.parse_args()
  if args.table_from:
    with open(args.table_from) as f:
      print(table([json.loads(line) for line in f if line.strip()]))
    return
  rows = []
  for name in args.presets.split(','):
    row = compile_one(name, args.set)
    rows.append(row)
    print(json.dumps(row), flush=True)
    if args.out:
      with open(args.out, 'a') as f:
        f.write(json.dumps(row) + '\n')
  print(table(rows))


if __name__ == '__main__':
  main()
