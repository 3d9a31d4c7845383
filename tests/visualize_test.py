"""Tests for vit_jax.visualize: the numbers behind each figure, and that each PNG is made, sized and not blank."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from vit_jax import visualize
from vit_jax.tools import inference
import tiny_checkpoint


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  return tiny_checkpoint.save_checkpoint(str(tmp_path_factory.mktemp('ckpt')))


def _png(path, size_inches):
  """Asserts the PNG has the pixel size of `size_inches` at the figures' DPI and is not blank."""
  img = np.asarray(Image.open(path).convert('RGB'), np.float32)
  want = np.array(size_inches[::-1]) * visualize.DPI
  assert np.all(np.abs(np.array(img.shape[:2]) - want) <= 1), (img.shape, want)
  assert img.std() > 0
  return img


def _uniform_attention(params):
  """Zero queries: every attention logit is 0, so every token attends uniformly."""
  params = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
  blocks = {k: dict(v) for k, v in params['Transformer'].items()}
  for name, block in blocks.items():
    if name.startswith('encoderblock_'):
      mha = dict(block['MultiHeadDotProductAttention_0'])
      mha['query'] = {k: np.zeros_like(v) for k, v in mha['query'].items()}
      block['MultiHeadDotProductAttention_0'] = mha
  params['Transformer'] = blocks
  return params


