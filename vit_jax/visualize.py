"""The ViT paper's figures for any checkpoint, as PNG files (matplotlib, Agg backend).

  python -m vit_jax.visualize attention --model ViT-B_16 --checkpoint CKPT --image a.jpg --out DIR [--per_layer]
  python -m vit_jax.visualize attention --checkpoint WORKDIR --dataset digits --num_images 4 --out DIR
  python -m vit_jax.visualize distance  --checkpoint WORKDIR --dataset digits --num_images 64 --out DIR
  python -m vit_jax.visualize posemb    --model ViT-B_16 --checkpoint CKPT --out DIR
  python -m vit_jax.visualize filters   --model ViT-B_16 --checkpoint CKPT --out DIR
  python -m vit_jax.visualize curves    --workdir WORKDIR --out DIR
  python -m vit_jax.visualize all       --checkpoint WORKDIR --dataset digits --out DIR   # all four

attention: attention rollout (Abnar & Zuidema, 2020) from the class token, or averaged over all tokens for GAP/MAP
  models, overlaid on each preprocessed input image (files, or a dataset's first test images); with --per_layer,
  the rollout up to every layer.
distance: the paper's Figure 7 (right): for every layer and head, the attention-weighted mean distance in input
  pixels between query and key patches (patch-to-patch attention only; see `mean_attention_distance`), averaged
  over the images; attention_distance.png and attention_distance.json (layers x heads).
posemb: cosine similarity of each patch position's embedding with every other's, an h x w grid of h x w maps.
filters: the first 28 principal components of the patch-embedding filters, as RGB patches.
curves: loss, accuracy (top-k) and learning rate against step, from the workdir's metrics.jsonl (--panels all:
  every metric logged).
"""
import argparse
import collections
import json
import io
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from etils import epath

from vit_jax.tools import inference

DPI = 100


def _pyplot():
  """matplotlib.pyplot on the file-only Agg backend (imported lazily: only this module draws)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> str:
  """Writes `fig` as a PNG to `path` (local or a URL)."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=DPI)  # No bbox_inches='tight': the pixel size stays figsize * DPI.
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(path).write_bytes(buf.getvalue())
  _pyplot().close(fig)
  return path


# ------------------------------------------------------------------------------------------------ attention
def attention_weights(model, params, images: np.ndarray) -> np.ndarray:
  """The encoder's attention weights, per layer and head: (layers, batch, heads, tokens, tokens)."""
  _, state = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False, mutable=['intermediates']))(
      params, images)
  blocks = state['intermediates']['Transformer']
  if 'encoderblock' in blocks:  # nn.scan: one entry with a leading layer axis.
    (weights,) = blocks['encoderblock']['MultiHeadDotProductAttention_0']['attention_weights']
    per_layer = list(weights)
  else:
    names = sorted(blocks, key=lambda k: int(k.rsplit('_', 1)[1]))
    per_layer = [blocks[k]['MultiHeadDotProductAttention_0']['attention_weights'][0] for k in names]
  return np.stack([np.asarray(w, np.float32) for w in per_layer])


def attention_maps(model, params, images: np.ndarray) -> np.ndarray:
  """Per layer, the encoder's attention weights averaged over heads: (layers, batch, tokens, tokens)."""
  return attention_weights(model, params, images).mean(axis=2)


def rollout(attn: np.ndarray) -> np.ndarray:
  """Attention rollout after each layer: add the identity (residual), renormalise rows, multiply through layers.

  attn: (layers, batch, tokens, tokens), rows summing to 1. Returns the same shape; [l] is the rollout up to l.
  """
  eye = np.eye(attn.shape[-1], dtype=np.float64)
  out, joint = [], None
  for a in attn.astype(np.float64):
    a = a + eye
    a = a / a.sum(axis=-1, keepdims=True)
    joint = a if joint is None else a @ joint
    out.append(joint)
  return np.stack(out).astype(np.float32)


