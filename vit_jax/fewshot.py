"""Few-shot linear and kNN evaluation of a checkpoint (the ViT paper's, on pre-logits features).

  python -m vit_jax.fewshot --model ViT-B_16 --checkpoint CKPT --dataset digits --shots 1 5 10 25 --knn_k 10

The evaluation itself is `vit_jax.evaluation.fewshot` (the training loop runs the same).
"""
import argparse
from typing import Sequence

from vit_jax.evaluation.fewshot import DEFAULT_SHOTS, FewShotEvaluator
from vit_jax.tools import inference


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.fewshot', description=__doc__.split('\n')[0])
  parser.add_argument('--model', help='registered name, e.g. ViT-B_16 (optional for a workdir that records it)')
  parser.add_argument('--checkpoint', required=True, help='published .npz or training workdir')
  parser.add_argument('--dataset', default='digits', help="'digits', a TFDS name or an image-folder path")
  parser.add_argument('--data_dir', help='TFDS data directory')
  parser.add_argument('--train_split', default='train', help="few-shot/kNN training pool, e.g. 'train[:10000]'")
  parser.add_argument('--test_split', default='test')
  parser.add_argument('--image_size', type=int, help='model resolution (default: from the checkpoint)')
  parser.add_argument('--shots', type=int, nargs='+', default=list(DEFAULT_SHOTS))
  parser.add_argument('--draws', type=int, default=5, help='random draws of the shots, averaged')
  parser.add_argument('--l2_reg', type=float, default=2.**10, help='ridge regularisation')
  parser.add_argument('--knn_k', type=int, nargs='*', default=[10], help='k of the kNN evaluations')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
  """Prints one 'metric value' line per few-shot and kNN metric; returns the exit code."""
  args = parse_args(argv)
  model, params, size = inference.load_model(args.checkpoint, args.model, size=args.image_size)
  evaluator = FewShotEvaluator(
      model, args.dataset, {'crop': size}, train_split=args.train_split, test_split=args.test_split,
      batch_size=args.batch_size, shots=args.shots, num_draws=args.draws, l2_reg=args.l2_reg,
      knn_k=args.knn_k, seed=args.seed, data_dir=args.data_dir)
  for key, value in evaluator.run(params).items():
    print(f'{key} {value:.4f}')
  return 0


def run() -> int:
  """The `vit-jax-fewshot` console script."""
  return inference.run_cli(main)


if __name__ == '__main__':
  raise SystemExit(run())