def test_rollout_adds_identity_renormalises_and_multiplies():
  rng = np.random.default_rng(0)
  a = rng.random((2, 1, 5, 5))
  a /= a.sum(-1, keepdims=True)
  joint = visualize.rollout(a)
  eye = np.eye(5)
  np.testing.assert_allclose(joint[0, 0], (a[0, 0] + eye) / 2, rtol=1e-6)
  np.testing.assert_allclose(joint[1, 0], (a[1, 0] + eye) / 2 @ ((a[0, 0] + eye) / 2), rtol=1e-5)
  np.testing.assert_allclose(joint.sum(-1), 1, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_rollout_of_uniform_attention_is_uniform(classifier):
  model, params = tiny_checkpoint.random_params(classifier=classifier)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  attn = visualize.attention_maps(model, _uniform_attention(params), images)
  tokens = 17 if classifier == 'token' else 16
  assert attn.shape == (1, 2, tokens, tokens)
  np.testing.assert_allclose(attn, 1 / tokens, rtol=1e-5)
  rel = visualize.token_relevance(visualize.rollout(attn)[-1], inference.num_prefix_tokens(model), (4, 4))
  np.testing.assert_allclose(rel, 1 / 16, rtol=1e-5)


def test_attention_cli_writes_one_figure_per_image(ckpt, tmp_path, capsys):
  path, _, _ = ckpt
  images = [tiny_checkpoint.write_image(str(tmp_path / f'{n}.png'), seed=i) for i, n in enumerate('ab')]
  out = str(tmp_path / 'figs')
  assert inference.run_cli(visualize.main, ['attention', '--model', tiny_checkpoint.MODEL, '--checkpoint', path,
                                            '--image', *images, '--out', out, '--per_layer']) == 0
  written = capsys.readouterr().out.split()
  assert written == [os.path.join(out, 'attention_a.png'), os.path.join(out, 'attention_b.png')]
  for png in written:
    _png(png, (2.5 * 2, 2.8))  # The input and the rollout after the (single) layer.


def test_posemb_similarity_and_figure(ckpt, tmp_path):
  path, model, params = ckpt
  pe = params['Transformer']['posembed_input']['pos_embedding']
  sim = visualize.posemb_similarity(pe, 1, (4, 4))
  assert sim.shape == (4, 4, 4, 4)
  np.testing.assert_allclose(np.einsum('ijij->ij', sim), 1, rtol=1e-6)
  np.testing.assert_allclose(sim, np.transpose(sim, (2, 3, 0, 1)), rtol=1e-6)
  assert np.all(np.abs(sim) <= 1 + 1e-6)
  # Position embeddings that encode the column only: same-column positions are identical.
  cols = np.tile(np.eye(4), (4, 1))[None]
  sim_cols = visualize.posemb_similarity(cols, 0, (4, 4))
  np.testing.assert_allclose(sim_cols[0, 1], np.tile(np.eye(4)[1], (4, 1)))
  out = str(tmp_path / 'figs')
  assert inference.run_cli(visualize.main, ['posemb', '--model', tiny_checkpoint.MODEL, '--checkpoint', path,
                                            '--out', out]) == 0
  _png(os.path.join(out, 'posemb.png'), (4 * 1.0 + 1.7, 4 * 1.0 + 0.9))  # 1-inch maps for a 4x4 grid.


def test_filter_components_are_orthonormal_and_drawn(ckpt, tmp_path):
  path, _, params = ckpt
  kernel = params['embedding']['kernel']  # (4, 4, 3, 32): 32 filters of 48 numbers.
  comps, explained = visualize.filter_components(kernel, 28)
  assert comps.shape == (28, 4, 4, 3)
  flat = comps.reshape(28, -1)
  np.testing.assert_allclose(flat @ flat.T, np.eye(28), atol=1e-5)
  assert np.all(np.diff(explained) <= 1e-7) and 0 < explained.sum() <= 1 + 1e-6
  # The first component is the direction of largest variance of the (centred) filters.
  f = kernel.reshape(48, 32).T
  f = f - f.mean(0)
  assert np.var(f @ flat[0]) >= np.var(f @ flat[1:].T, axis=0).max() - 1e-9
  out = str(tmp_path / 'figs')
  assert inference.run_cli(visualize.main, ['filters', '--model', tiny_checkpoint.MODEL, '--checkpoint', path,
                                            '--out', out]) == 0
  _png(os.path.join(out, 'filters.png'), (0.9 * 7, 0.9 * 4 + 0.4))


def test_curves_read_the_right_values_and_draw(tmp_path, capsys):
  records = [{'step': s, 'train/loss': 2.0 / s, 'train/lr': 0.001 * s, 'train/grad_norm': 1.} for s in (1, 2, 3, 4)]
  records += [{'step': 2, 'val/loss': 1.5, 'val/top1': 0.5}, {'step': 4, 'val/loss': 0.7, 'val/top1': 0.875}]
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in records) + '\n')
  metrics = visualize.read_metrics(str(tmp_path / 'metrics.jsonl'))
  np.testing.assert_array_equal(metrics['val/top1'][0], [2, 4])
  np.testing.assert_allclose(metrics['val/top1'][1], [0.5, 0.875])
  np.testing.assert_allclose(metrics['train/loss'][1], [2.0, 1.0, 2 / 3, 0.5])
  assert visualize.group_metrics(metrics) == {'loss': ['train/loss', 'val/loss'], 'accuracy': ['val/top1'],
                                              'learning rate': ['train/lr']}
  assert list(visualize.group_metrics(metrics, None)) == ['loss', 'accuracy', 'learning rate', 'grad_norm']
  out = str(tmp_path / 'figs')
  assert inference.run_cli(visualize.main, ['curves', '--workdir', str(tmp_path), '--out', out]) == 0
  _png(capsys.readouterr().out.strip(), visualize.curves_figsize(3))
  assert inference.run_cli(visualize.main, ['curves', '--workdir', str(tmp_path / 'nope'), '--out', out]) == 2


# ------------------------------------------------------------------------------------------------ distance
def _grid_mean_pairwise_distance(g: int) -> float:
  """E|p - q| for p, q independent and uniform over a g x g grid (unit spacing): the double sum over offsets,
  each offset (dx, dy) occurring (g - |dx|)(g - |dy|) times among the g^4 ordered pairs."""
  total = sum((g - abs(dx)) * (g - abs(dy)) * math.hypot(dx, dy)
              for dx in range(-(g - 1), g) for dy in range(-(g - 1), g))
  return total / g**4


def test_mean_pairwise_distance_closed_form_sanity():
  assert _grid_mean_pairwise_distance(1) == 0
  assert _grid_mean_pairwise_distance(2) == pytest.approx((4 * 1 * 2 + 4 * math.sqrt(2)) / 16)


