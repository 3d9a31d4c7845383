"""Exports a training workdir's latest checkpoint: the published ViT .npz layout, or a timm / transformers folder.

  python -m vit_jax.export --workdir WORKDIR --out model.npz
  python -m vit_jax.export --workdir WORKDIR --format=timm --out FOLDER   # timm.create_model('local-dir:FOLDER')
  python -m vit_jax.export --workdir WORKDIR --format=hf --out FOLDER     # transformers.AutoModel.from_pretrained

The .npz loads with `vit_jax.checkpoint.load` (and with other implementations that read the published layout,
e.g. timm), so `vit_jax.predict`, `vit_jax.visualize` and fine-tuning take it like a published checkpoint. The
folders hold `model.safetensors` and a `config.json` that their library reads as it is (docs/timm_hf.md).
"""
import argparse
from typing import Sequence

from etils import epath

from vit_jax import checkpoint
from vit_jax.interop import save
from vit_jax.tools import inference

FORMATS = ('npz',) + save.FORMATS


def export(workdir: str, out: str, fmt: str = 'npz') -> str:
  """Writes the params of `workdir`'s latest checkpoint to `out` (an .npz file, or a folder for timm / hf; local
  paths or URLs); returns `out`."""
  if not epath.Path(workdir).is_dir():
    raise FileNotFoundError(f'--workdir {workdir} is not a directory; pass a training workdir.')
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is not one of {", ".join(FORMATS)}.')
  params = inference.load_params(workdir)
  if fmt == 'npz':
    epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_npz(params, out)
    return out
  head = int(params['head']['kernel'].shape[-1]) if 'head' in params else 0
  save.save(inference.workdir_model(workdir, head), params, out, fmt)
  return out


def main(argv: Sequence[str]) -> int:
  """Exports and prints the path written; returns the exit code."""
  parser = argparse.ArgumentParser(prog='python -m vit_jax.export', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='training workdir (its latest checkpoint is exported)')
  parser.add_argument('--out', required=True, help='output .npz file (npz) or folder (timm, hf)')
  parser.add_argument('--format', default='npz', choices=FORMATS, help='npz (published layout), timm or hf')
  args = parser.parse_args(argv)
  print(export(args.workdir, args.out, args.format))
  return 0


def run() -> int:
  """The `vit-jax-export` console script."""
  return inference.run_cli(main)


if __name__ == '__main__':
  raise SystemExit(run())
