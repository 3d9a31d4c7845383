"""Train-step and inference speed of a ViT: images/s, compile time, FLOPs, MFU, memory; optionally beside timm.

  python scripts/benchmark.py --model ViT-B_16 --batch 256 --attention_impl cudnn
  python scripts/benchmark.py --model ViT-B_16 --batch 512 --sweep --sweep_attn xla,cudnn --sweep_remat none,dots
  python scripts/benchmark.py --model ViT-B_16 --batch 512 --timm --timm_script .bench/timm_baseline.py
  python scripts/benchmark.py --model ViT-g_14 --batch 64 --remat full --mu_dtype bfloat16 --modes train
  JAX_PLATFORMS=cpu python scripts/benchmark.py --model testing --resolution 32 --batch 8   # smoke test
  python scripts/benchmark.py --model ViT-B_16 --batch 512 --lower_only cuda --sweep --sweep_modes train,infer

Measuring logic lives in `vit_jax/perf/benchmarking.py`; docs/performance.md says how to read the numbers.
"""
import argparse
import functools
import itertools
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_TIMM_VARIANTS = {'ViT-S_16': 'S/16', 'ViT-B_16': 'B/16', 'ViT-L_16': 'L/16', 'S/16': 'S/16', 'B/16': 'B/16',
                  'L/16': 'L/16'}


def _bool_list(text: str) -> list:
  return [t.strip().lower() in ('1', 'true', 'yes', 'on') for t in text.split(',')]


def parse_args(argv=None) -> argparse.Namespace:
  """Command-line flags (one per lever)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='ViT-B_16', help='registered name (ViT-B_16, testing, ...) or variant (B/16)')
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--batch', type=int, default=128, help='global train batch')
  p.add_argument('--infer_batch', type=int, default=None, help='global inference batch (default: --batch)')
  p.add_argument('--dtype', default='bfloat16', help='compute dtype: bfloat16 | float32 | float16')
  p.add_argument('--attention_impl', default='xla', help="'xla' | 'dot_product' | 'cudnn' | 'auto'")
  p.add_argument('--attention_pad', type=int, default=0, help='pad attention sequence to a multiple (0: off)')
  p.add_argument('--patch_dropout', type=float, default=0., help='train: drop this fraction of patch tokens')
  p.add_argument('--remat', default='none', help="remat policy: 'none' | 'full' | 'dots' | 'dots_no_batch'")
  p.add_argument('--scan', action='store_true', help='nn.scan over the layers')
  p.add_argument('--mu_dtype', default=None, help='Adam first-moment dtype, e.g. bfloat16 (default float32)')
  p.add_argument('--mesh', default='data=-1', help="mesh axes, e.g. 'data=-1' or 'data=4,fsdp=2'")
  p.add_argument('--rules', default='fsdp', help="sharding rule table: 'dp' | 'fsdp' | 'tp'")
  p.add_argument('--num_classes', type=int, default=1000)
  p.add_argument('--num_layers', type=int, default=None, help='override the depth (scaled-down checks)')
  p.add_argument('--modes', default='train,infer', help="comma list of 'train', 'infer'")
  p.add_argument('--steps', type=int, default=10, help='calls per timed repetition')
  p.add_argument('--reps', type=int, default=5, help='timed repetitions; the median is reported')
  p.add_argument('--warmup', type=int, default=2, help='untimed calls after compilation')
  p.add_argument('--peak_tflops', type=float, default=None, help='per-device peak; default: measured in this run')
  p.add_argument('--xla_flags', default='none',
                 help='XLA flag preset (none | lhs | triton_gemm_any | cublas | no_cmd_buffer) or raw flags')
  p.add_argument('--json', default=None, help='write all results as JSON to this path')
  p.add_argument('--sweep', action='store_true', help='run the grid of the --sweep_* levers, one table')
  p.add_argument('--sweep_attn', default='xla,cudnn')
  p.add_argument('--sweep_remat', default='none,full')
  p.add_argument('--sweep_scan', default='false,true')
  p.add_argument('--sweep_batch', default=None, help='comma list (default: --batch)')
  p.add_argument('--sweep_modes', default='train', help='modes of each sweep point')
  p.add_argument('--timm', action='store_true', help='also run timm + torch.compile (subprocess) and compare')
  p.add_argument('--timm_script', default=None, help='path of timm_baseline.py (copy it into a carried folder)')
  p.add_argument('--timm_python', default=sys.executable, help='python with torch + timm')
  p.add_argument('--lower_only', default=None, metavar='PLATFORM',
                 help="no timing: lower each point for PLATFORM ('cuda', 'rocm', 'tpu') on this machine and count "
                      'what that program runs (cuDNN attention calls, matmul dtypes, transposes); see '
                      'vit_jax/perf/lowering.py')
  p.add_argument('--lower_devices', type=int, default=1,
                 help='devices of the --lower_only mesh (default 1, one GPU; 0: all local devices)')
  return p.parse_args(argv)


def set_xla_flags(preset: str) -> str:
  """Appends the preset's (or the raw) flags to XLA_FLAGS; must run before jax is imported."""
  presets = {
      'none': '',
      'lhs': '--xla_gpu_enable_latency_hiding_scheduler=true',
      'triton_gemm_any': '--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_triton_gemm_any=true',
      'cublas': '--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false',
      'no_cmd_buffer': '--xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_command_buffer=',
  }
  if preset in presets:
    flags = presets[preset]
  elif preset.startswith('--'):
    flags = preset
  else:
    raise ValueError(f'Unknown --xla_flags {preset!r}; use one of {", ".join(presets)} or raw "--xla_..." flags.')
  if flags:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + flags).strip()
  return flags


