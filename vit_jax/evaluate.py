"""Top-1, top-5 and loss of a checkpoint on a dataset split: padded and masked, every example counted once.

  python -m vit_jax.evaluate --checkpoint /tmp/vit_default --dataset digits --split test
  python -m vit_jax.evaluate --checkpoint ViT-B_16.npz --model ViT-B_16 --dataset imagenet2012 --split validation

For a training workdir the model, the eval preprocessing (`config.pp`), the loss, the eval batch and the dataset
and split defaults come from its `config.json`, so the default reproduces the run's final `val/top1`; a published
.npz needs `--model` and is read at its own resolution (`--image_size`, `--resize` to change). Prints one line.
The evaluation itself is `vit_jax.evaluation.classification` (the training loop runs the same).
"""
import argparse
import json
from typing import Any, Dict, Sequence

from etils import epath

from vit_jax.evaluation import classification
from vit_jax.tools import inference

# pp keys that describe config.dataset's class and split counts (synthetic data), not preprocessing.
_DATASET_KEYS = ('num_classes', 'num_train', 'num_eval')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.evaluate', description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True, help='training workdir or published .npz')
  parser.add_argument('--model', help='registered name, e.g. ViT-B_16 (needed for a .npz)')
  parser.add_argument('--dataset', help="'digits', a TFDS name or an image-folder path (workdir: its dataset)")
  parser.add_argument('--split', help="e.g. 'test', 'validation', 'train[99%%:]' (workdir: its pp.test)")
  parser.add_argument('--data_dir', help='TFDS data directory (workdir: its tfds_data_dir)')
  parser.add_argument('--batch_size', type=int, help='global eval batch (workdir: its batch_eval; else 256)')
  parser.add_argument('--image_size', type=int, help='model resolution (default: from the checkpoint)')
  parser.add_argument('--resize', type=int, help='smaller side before the central crop (default: the dataset\'s)')
  return parser.parse_args(argv)


def _workdir_config(path: str) -> Dict[str, Any]:
  config_path = epath.Path(path) / 'config.json'
  if not epath.Path(path).is_dir():
    return {}
  if not config_path.is_file():
    raise ValueError(f'{path} has no config.json; pass a training workdir or a published .npz with --model.')
  return json.loads(config_path.read_text())


def main(argv: Sequence[str]) -> int:
  """Prints '<dataset> <split>: top1 ... (correct/count) top5 ... loss ... (N examples)'; returns the exit code."""
  args = parse_args(argv)
  config = _workdir_config(args.checkpoint)
  model, params, size = inference.load_model(args.checkpoint, args.model, size=args.image_size)
  if not model.num_classes:
    raise ValueError(f'Checkpoint {args.checkpoint} has no classification head; use vit_jax.fewshot for its '
                     'features.')
  dataset = args.dataset or config.get('dataset')
  if not dataset:
    raise ValueError('Pass --dataset: a .npz does not record one.')
  pp = {k: v for k, v in (config.get('pp') or {}).items() if v is not None}
  if dataset != config.get('dataset'):
    pp = {k: v for k, v in pp.items() if k not in _DATASET_KEYS}
  split = args.split or pp.get('test') or 'test'
  # The workdir's crop when it trained at the checkpoint's size; else the checkpoint's own.
  pp.update({'crop': size if args.image_size or pp.get('crop') is None else pp['crop'], 'train': split, 'test': split})
  if args.resize:
    pp['resize'] = args.resize
  metrics = classification.evaluate_params(
      model, params, dataset, pp, batch_size=args.batch_size or config.get('batch_eval') or 256,
      data_dir=args.data_dir or config.get('tfds_data_dir'), loss=config.get('loss') or 'softmax_xent')
  count = int(metrics['count'])
  print(f'{dataset} {split}: top1 {metrics["top1"]:.6f} ({round(metrics["top1"] * count)}/{count}) '
        f'top5 {metrics["top5"]:.6f} loss {metrics["loss"]:.6f} ({count} examples)', flush=True)
  return 0


if __name__ == '__main__':
  raise SystemExit(inference.run_cli(main))
