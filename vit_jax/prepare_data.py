"""Prepares an image folder or the ImageNet-21k tar as ArrayRecord shards for training, with Apache Beam.

  python -m vit_jax.prepare_data --input=/data/fall11_whole.tar --output=gs://BUCKET/imagenet21k
  python -m vit_jax.prepare_data --input=/data/images --output=/data/images_prepared --runner=DataflowRunner \
      --project=P --region=R --temp_location=gs://BUCKET/tmp ...

Without --runner, Beam's DirectRunner uses every core of this machine (multi-processing); any other flag is a
Beam pipeline option, passed through. Train on the result with --config.dataset=<output>. The pipeline and
the output format: vit_jax/data/prepare.py.
"""
import argparse
from typing import Sequence

from vit_jax.data import prepare
from vit_jax.tools import inference


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.prepare_data', description=__doc__.split('\n')[0])
  parser.add_argument('--input', required=True, help='image folder <root>/<split>/<class>/*.jpg, or the '
                      'ImageNet-21k release tar (uncompressed) of per-class tars')
  parser.add_argument('--output', required=True, help='output folder (local or gs://)')
  parser.add_argument('--examples_per_shard', type=int, default=10_000, help='records per ArrayRecord file')
  return parser.parse_known_args(argv)


def main(argv: Sequence[str]) -> int:
  """Builds the dataset and prints its split sizes and the number of skipped images; returns the exit code."""
  args, beam_args = parse_args(argv)
  if args.examples_per_shard <= 0:
    raise ValueError(f'--examples_per_shard={args.examples_per_shard} must be positive.')
  meta = prepare.run(args.input, args.output, beam_args, args.examples_per_shard)
  for split, info in meta['splits'].items():
    print(f'{split}: {info["num_examples"]} images in {len(info["shards"])} shards')
  print(f'classes: {len(meta["classes"])}; skipped: {meta["num_skipped"]} (listed in '
        f'{args.output}/{prepare.REPORT})')
  return 0


if __name__ == '__main__':
  raise SystemExit(inference.run_cli(main))