def run_timm(args: argparse.Namespace) -> dict:
  """timm + torch.compile, as timm_baseline.py measures it, in subprocesses (before jax takes the GPU)."""
  if args.model not in _TIMM_VARIANTS:
    raise ValueError(f'--timm compares only {", ".join(sorted(set(_TIMM_VARIANTS.values())))}; '
                     f'got --model {args.model}.')
  if not args.timm_script or not os.path.exists(args.timm_script):
    raise FileNotFoundError(f'--timm needs --timm_script PATH of timm_baseline.py (got {args.timm_script!r}); copy '
                            'shared/bench/timm_baseline.py into a carried, git-ignored folder.')
  variant, out = _TIMM_VARIANTS[args.model], {}
  jobs = [m for m in ('train', 'infer') if m in args.modes.split(',')]
  for mode in jobs:
    batch = args.batch if mode == 'train' else (args.infer_batch or args.batch)
    proc = subprocess.run([args.timm_python, args.timm_script, mode, variant, str(batch)],
                          capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
    if proc.returncode or not lines:
      out[mode] = {'error': (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']}
    else:
      out[mode] = json.loads(lines[-1])
  if args.resolution != 224 or args.num_layers or args.num_classes != 1000:
    # timm_baseline.py runs the full model at 224 px with 1000 classes; a scaled-down run of ours (the CPU test of
    # scripts/gpu_first_run.sh) is not comparable, and the side-by-side says so instead of giving a ratio.
    out['not_comparable'] = (f'ours ran --resolution {args.resolution} --num_layers {args.num_layers} '
                             f'--num_classes {args.num_classes}; timm the full model at 224 px, 1000 classes')
  return out


def main(argv=None) -> None:
  """Parses flags, runs the benchmark (or sweep), prints the table, writes JSON."""
  args = parse_args(argv)
  flags = set_xla_flags(args.xla_flags)
  if args.lower_only and args.timm:
    raise ValueError('--lower_only times nothing; drop --timm (or --lower_only).')
  timm = run_timm(args) if args.timm else None

  from vit_jax.perf import benchmarking  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  import jax  # pylint: disable=g-import-not-at-top

  base = benchmarking.BenchConfig(
      model=args.model, resolution=args.resolution, batch=args.batch, infer_batch=args.infer_batch,
      dtype=args.dtype, attention_impl=args.attention_impl, attention_pad=args.attention_pad,
      patch_dropout=args.patch_dropout,
      remat_policy=args.remat, scan=args.scan, mu_dtype=args.mu_dtype, mesh=args.mesh, rules=args.rules,
      num_classes=args.num_classes, num_layers=args.num_layers, steps=args.steps, reps=args.reps,
      warmup=args.warmup, modes=tuple(args.modes.split(',')))
  peak = args.peak_tflops
  peak_source = 'given'
  if peak is None and not args.lower_only:
    peak, peak_source = benchmarking.default_peak_tflops(args.dtype)
    print(f'{peak_source} peak: {peak:.3g} TFLOP/s ({args.dtype}, device 0: {jax.devices()[0].device_kind})')
  if args.sweep:
    batches = [int(b) for b in (args.sweep_batch or str(args.batch)).split(',')]
    grid = itertools.product(args.sweep_attn.split(','), args.sweep_remat.split(','),
                             _bool_list(args.sweep_scan), batches)
    configs = [benchmarking.dataclasses.replace(base, attention_impl=a, remat_policy=r, scan=s, batch=b,
                                                modes=tuple(args.sweep_modes.split(',')))
               for a, r, s, b in grid]
  else:
    configs = [base]

  if args.lower_only:
    from vit_jax.perf import lowering  # pylint: disable=g-import-not-at-top
    measure = functools.partial(lowering.lowering_row, platform=args.lower_only,
                                num_devices=args.lower_devices or None)
    extra = lowering.COLUMNS
  else:
    measure = functools.partial(benchmarking.run, peak_tflops=peak)
    extra = ()
  rows = []
  for cfg in configs:
    try:
      row = measure(cfg)
    except Exception as e:  # pylint: disable=broad-except  (a sweep point that OOMs or is unsupported)
      if not args.sweep:
        raise
      row = {'model': cfg.model, 'batch': cfg.batch, 'attn': cfg.attention_impl, 'remat': cfg.remat_policy,
             'scan': cfg.scan, 'error': f'{type(e).__name__}: {str(e).splitlines()[0][:160]}'}
    if not args.lower_only:
      row['peak_source'] = peak_source
      row['xla_flags'] = flags or 'default'
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items()}, default=str), flush=True)

  if args.lower_only:
    print(f'\nlowered for {args.lower_only} on {jax.default_backend()} (nothing ran); counts follow the call graph, '
          'a scan body once')
  else:
    print(f'\nstep: {rows[0].get("step_source", "?")}; XLA_FLAGS: {os.environ.get("XLA_FLAGS", "") or "(none)"}; '
          'peak mem = peak bytes in use since the process started (a sweep shows the running maximum)')
  print(benchmarking.format_table(rows, extra=tuple(extra) + (('error', 'error', '{}'),)))
  result = {'rows': rows}
  if timm is not None:
    result['timm'] = timm
    best = max(rows, key=lambda r: r.get('train_img_s', r.get('infer_img_s', 0.)))
    print(f'\ntimm + torch.compile vs our fastest row (attn={best.get("attn")}, remat={best.get("remat")}, '
          f'scan={best.get("scan")}, batch={best.get("batch")}):')
    print(compare_with_timm(best, timm, peak))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1, default=str)


