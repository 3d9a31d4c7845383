"""Top-k predictions of a trained ViT for image files.

  python -m vit_jax.predict --model ViT-B_16 --checkpoint ViT-B_16.npz --image a.jpg b.png --topk 5 \
      --labels imagenet2012

`--checkpoint` is a published .npz or a training workdir (its latest checkpoint). Images get the model's eval
preprocessing: the smaller side resized to the model's resolution (read from the checkpoint's position
embeddings unless `--image_size` is given), a central crop, pixels in [-1, 1].

`--labels`: 'imagenet2012' or 'imagenet21k' (names from a package installed here: timm's ImageNet synset and lemma
tables, else TFDS's imagenet2012 synset ids; without either, class indices), or a file with one name per line.
"""
import argparse
import importlib.util
import os
from typing import List, Optional, Sequence, Tuple

import jax
import numpy as np
from etils import epath

from vit_jax.tools import inference

_BUILTIN_LABELS = ('imagenet2012', 'imagenet21k')


def _package_dir(package: str) -> Optional[str]:
  """Where an installed package lives, without importing it (timm would import torch)."""
  spec = importlib.util.find_spec(package)
  return os.path.dirname(spec.origin) if spec and spec.origin else None


def _read_lines(path: str) -> List[str]:
  return [line for line in epath.Path(path).read_text(encoding='utf-8').splitlines() if line.strip()]


def builtin_label_names(name: str) -> Optional[List[str]]:
  """Class names of 'imagenet2012' / 'imagenet21k' from installed packages, or None when none ships them."""
  timm_dir = _package_dir('timm')
  synsets_file = {'imagenet2012': 'imagenet_synsets.txt', 'imagenet21k': 'imagenet21k_goog_synsets.txt'}[name]
  if timm_dir:
    info = os.path.join(timm_dir, 'data', '_info')
    if os.path.isfile(os.path.join(info, synsets_file)):
      lemmas = dict(line.split('\t', 1) for line in _read_lines(os.path.join(info, 'imagenet_synset_to_lemma.txt')))
      return [lemmas.get(s, s) for s in _read_lines(os.path.join(info, synsets_file))]
  tfds_dir = _package_dir('tensorflow_datasets')
  if tfds_dir and name == 'imagenet2012':
    path = os.path.join(tfds_dir, 'datasets', 'imagenet2012', 'labels.txt')
    if os.path.isfile(path):
      return _read_lines(path)  # WordNet synset ids (n01440764, ...): TFDS ships no names.
  return None


def label_names(labels: Optional[str], num_classes: int) -> Tuple[List[str], Optional[str]]:
  """(name per class, a note when names fell back to indices) for `--labels`."""
  indices = [str(i) for i in range(num_classes)]
  if labels is None:
    return indices, None
  if labels in _BUILTIN_LABELS:
    names = builtin_label_names(labels)
    if names is None:
      return indices, (f'note: no installed package ships the {labels} class names (timm or '
                       'tensorflow-datasets); printing class indices. Pass --labels FILE for names.')
  else:
    if not epath.Path(labels).is_file():
      raise FileNotFoundError(f'--labels {labels} is neither {" nor ".join(_BUILTIN_LABELS)} nor a file.')
    names = _read_lines(labels)
  if len(names) != num_classes:
    raise ValueError(f'--labels {labels} has {len(names)} names but the model has {num_classes} classes.')
  return names, None


def predict(model, params, images: np.ndarray, topk: int) -> List[List[Tuple[int, float]]]:
  """Per image, the top-k (class index, probability) pairs, most probable first."""
  logits = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, images)
  probs = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
  order = np.argsort(-probs, axis=-1, kind='stable')[:, :topk]
  return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, probs)]


def format_predictions(paths: Sequence[str], preds: List[List[Tuple[int, float]]],
                       names: Sequence[str]) -> str:
  """The printed report: each path, then one 'probability  name' line per class."""
  lines = []
  for path, pred in zip(paths, preds):
    lines.append(path)
    lines.extend(f'  {p:.4f}  {names[c]}' + (f'  ({c})' if names[c] != str(c) else '') for c, p in pred)
  return '\n'.join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.predict', description=__doc__.split('\n')[0])
  parser.add_argument('--model', help='registered name, e.g. ViT-B_16 (optional for a workdir that records it; '
                      'for a bare timm state dict, its timm architecture)')
  parser.add_argument('--checkpoint', required=True, help='published .npz, training workdir, or a timm / HF '
                      'checkpoint (docs/timm_hf.md)')
  parser.add_argument('--image', nargs='+', required=True, help='image files')
  parser.add_argument('--topk', type=int, default=5)
  parser.add_argument('--labels', help='imagenet2012 | imagenet21k | file with one class name per line')
  parser.add_argument('--image_size', type=int, help='model resolution (default: from the checkpoint)')
  parser.add_argument('--resize', type=int, help='smaller side before the central crop (default: image_size)')
  return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
  """Prints the top-k classes per image; returns the exit code."""
  args = parse_args(argv)
  if args.topk < 1:
    raise ValueError(f'--topk must be at least 1, got {args.topk}.')
  model, params, size = inference.load_model(args.checkpoint, args.model, size=args.image_size)
  if not model.num_classes:
    raise ValueError(f'Checkpoint {args.checkpoint} has no classification head; use vit_jax.fewshot for its '
                     'features.')
  names, note = label_names(args.labels, model.num_classes)
  images = np.stack([inference.load_image(p, size, args.resize) for p in args.image])
  preds = predict(model, params, images, min(args.topk, model.num_classes))
  if note:
    print(note)
  print(format_predictions(args.image, preds, names))
  return 0


def run() -> int:
  """The `vit-jax-predict` console script."""
  return inference.run_cli(main)


if __name__ == '__main__':
  raise SystemExit(run())