def token_relevance(joint: np.ndarray, prefix: int, grid: Tuple[int, int]) -> np.ndarray:
  """From a rollout (batch, tokens, tokens): the class token's row over the patches (or the mean row for GAP/MAP
  models, `prefix` = 0), as (batch, h, w) maps scaled to sum to 1."""
  rel = joint[:, 0, prefix:] if prefix else joint.mean(axis=1)
  rel = rel / rel.sum(axis=-1, keepdims=True)
  return rel.reshape(rel.shape[0], *grid)


def _upsample(m: np.ndarray, size: int) -> np.ndarray:
  """An (h, w) map resized to size x size, smoothly, scaled to [0, 1] (flat maps stay flat)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.fromarray(m.astype(np.float32), mode='F').resize((size, size), Image.Resampling.BILINEAR)
  m = np.asarray(img)
  span = m.max() - m.min()
  return (m - m.min()) / span if span > 1e-8 else np.full_like(m, 0.5)


def plot_attention(image: np.ndarray, maps: Sequence[np.ndarray], titles: Sequence[str], path: str,
                   panel: float = 2.5) -> str:
  """The input image, then one rollout overlay (heat map x image) per entry of `maps`, in one row."""
  plt = _pyplot()
  pixels = inference.to_uint8(image)
  size = pixels.shape[0]
  n = len(maps) + 1
  fig, axes = plt.subplots(1, n, figsize=(panel * n, panel + 0.3), squeeze=False)
  axes[0, 0].imshow(pixels, interpolation='nearest')
  axes[0, 0].set_title('input', fontsize=9)
  for ax, m, title in zip(axes[0, 1:], maps, titles):
    heat = _upsample(m, size)
    ax.imshow((pixels * heat[..., None]).astype(np.uint8), interpolation='nearest')
    ax.imshow(heat, cmap='inferno', alpha=0.35, interpolation='bilinear')
    ax.set_title(title, fontsize=9)
  for ax in axes[0]:
    ax.axis('off')
  fig.tight_layout()
  return _save(fig, path)


def dataset_images(dataset: str, size: int, num: int, split: str = 'test') -> Tuple[np.ndarray, List[str]]:
  """The first `num` eval-preprocessed images of a dataset split, with names '<dataset>_<split>_<i>'."""
  from vit_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  batch_size = -(-num // jax.device_count()) * jax.device_count()  # The pipeline splits batches over devices.
  batch = next(iter(input_pipeline.make_eval_iterator(dataset, {'crop': size, 'test': split},
                                                      global_batch=batch_size)))
  images = np.asarray(batch['image'])[np.asarray(batch['mask']) > 0][:num]
  name = epath.Path(dataset).name
  return images, [f'{name}_{split}_{i}' for i in range(len(images))]


def attention_figures(model, params, images: np.ndarray, names: Sequence[str], out_dir: str,
                      per_layer: bool = False) -> List[str]:
  """One attention-rollout PNG per image, `out_dir/attention_<name>.png`; returns their paths."""
  joint = rollout(attention_maps(model, params, images))
  grid = inference.grid_shape(model, images.shape[1])
  prefix = inference.num_prefix_tokens(model)
  layers = range(joint.shape[0]) if per_layer else [joint.shape[0] - 1]
  maps = {l: token_relevance(joint[l], prefix, grid) for l in layers}
  what = 'class token' if prefix else 'mean over tokens'
  titles = [f'rollout to layer {l + 1}' for l in layers] if per_layer else [f'rollout ({what})']
  return [plot_attention(images[i], [maps[l][i] for l in layers], titles,
                         str(epath.Path(out_dir) / f'attention_{name}.png')) for i, name in enumerate(names)]


# ------------------------------------------------------------------------------------------------ distance
def mean_attention_distance(attn: np.ndarray, grid: Tuple[int, int], token_pixels: int, prefix: int = 0
                            ) -> np.ndarray:
  """The ViT paper's mean attention distance in input pixels, per layer and head: (layers, heads).

  attn: (layers, batch, heads, tokens, tokens) attention weights, the `prefix` tokens (class token) first, then
  the h x w patch grid row by row. Only patch-to-patch attention counts, as in the paper's figure: prefix tokens
  are dropped as queries and as keys, and each query's weights over the patch keys are renormalised to sum to 1.
  A token covers `token_pixels` input pixels along each side (patch size x the hybrid stem's stride); the
  distance between two tokens is the Euclidean distance between their grid cells times that. For each query,
  the attention-weighted mean distance to the keys; then the mean over queries and images.
  """
  a = np.asarray(attn, np.float64)[..., prefix:, prefix:]
  if a.shape[-1] != grid[0] * grid[1]:
    raise ValueError(f'{a.shape[-1]} patch tokens do not make a {grid[0]}x{grid[1]} grid.')
  a = a / np.maximum(a.sum(axis=-1, keepdims=True), 1e-30)
  rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
  dist = np.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]) * token_pixels  # (query, key)
  per_query = np.einsum('lbhqk,qk->lbhq', a, dist)
  return per_query.mean(axis=(1, 3)).astype(np.float32)


def token_pixels(model) -> int:
  """Input pixels per token side: the patch size times the hybrid ResNet stem's stride (1 without a stem)."""
  return inference._total_stride(model)  # pylint: disable=protected-access


def attention_distances(model, params, images: np.ndarray, batch: int = 32) -> np.ndarray:
  """`mean_attention_distance` of the model's attention over `images`, computed `batch` images at a time."""
  grid = inference.grid_shape(model, images.shape[1])
  prefix = inference.num_prefix_tokens(model)
  total, count = None, 0
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    d = mean_attention_distance(attention_weights(model, params, chunk), grid, token_pixels(model), prefix)
    total = d * len(chunk) if total is None else total + d * len(chunk)
    count += len(chunk)
  return total / count


def plot_distance(distances: np.ndarray, path: str, image_size: int, title: str = '') -> str:
  """The paper's Figure 7 (right): one dot per head at each layer, mean attention distance in pixels."""
  plt = _pyplot()
  layers, heads = distances.shape
  fig, ax = plt.subplots(figsize=(4.5, 4.0))
  colors = plt.get_cmap('tab20')(np.arange(heads) % 20)
  for h in range(heads):
    ax.scatter(np.arange(1, layers + 1), distances[:, h], s=14, color=colors[h], label=f'head {h + 1}')
  ax.set_xlabel('Network depth (layer)')
  ax.set_ylabel('Mean attention distance (pixels)')
  ax.set_xlim(0.5, layers + 0.5)
  ax.set_xticks(range(1, layers + 1, max(1, layers // 12)))
  ax.set_ylim(0, max(float(distances.max()) * 1.1, image_size / 2))
  ax.grid(alpha=0.3)
  if heads <= 16:
    ax.legend(fontsize=6, ncol=2, loc='lower right')
  ax.set_title(title or 'Mean attention distance', fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


# ------------------------------------------------------------------------------------------------ posemb
def posemb_similarity(posemb: np.ndarray, prefix: int, grid: Tuple[int, int]) -> np.ndarray:
  """Cosine similarity between the patch positions' embeddings: (h, w, h, w); [i, j] is position (i, j)'s map."""
  pe = np.asarray(posemb, np.float64).reshape(-1, posemb.shape[-1])[prefix:]
  if pe.shape[0] != grid[0] * grid[1]:
    raise ValueError(f'{pe.shape[0]} position embeddings do not make a {grid[0]}x{grid[1]} grid.')
  pe = pe / np.maximum(np.linalg.norm(pe, axis=-1, keepdims=True), 1e-12)
  return (pe @ pe.T).reshape(*grid, *grid).astype(np.float32)


def posemb_figsize(grid: Tuple[int, int]) -> Tuple[float, float]:
  """Inches: square maps of `_posemb_cell` inches, plus margins for labels, title and colour bar."""
  cell = _posemb_cell(grid)
  return cell * grid[1] + 1.7, cell * grid[0] + 0.9


def _posemb_cell(grid: Tuple[int, int]) -> float:
  return min(1.0, max(0.35, 6. / max(grid)))  # About 6 inches of maps for a 7x7 to 16x16 grid.


def plot_posemb(sim: np.ndarray, path: str) -> str:
  """The ViT paper's figure: for every patch position, a small map of its similarity with all positions."""
  plt = _pyplot()
  h, w = sim.shape[:2]
  fig_w, fig_h = posemb_figsize((h, w))
  fig, axes = plt.subplots(h, w, figsize=(fig_w, fig_h), squeeze=False)
  for i in range(h):
    for j in range(w):
      im = axes[i, j].imshow(sim[i, j], cmap='viridis', vmin=-1, vmax=1, interpolation='nearest')
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
    axes[i, 0].set_ylabel(str(i + 1), fontsize=7)
  for j in range(w):
    axes[-1, j].set_xlabel(str(j + 1), fontsize=7)
  # Margins in inches: 0.4 left, 1.3 right (colour bar), 0.4 bottom, 0.5 top (title).
  fig.subplots_adjust(left=0.4 / fig_w, right=1 - 1.3 / fig_w, bottom=0.4 / fig_h, top=1 - 0.5 / fig_h,
                      wspace=0.08, hspace=0.08)
  cax = fig.add_axes([1 - 1.1 / fig_w, 0.4 / fig_h, 0.15 / fig_w, 1 - 0.9 / fig_h])
  fig.colorbar(im, cax=cax).set_label('cosine similarity', fontsize=8)
  fig.text(0.4 / fig_w, 1 - 0.3 / fig_h, 'Position embedding similarity', fontsize=9, va='center')
  fig.text(0.4 / fig_w, 0.15 / fig_h, 'input patch column', fontsize=8, va='center')
  fig.text(0.1 / fig_w, 0.5, 'input patch row', fontsize=8, rotation=90, va='center')
  return _save(fig, path)


# ------------------------------------------------------------------------------------------------ filters
def filter_components(kernel: np.ndarray, num: int = 28) -> Tuple[np.ndarray, np.ndarray]:
  """The first `num` principal components of the embedding filters kernel (ph, pw, C, D): ((num, ph, pw, C)
  unit vectors, orthonormal; the fraction of variance each explains)."""
  ph, pw, c, d = kernel.shape
  filters = np.asarray(kernel, np.float64).reshape(ph * pw * c, d).T  # One row per filter.
  filters = filters - filters.mean(axis=0, keepdims=True)
  _, s, vt = np.linalg.svd(filters, full_matrices=False)
  num = min(num, vt.shape[0])
  explained = s**2 / max(np.sum(s**2), 1e-30)
  return vt[:num].reshape(num, ph, pw, c).astype(np.float32), explained[:num].astype(np.float32)


def plot_filters(components: np.ndarray, path: str, cols: int = 7, cell: float = 0.9,
                 title: str = 'RGB embedding filters') -> str:
  """Each component as an RGB patch, its values scaled to [0, 1] on its own."""
  plt = _pyplot()
  n = components.shape[0]
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows + 0.4), squeeze=False)
  for k, ax in enumerate(axes.flat):
    ax.axis('off')
    if k < n:
      comp = components[k]
      lo, hi = comp.min(), comp.max()
      ax.imshow((comp - lo) / (hi - lo) if hi > lo else np.full_like(comp, 0.5), interpolation='nearest')
  fig.suptitle(f'{title} (first {n} principal components)', fontsize=9)
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.4 / (cell * rows + 0.4), wspace=0.1,
                      hspace=0.1)
  return _save(fig, path)


# ------------------------------------------------------------------------------------------------ curves
def read_metrics(path: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """A metrics.jsonl file as {metric: (steps, values)}; lines without a step or with non-numbers are skipped."""
  series = collections.defaultdict(list)
  with epath.Path(path).open() as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        raise ValueError(f'{path}:{n} is not a JSON line: {line.strip()[:60]}') from None
      if not isinstance(record, Mapping) or 'step' not in record:
        continue
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
          series[key].append((record['step'], float(value)))
  return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v])) for k, v in series.items()}