def compare_with_timm(ours: dict, timm: dict, peak_tflops: float) -> str:
  """Side-by-side table: ours vs timm + torch.compile, MFU of both against the same measured peak."""
  lines = ['| mode | timm img/s | ours img/s | ours / timm | timm MFU% | ours MFU% |', '|---|---|---|---|---|---|']
  if 'not_comparable' in timm:
    lines.insert(0, f'NOT COMPARABLE ({timm["not_comparable"]}): no ratio')
  for mode, key in (('train', 'train_img_s'), ('infer', 'infer_img_s')):
    t = timm.get(mode)
    if t is None:
      continue
    if 'error' in t:
      lines.append(f'| {mode} | error: {t["error"]} | {ours.get(key, "-")} | - | - | - |')
      continue
    mfu_t = 100 * t['tflops'] / peak_tflops
    mine = ours.get(key)
    ratio = f'{mine / t["img_s"]:.2f}x' if mine and 'not_comparable' not in timm else '-'
    lines.append(f'| {mode} | {t["img_s"]:.1f} | {mine or float("nan"):.1f} | {ratio} | {mfu_t:.1f} | '
                 f'{ours.get(mode + "_mfu_%", float("nan")):.1f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  try:
    main()
  except (ValueError, FileNotFoundError) as e:  # user mistakes: one line, no traceback
    print(f'benchmark.py: {e}', file=sys.stderr)
    sys.exit(2)