def test_attention_to_self_only_is_zero_and_prefix_tokens_do_not_count():
  g, prefix = 3, 1
  tokens = prefix + g * g
  attn = np.zeros((2, 3, 4, tokens, tokens))  # layers, images, heads
  attn[..., 0] = 0.5  # Half of every row on the class token: dropped, then the row renormalised.
  idx = np.arange(prefix, tokens)
  attn[..., idx, idx] = 0.5
  attn[..., 0, :] = 1 / tokens  # The class token's own row: not a query that counts.
  np.testing.assert_array_equal(visualize.mean_attention_distance(attn, (g, g), 16, prefix), np.zeros((2, 4)))


@pytest.mark.parametrize('g,patch', [(4, 16), (7, 32), (14, 16)])
def test_uniform_attention_gives_the_grid_mean_pairwise_distance(g, patch):
  attn = np.full((1, 2, 3, g * g, g * g), 1 / (g * g))
  d = visualize.mean_attention_distance(attn, (g, g), patch)
  np.testing.assert_allclose(d, np.full((1, 3), patch * _grid_mean_pairwise_distance(g)), rtol=1e-6)


def _one_patch_right(g: int) -> np.ndarray:
  """Each patch attends to its right neighbour (the last column: its left one): one patch away, always."""
  a = np.zeros((g * g, g * g))
  for i in range(g):
    for j in range(g):
      a[i * g + j, i * g + (j + 1 if j + 1 < g else j - 1)] = 1.
  return a


def test_one_patch_to_the_right_is_the_patch_size_and_for_a_hybrid_patch_times_stride():
  g = 5
  attn = np.zeros((1, 1, 2, g * g, g * g))
  attn[0, 0, 0] = np.eye(g * g)       # head 1: self
  attn[0, 0, 1] = _one_patch_right(g)  # head 2: one patch to the right
  vit_b16 = inference.build_model('ViT-B_16', num_classes=0)
  np.testing.assert_array_equal(
      visualize.mean_attention_distance(attn, (g, g), visualize.token_pixels(vit_b16)), [[0., 16.]])
  # R50+ViT-B/16: 1x1 patches on the ResNet stem, whose root strides 4 and whose 2nd and 3rd stages 2 each.
  hybrid = inference.build_model('R50+ViT-B_16', num_classes=0)
  assert tuple(hybrid.patches['size']) == (1, 1) and tuple(hybrid.resnet['num_layers']) == (3, 4, 9)
  np.testing.assert_array_equal(
      visualize.mean_attention_distance(attn, (g, g), visualize.token_pixels(hybrid)), [[0., 1 * 4 * 2 * 2]])


def test_a_models_uniform_attention_gives_the_closed_form():
  """Through the real model: zero queries make every row uniform over all 17 tokens, class token included;
  without it, renormalised, uniform over the 4x4 patches of 4 pixels."""
  model, params = tiny_checkpoint.random_params()
  images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  d = visualize.attention_distances(model, _uniform_attention(params), images, batch=2)
  np.testing.assert_allclose(d, np.full((1, 2), 4 * _grid_mean_pairwise_distance(4)), rtol=1e-5)


def test_distance_cli_writes_layers_by_heads_json_and_a_png(ckpt, tmp_path, capsys):
  path, model, params = ckpt
  out = str(tmp_path / 'figs')
  images = [tiny_checkpoint.write_image(str(tmp_path / f'{n}.png'), seed=i) for i, n in enumerate('abc')]
  assert inference.run_cli(visualize.main, ['distance', '--model', tiny_checkpoint.MODEL, '--checkpoint', path,
                                            '--image', *images, '--out', out]) == 0
  assert capsys.readouterr().out.split() == [os.path.join(out, 'attention_distance.png'),
                                             os.path.join(out, 'attention_distance.json')]
  with open(os.path.join(out, 'attention_distance.json')) as f:
    result = json.load(f)
  d = np.array(result['mean_distance_pixels'])
  assert d.shape == (result['layers'], result['heads']) == (1, 2)  # mu/4: one layer, two heads
  assert result['token_pixels'] == 4 and result['grid'] == [4, 4] and result['num_images'] == 3
  # Between attending to self only (0) and to the farthest patch (the grid's diagonal, 3 * sqrt(2) patches).
  assert np.all((d > 0) & (d < 4 * 3 * math.sqrt(2)))
  _png(os.path.join(out, 'attention_distance.png'), (4.5, 4.0))