def _family(key: str) -> str:
  """What a metric measures, so 'train/loss' and 'val/loss' share a panel: the part after the last '/'."""
  return key.rsplit('/', 1)[-1]


def _panel(key: str) -> str:
  """The panel a metric goes to: 'loss', 'accuracy' (top-k, accuracy, precision), 'learning rate', or its family."""
  family = _family(key)
  if 'loss' in family:
    return 'loss'
  if family.startswith('top') or 'acc' in family or family.startswith('prec'):
    return 'accuracy'
  if family in ('lr', 'learning_rate'):
    return 'learning rate'
  return family


DEFAULT_PANELS = ('loss', 'accuracy', 'learning rate')


def group_metrics(metrics: Mapping[str, Any], panels: Optional[Sequence[str]] = DEFAULT_PANELS
                  ) -> Dict[str, List[str]]:
  """{panel: metric keys} for the panels asked for (None: every metric, one panel per family), in that order."""
  groups = collections.defaultdict(list)
  for key in sorted(metrics):
    groups[_panel(key)].append(key)
  order = list(panels) if panels is not None else sorted(groups, key=lambda p: (
      p not in DEFAULT_PANELS, DEFAULT_PANELS.index(p) if p in DEFAULT_PANELS else 0, p))
  return {p: groups[p] for p in order if p in groups}


