"""The distillation figure on the embedded digits: teacher, distilled half-width student, same student on labels.

  python scripts/distill_digits.py --root /tmp/vit_distill_digits

Runs three `python -m vit_jax.main` commands one after another (each about 3-4 minutes on 2 idle CPU cores):
  <root>/teacher      configs/default.py (the trained default),
  <root>/student      configs/distill_default.py --config.teacher=<root>/teacher (half width, KL to the teacher),
  <root>/labels_only  the same half-width student trained on the labels alone (configs/default.py, half width),
then prints each one's test accuracy (its final_metrics.json) and the student's gap to the teacher. A finished
workdir is only evaluated again, so a second call prints the table at once. Extra flags (e.g. --config.seed=1)
after `--` go to all three runs.
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HALF_WIDTH = ['--config.model.hidden_size=32', '--config.model.mlp_dim=64', '--config.model.num_heads=2']


def runs(root: str) -> Dict[str, List[str]]:
  """name -> the vit_jax.main flags of that run."""
  teacher = os.path.join(root, 'teacher')
  return {
      'teacher': ['--config=configs/default.py', f'--workdir={teacher}'],
      'student': ['--config=configs/distill_default.py', f'--workdir={os.path.join(root, "student")}',
                  f'--config.teacher={teacher}'],
      'labels_only': ['--config=configs/default.py', f'--workdir={os.path.join(root, "labels_only")}'] + HALF_WIDTH,
  }


def main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--root', default='/tmp/vit_distill_digits', help='folder of the three workdirs')
  p.add_argument('extra', nargs='*', help='flags for every run, after --')
  args = p.parse_args(argv)
  env = {**os.environ, 'PYTHONPATH': REPO}
  top1 = {}
  for name, flags in runs(args.root).items():
    command = [sys.executable, '-m', 'vit_jax.main'] + flags + list(args.extra)
    print('$ python ' + ' '.join(command[1:]), flush=True)
    result = subprocess.run(command, cwd=REPO, env=env, check=False, capture_output=True, text=True)
    if result.returncode:
      print(f'{name} failed (status {result.returncode}):\n{result.stderr[-2000:]}', file=sys.stderr)
      return result.returncode
    with open(os.path.join(flags[1].split('=', 1)[1], 'final_metrics.json')) as f:
      top1[name] = json.load(f)['val/top1']
  print(f'{"run":<40} test top-1')
  print(f'{"teacher (configs/default.py)":<40} {100 * top1["teacher"]:.2f}%')
  print(f'{"half-width student, distilled":<40} {100 * top1["student"]:.2f}%')
  print(f'{"half-width student, labels only":<40} {100 * top1["labels_only"]:.2f}%')
  print(f'distilled student - teacher: {100 * (top1["student"] - top1["teacher"]):+.2f} points')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
