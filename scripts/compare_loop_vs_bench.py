"""Does the training loop add host stalls? Images/s of `python -m vit_jax.main` (synthetic data) vs the benchmark.

  python scripts/compare_loop_vs_bench.py --model ViT-B_16 --batch 256 --dtype bfloat16 --attention_impl cudnn
  JAX_PLATFORMS=cpu python scripts/compare_loop_vs_bench.py --model Ti/8 --resolution 32 --batch 16 \
      --dtype float32 --steps 60 --progress_every 20            # CPU smoke run

Runs both in separate processes (each gets the accelerator to itself), same model, batch, dtype, attention and
remat: the loop for `--steps` steps with progress reports every `--progress_every` steps (its metrics.jsonl
'progress/images_per_sec'; the first report, which includes compilation, is dropped, the median of the rest
kept), the benchmark's median train-step images/s. Prints both and loop / benchmark (the issue asks >= 0.95), and
the loop's median share of time blocked on the input pipeline ('progress/input_wait_fraction').
Needs the loop (vit_jax/main.py, vit_jax/configs/common.py) and, like main, ml_collections + absl.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='ViT-B_16')
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--attention_impl', default='xla')
  p.add_argument('--remat', default='none')
  p.add_argument('--scan', action='store_true')
  p.add_argument('--steps', type=int, default=300, help='loop steps (the first progress window is dropped)')
  p.add_argument('--progress_every', type=int, default=50)
  p.add_argument('--repo', default=REPO, help='checkout whose vit_jax.main and configs/ run')
  p.add_argument('--python', default=sys.executable)
  return p.parse_args(argv)


def loop_images_per_sec(args: argparse.Namespace, workdir: str) -> tuple:
  """Medians of 'progress/images_per_sec' and 'progress/input_wait_fraction' of `python -m vit_jax.main` on the
  synthetic source, first report dropped."""
  main_py = os.path.join(args.repo, 'vit_jax', 'main.py')
  if not os.path.exists(main_py):
    raise FileNotFoundError(f'{main_py} is missing: the loop (branch loop) is not in this checkout; merge it first.')
  total = args.steps
  cmd = [args.python, '-m', 'vit_jax.main', f'--config={os.path.join(args.repo, "configs", "common.py")}',
         f'--workdir={workdir}', '--config.dataset=synthetic', f'--config.pp.crop={args.resolution}',
         f'--config.model_name={args.model}', f'--config.batch={args.batch}', f'--config.batch_eval={args.batch}',
         f'--config.total_steps={total}', f'--config.warmup_steps={total // 10}',
         f'--config.progress_every={args.progress_every}',
         f'--config.eval_every={total}', f'--config.checkpoint_every={total}', '--config.tensorboard=False',
         '--config.optim.optimizer=adamw', '--config.optim.weight_decay=0.1', '--config.grad_norm_clip=1.0',
         f'--config.model.dtype={args.dtype}', f'--config.model.attention_impl={args.attention_impl}',
         f'--config.model.remat_policy={args.remat}', f'--config.model.scan={args.scan}',
         '--config.model.dropout_rate=0.', '--config.model.attention_dropout_rate=0.']
  proc = subprocess.run(cmd, cwd=args.repo, capture_output=True, text=True, check=False)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  if proc.returncode or not os.path.exists(metrics):
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    raise RuntimeError(f'vit_jax.main failed (exit {proc.returncode}): {tail[0]}')
  with open(metrics) as f:
    reports = [r for r in map(json.loads, f) if 'progress/images_per_sec' in r]
  if len(reports) < 2:
    raise RuntimeError(f'only {len(reports)} progress reports in {metrics}; raise --steps or lower --progress_every.')
  return (statistics.median(r['progress/images_per_sec'] for r in reports[1:]),
          statistics.median(r.get('progress/input_wait_fraction', float('nan')) for r in reports[1:]))


def bench_images_per_sec(args: argparse.Namespace, workdir: str) -> dict:
  """The benchmark's train row for the same configuration (its own process)."""
  out = os.path.join(workdir, 'bench.json')
  cmd = [args.python, os.path.join(REPO, 'scripts', 'benchmark.py'), '--modes', 'train', '--model', args.model,
         '--resolution', str(args.resolution), '--batch', str(args.batch), '--dtype', args.dtype,
         '--attention_impl', args.attention_impl, '--remat', args.remat, '--rules', 'dp', '--json', out]
  if args.scan:
    cmd.append('--scan')
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f'benchmark failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}')
  with open(out) as f:
    return json.load(f)['rows'][0]


def main(argv=None) -> None:
  """Runs the loop and the benchmark; prints both rates and their ratio."""
  args = parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    loop, wait = loop_images_per_sec(args, os.path.join(tmp, 'loop'))
    bench = bench_images_per_sec(args, tmp)
  ratio = loop / bench['train_img_s']
  print(json.dumps({'model': args.model, 'batch': args.batch, 'loop_img_s': round(loop, 1),
                    'bench_img_s': round(bench['train_img_s'], 1), 'loop_over_bench': round(ratio, 3),
                    'loop_input_wait_fraction': round(wait, 4), 'bench_spread_%': round(bench['train_spread_%'], 1)}))
  print(f'| model | batch | loop img/s | benchmark img/s (spread) | loop / benchmark | loop input wait |\n'
        f'|---|---|---|---|---|---|\n'
        f'| {args.model} | {args.batch} | {loop:.1f} | {bench["train_img_s"]:.1f} ({bench["train_spread_%"]:.0f} %) | '
        f'{ratio:.3f} {"(ok: >= 0.95)" if ratio >= 0.95 else "(host stall? < 0.95)"} | {100 * wait:.2f} % |')


if __name__ == '__main__':
  main()