def curves_figsize(num_panels: int, cols: int = 3) -> Tuple[float, float]:
  """Inches for `num_panels` panels, at most `cols` per row."""
  cols = min(cols, num_panels)
  return 4.0 * cols, 3.0 * math.ceil(num_panels / cols)


def plot_curves(metrics: Mapping[str, Tuple[np.ndarray, np.ndarray]], path: str,
                panels: Optional[Sequence[str]] = DEFAULT_PANELS, cols: int = 3) -> str:
  """One panel per kind of metric (see `group_metrics`), each split's curve in it, against step."""
  groups = group_metrics(metrics, panels)
  if not groups:
    raise ValueError(f'No metrics to plot in panels {", ".join(panels or ())}; the log has {", ".join(metrics)}.')
  plt = _pyplot()
  n = len(groups)
  cols = min(cols, n)
  fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=curves_figsize(n, cols), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis('off')
  for ax, (panel, names) in zip(axes.flat, groups.items()):
    for name in names:
      steps, values = metrics[name]
      ax.plot(steps, values, marker='.' if len(steps) < 30 else None, label=name)
    if panel == 'learning rate':
      ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
    ax.set_title(panel, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


# ------------------------------------------------------------------------------------------------ CLI
_CURVES_HELP = "panels: 'loss', 'accuracy', 'learning rate', or a metric family such as grad_norm; 'all': every one"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.visualize', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='figure', required=True)
  for name in ('attention', 'distance', 'posemb', 'filters', 'all'):
    p = sub.add_parser(name, help='every figure of a training workdir' if name == 'all' else None)
    p.add_argument('--model', help='registered name, e.g. ViT-B_16 (optional for a workdir that records it)')
    p.add_argument('--checkpoint', required=True,
                   help='training workdir' if name == 'all' else 'published .npz or training workdir')
    p.add_argument('--out', required=True, help='output directory')
    if name in ('attention', 'distance', 'all'):
      source = p.add_mutually_exclusive_group(required=True)
      source.add_argument('--image', nargs='+', help='image files')
      source.add_argument('--dataset', help="or the first --num_images test images of a dataset, e.g. 'digits'")
      p.add_argument('--num_images', type=int, default=4)
      p.add_argument('--image_size', type=int, help='model resolution (default: from the checkpoint)')
      if name != 'distance':
        p.add_argument('--per_layer', action='store_true', help='also the rollout up to each layer')
    if name in ('filters', 'all'):
      p.add_argument('--num', type=int, default=28, help='principal components to show')
  p = sub.add_parser('curves')
  p.add_argument('--workdir', required=True, help='training workdir with metrics.jsonl')
  p.add_argument('--out', required=True, help='output directory')
  p.add_argument('--panels', nargs='+', default=list(DEFAULT_PANELS), help=_CURVES_HELP)
  return parser.parse_args(argv)


def _curves(workdir: str, out: str, panels: Optional[Sequence[str]]) -> List[str]:
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.is_file():
    raise FileNotFoundError(f'No metrics.jsonl in {workdir}; pass the training workdir.')
  return [plot_curves(read_metrics(path), str(epath.Path(out) / 'curves.png'), panels)]


def _attention(args, model, params, size) -> List[str]:
  if args.image:
    images = np.stack([inference.load_image(p, size) for p in args.image])
    names = [epath.Path(p).stem for p in args.image]
  else:
    images, names = dataset_images(args.dataset, size, args.num_images)
  return attention_figures(model, params, images, names, args.out, args.per_layer)


def _images(args, size) -> np.ndarray:
  if args.image:
    return np.stack([inference.load_image(p, size) for p in args.image])
  return dataset_images(args.dataset, size, args.num_images)[0]


def _distance(args, model, params, size) -> List[str]:
  images = _images(args, size)
  distances = attention_distances(model, params, images)
  out = epath.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / 'attention_distance.json'
  with path.open('w') as f:
    json.dump({'model': model.model_name, 'checkpoint': args.checkpoint, 'image_size': size,
               'token_pixels': token_pixels(model), 'grid': list(inference.grid_shape(model, size)),
               'num_images': len(images), 'prefix_tokens_excluded': inference.num_prefix_tokens(model),
               'layers': int(distances.shape[0]), 'heads': int(distances.shape[1]),
               'mean_distance_pixels': distances.tolist()}, f, indent=1)
  title = f'{model.model_name}, {len(images)} images at {size} px'
  return [plot_distance(distances, str(out / 'attention_distance.png'), size, title), str(path)]


def _posemb(args, model, params, size) -> List[str]:
  if 'posembed_input' not in params.get('Transformer', {}):
    raise ValueError(f'Checkpoint {args.checkpoint} has fixed (sincos2d) or no position embeddings to plot.')
  pe = params['Transformer']['posembed_input']['pos_embedding']
  sim = posemb_similarity(pe, inference.num_prefix_tokens(model), inference.grid_shape(model, size))
  return [plot_posemb(sim, str(epath.Path(args.out) / 'posemb.png'))]


def _filters(args, model, params, size) -> List[str]:
  del size
  kernel, what = np.asarray(params['embedding']['kernel']), 'embedding'
  if kernel.shape[2] != 3:
    if 'conv_root' not in params:
      raise ValueError(f'{model.model_name} embeds features, not RGB pixels: no RGB filters to plot.')
    # A hybrid's pixels meet the ResNet root conv first: its filters are the analogue of the patch embedding's.
    kernel, what = np.asarray(params['conv_root']['kernel']), 'ResNet root conv'
  comps, _ = filter_components(kernel, args.num)
  return [plot_filters(comps, str(epath.Path(args.out) / 'filters.png'), title=f'RGB {what} filters')]


def main(argv: Sequence[str]) -> int:
  """Writes the requested figure(s) and prints their paths; returns the exit code."""
  args = parse_args(argv)
  if args.figure == 'curves':
    paths = _curves(args.workdir, args.out, None if args.panels == ['all'] else args.panels)
  else:
    model, params, size = inference.load_model(args.checkpoint, args.model,
                                               size=getattr(args, 'image_size', None))
    makers = {'attention': [_attention], 'distance': [_distance], 'posemb': [_posemb], 'filters': [_filters],
              'all': [_attention, _posemb, _filters]}[args.figure]
    paths = [path for make in makers for path in make(args, model, params, size)]
    if args.figure == 'all':
      paths += _curves(args.checkpoint, args.out, DEFAULT_PANELS)
  print('\n'.join(paths))
  return 0


def run() -> int:
  """The `vit-jax-visualize` console script."""
  return inference.run_cli(main)


if __name__ == '__main__':
  raise SystemExit(run())
