"""Exports a training workdir's latest checkpoint to the published ViT .npz layout.

  python -m vit_jax.export --workdir WORKDIR --out model.npz

The file loads with `vit_jax.checkpoint.load` (and with other implementations that read the published layout,
e.g. timm), so `vit_jax.predict`, `vit_jax.visualize` and fine-tuning take it like a published checkpoint.
"""
import argparse
from typing import Sequence

from etils import epath

from vit_jax import checkpoint
from vit_jax.tools import inference


def export(workdir: str, out: str) -> str:
  """Writes the params of `workdir`'s latest checkpoint to `out` (published layout; local paths or URLs); returns
  `out`."""
  if not epath.Path(workdir).is_dir():
    raise FileNotFoundError(f'--workdir {workdir} is not a directory; pass a training workdir.')
  params = inference.load_params(workdir)
  epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
  checkpoint.save_npz(params, out)
  return out


def main(argv: Sequence[str]) -> int:
  """Exports and prints the path written; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m vit_jax.export', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='training workdir (its latest checkpoint is exported)')
  parser.add_argument('--out', required=True, help='output .npz file')
  args = parser.parse_args(argv)
  print(export(args.workdir, args.out))
  return 0


def run() -> int:
  """The `vit-jax-export` console script."""
  return inference.run_cli(main)


if __name__ == '__main__':
  raise SystemExit(run())
