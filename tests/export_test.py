"""Tests for vit_jax.export, and for the tools reading a real training workdir (a few steps of the default)."""
import json
import os

import numpy as np
import pytest

from vit_jax import export
from vit_jax import predict
from vit_jax import visualize
from vit_jax.data import pipeline as input_pipeline
from vit_jax.tools import inference
import tiny_checkpoint


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return tiny_checkpoint.trained_workdir(str(tmp_path_factory.getbasetemp()))


def _digits_top1(model, params, size):
  correct = total = 0
  for batch in input_pipeline.make_eval_iterator('digits', {'crop': size}, global_batch=304):
    logits = np.asarray(model.apply({'params': params}, batch['image'], train=False))
    mask = batch['mask'] > 0
    correct += np.sum((logits.argmax(-1) == batch['label'].argmax(-1))[mask])
    total += mask.sum()
  return correct / total


@pytest.mark.slow
def test_export_holds_the_final_params_of_the_run(workdir, tmp_path, capsys):
  out = str(tmp_path / 'model.npz')
  assert inference.run_cli(export.main, ['--workdir', workdir, '--out', out]) == 0
  assert capsys.readouterr().out.strip() == out
  # The exported file is a published-layout .npz: the loader of published checkpoints reads it back.
  params = inference.load_params(out)
  model, _, size = inference.load_model(workdir)
  from configs import default  # pylint: disable=g-import-not-at-top
  assert size == default.get_config().pp.crop
  inference.check_fits(model, params, size)
  # Independent of how the tools restore a workdir: the file's params score what the loop measured at the end.
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    final = json.load(f)
  assert final['step'] == 4
  assert _digits_top1(model, params, size) == pytest.approx(final['val/top1'], abs=1e-6)


@pytest.mark.slow
def test_predict_reads_a_workdir_without_being_told_the_model(workdir, tmp_path, capsys):
  img = tiny_checkpoint.write_image(str(tmp_path / 'x.png'), 8, 8)
  assert inference.run_cli(predict.main, ['--checkpoint', workdir, '--image', img, '--topk', '2']) == 0
  lines = capsys.readouterr().out.strip().split('\n')
  assert lines[0] == img and len(lines) == 3


def test_curves_read_the_runs_metrics(workdir):
  metrics = visualize.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  np.testing.assert_array_equal(metrics['train/loss'][0], [1, 2, 3, 4])
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    assert metrics['val/top1'][1][-1] == pytest.approx(json.load(f)['val/top1'])
  assert list(visualize.group_metrics(metrics)) == ['loss', 'accuracy', 'learning rate']


@pytest.mark.parametrize('problem', ['not_a_dir', 'no_checkpoints'])
def test_export_errors_are_one_line(tmp_path, capsys, problem):
  workdir = str(tmp_path / 'missing')
  if problem == 'no_checkpoints':
    os.makedirs(os.path.join(workdir, 'checkpoints'))
  assert inference.run_cli(export.main, ['--workdir', workdir, '--out', str(tmp_path / 'm.npz')]) == 2
  err = capsys.readouterr().err.strip()
  assert '\n' not in err and workdir in err


@pytest.mark.slow
def test_all_figures_of_a_workdir(workdir, tmp_path, capsys):
  # The README's figure command, on the 4-step run: one attention map per image and the three other figures.
  out = str(tmp_path / 'figs')
  assert inference.run_cli(visualize.main, ['all', '--checkpoint', workdir, '--dataset', 'digits',
                                            '--num_images', '2', '--out', out]) == 0
  names = ['attention_digits_test_0.png', 'attention_digits_test_1.png', 'posemb.png', 'filters.png', 'curves.png']
  assert capsys.readouterr().out.split() == [os.path.join(out, n) for n in names]
  for name in names:
    img = np.asarray(visualize._pyplot().imread(os.path.join(out, name)))
    assert img.std() > 0, name


@pytest.mark.slow
def test_attention_distance_of_a_hybrid_gap_workdir(workdir, tmp_path, capsys):
  # The README's distance command, on the 4-step run of the default: a GAP hybrid (1x1 patches on a stride-4 stem).
  out = str(tmp_path / 'figs')
  assert inference.run_cli(visualize.main, ['distance', '--checkpoint', workdir, '--dataset', 'digits',
                                            '--num_images', '64', '--out', out]) == 0
  assert capsys.readouterr().out.split()[-1] == os.path.join(out, 'attention_distance.json')
  with open(os.path.join(out, 'attention_distance.json')) as f:
    result = json.load(f)
  assert (result['layers'], result['heads'], result['token_pixels'], result['grid']) == (2, 4, 4, [4, 4])
  assert result['prefix_tokens_excluded'] == 0 and result['num_images'] == 64
  d = np.array(result['mean_distance_pixels'])
  assert d.shape == (2, 4) and np.all((d >= 0) & (d <= 4 * 3 * np.sqrt(2)))
