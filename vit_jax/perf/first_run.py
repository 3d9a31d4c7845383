"""The report of `scripts/gpu_first_run.sh`: one JSON and one Markdown table from the files its steps wrote.

  python -m vit_jax.perf.first_run $OUT      # reads device.json, b16.json, l16.json; writes first_run.{json,md}

Every speed row names its system (timm + torch.compile, or ours with its attention kernel), the batch, images/s,
the ratio to timm in the same mode, and MFU twice: against the device's table peak (what the training loop's
`progress/mfu` uses) and against the bf16 matmul peak measured in the same run.
"""
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

BENCH_FILES = ('b16.json', 'l16.json')


def _load(path: str) -> Optional[Dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _mfu(tflops: Optional[float], peak: Optional[float]) -> Optional[float]:
  return None if tflops is None or not peak else 100 * tflops / peak


def speed_rows(bench: Dict[str, Any], table_peak: Optional[float], measured_peak: Optional[float]) -> List[dict]:
  """One row per (system, mode) of a `scripts/benchmark.py --json` result; ours beside timm's in the same mode."""
  rows, timm = [], bench.get('timm') or {}
  comparable = 'not_comparable' not in timm
  for r in bench['rows']:
    model = r.get('model')
    if 'error' in r:
      rows.append({'model': model, 'mode': '-', 'system': f'ours ({r.get("attn")})', 'error': r['error']})
      continue
    devices = r.get('devices', 1)
    for mode, img_s, ms, compile_s, gflop, batch in (
        ('train', 'train_img_s', 'train_step_ms', 'compile_s', 'train_GFLOP_analytic', 'batch'),
        ('infer', 'infer_img_s', 'infer_ms', 'infer_compile_s', 'fwd_GFLOP_analytic', 'infer_batch')):
      if img_s not in r:
        continue
      tflops = r[gflop] * r[img_s] / 1e3 / devices  # per device
      rows.append({'model': model, 'mode': mode, 'system': f'ours ({r["attn"]})', 'batch': r[batch],
                   'img_s': r[img_s], 'step_ms': r[ms], 'compile_s': r[compile_s], 'GFLOP_img': r[gflop],
                   'mfu_table_%': _mfu(tflops, table_peak), 'mfu_measured_%': _mfu(tflops, measured_peak)})
  model = bench['rows'][0].get('model') if bench['rows'] else None
  for mode in ('train', 'infer'):
    t = timm.get(mode)
    if t is None:
      continue
    if 'error' in t:
      rows.append({'model': model, 'mode': mode, 'system': 'timm + torch.compile', 'error': ' '.join(t['error'])})
      continue
    rows.append({'model': model, 'mode': mode, 'system': t.get('system', 'timm + torch.compile'),
                 'batch': t['batch'], 'img_s': t['img_s'], 'GFLOP_img': 1e3 * t['tflops'] / t['img_s'],
                 'mfu_table_%': _mfu(t['tflops'], table_peak), 'mfu_measured_%': _mfu(t['tflops'], measured_peak)})
    for row in rows:
      if comparable and row['mode'] == mode and row['system'].startswith('ours') and 'img_s' in row:
        row['x_timm'] = row['img_s'] / t['img_s']
  return rows


def build_report(out_dir: str) -> Dict[str, Any]:
  """Everything the run wrote under `out_dir`, with the missing steps listed."""
  device = _load(os.path.join(out_dir, 'device.json'))
  table = device.get('peak_table_TFLOPs') if device else None
  measured = device.get('peak_measured_TFLOPs') if device else None
  report = {'device': device, 'rows': [], 'missing': [] if device else ['device.json'], 'not_comparable': []}
  for name in BENCH_FILES:
    bench = _load(os.path.join(out_dir, name))
    if bench is None:
      report['missing'].append(name)
      continue
    report['rows'] += speed_rows(bench, table, measured)
    if 'not_comparable' in (bench.get('timm') or {}):
      report['not_comparable'].append(f'{bench["rows"][0].get("model")}: {bench["timm"]["not_comparable"]}')
  return report


COLUMNS = (('model', 'model', '{}'), ('mode', 'mode', '{}'), ('system', 'system', '{}'), ('batch', 'batch', '{}'),
           ('img/s', 'img_s', '{:.1f}'), ('x timm', 'x_timm', '{:.2f}'), ('GFLOP/img', 'GFLOP_img', '{:.4g}'),
           ('MFU % (table peak)', 'mfu_table_%', '{:.1f}'), ('MFU % (measured peak)', 'mfu_measured_%', '{:.1f}'),
           ('step ms', 'step_ms', '{:.2f}'), ('compile s', 'compile_s', '{:.1f}'), ('error', 'error', '{}'))


def format_markdown(report: Dict[str, Any]) -> str:
  """The report as Markdown: the device checks, then one table of every speed row."""
  d = report['device']
  lines = []
  if d:
    a, c = d['attention'], d['cudnn_program']
    table = 'none for this device_kind' if d['peak_table_TFLOPs'] is None else f'{d["peak_table_TFLOPs"]:.4g}'
    lines += [f'## First device run: {d["device_kind"]} ({d["platform"]}, {d["devices"]} device(s), jax {d["jax"]})',
              '',
              f'- {a["impl"]} attention vs XLA attention, bf16, {a["tokens"]} tokens: logits max relative error '
              f'{a["logits_rel_err"]:.2e}, gradients relative L2 {a["grad_rel_l2"]:.2e}: '
              f'**{"ok" if a["ok"] else "MISMATCH"}**',
              f'- cuDNN attention calls in the lowered train step: {c["fmha_fwd"]} forward, {c["fmha_bwd"]} backward '
              f'({c["layers"]} and {c["layers"]} expected): **{"ok" if c["ok"] else "UNEXPECTED"}**',
              f'- bf16 matmul peak: measured {d["peak_measured_TFLOPs"]:.4g} TFLOP/s (n = {d["peak_n"]}); '
              f'table {table} TFLOP/s', '']
  for note in report['not_comparable']:
    lines.append(f'NOT COMPARABLE with timm: {note}.')
  if report['missing']:
    lines.append(f'Missing (that step failed; see its log): {", ".join(report["missing"])}.')
  cols = [c for c in COLUMNS if any(c[1] in r for r in report['rows'])]
  lines += ['', '| ' + ' | '.join(c[0] for c in cols) + ' |', '|' + '---|' * len(cols)]
  for r in report['rows']:
    lines.append('| ' + ' | '.join('-' if r.get(k) is None else f.format(r[k]) for _, k, f in cols) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Writes first_run.json and first_run.md into the folder given; exit 1 when a check failed or a step is missing."""
  out_dir, = argv if argv is not None else sys.argv[1:]
  report = build_report(out_dir)
  with open(os.path.join(out_dir, 'first_run.json'), 'w') as f:
    json.dump(report, f, indent=1, default=str)
  text = format_markdown(report)
  with open(os.path.join(out_dir, 'first_run.md'), 'w') as f:
    f.write(text)
  print(text)
  d = report['device']
  failed = report['missing'] or not (d['attention']['ok'] and d['cudnn_program']['ok'])
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
