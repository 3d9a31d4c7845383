"""`python -m vit_jax.evaluate`: a workdir's checkpoint scored as the run scored it; a published .npz by hand."""
import re

import numpy as np
import pytest

import loop_testlib as lib
import tiny_checkpoint
from vit_jax import evaluate
from vit_jax.data import pipeline
from vit_jax.data import sources
from vit_jax.training import loop


def _scores(out: str):
  m = re.fullmatch(r'(\S+) (\S+): top1 ([\d.]+) \((\d+)/(\d+)\) top5 ([\d.]+) loss ([\d.]+) \((\d+) examples\)\n',
                   out)
  assert m, out
  return m.groups()


@pytest.mark.slow
def test_workdir_reproduces_the_runs_final_test_accuracy(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  final = loop.train_and_evaluate(lib.tiny_config(), workdir)  # its final_metrics.json holds the same numbers
  capsys.readouterr()
  assert evaluate.main(['--checkpoint', workdir]) == 0
  dataset, split, _, correct, count, top5, loss, examples = _scores(capsys.readouterr().out)
  assert (dataset, split, count, examples) == ('digits', 'test', '297', '297')  # every test digit once
  assert int(correct) / int(count) == final['val/top1']
  assert float(top5) == pytest.approx(final['val/top5'], abs=1e-6)
  assert float(loss) == pytest.approx(final['val/loss'], abs=1e-5)
  # The README's form, dataset and split named: the same numbers.
  assert evaluate.main(['--checkpoint', workdir, '--dataset', 'digits', '--split', 'test']) == 0
  assert _scores(capsys.readouterr().out)[3] == correct


@pytest.mark.slow
def test_npz_scores_every_example_once_as_computed_by_hand(tmp_path, capsys):
  path, model, params = tiny_checkpoint.save_checkpoint(str(tmp_path), num_classes=10)
  argv = ['--checkpoint', path, '--model', tiny_checkpoint.MODEL, '--dataset', 'digits', '--split', 'test[:50]',
          '--batch_size', '16']
  assert evaluate.main(argv) == 0
  _, _, top1, correct, count, _, _, _ = _scores(capsys.readouterr().out)
  labels = [r['label'] for r in sources.digits('test[:50]').records]
  preds = {}
  for batch in pipeline.make_eval_iterator('digits', {'crop': tiny_checkpoint.SIZE, 'test': 'test[:50]'},
                                           global_batch=64, with_ids=True):
    logits = np.asarray(model.apply({'params': params}, batch['image'], train=False))
    preds.update({int(i): int(c) for i, m, c in zip(batch['id'], batch['mask'], logits.argmax(-1)) if m})
  assert sorted(preds) == list(range(50)) and count == '50'
  assert int(correct) == sum(preds[i] == labels[i] for i in range(50))
  assert 0 < int(correct) < 50  # a random head: neither nothing nor everything right


@pytest.mark.slow
def test_user_errors_are_one_line(tmp_path, capsys):
  path, _, _ = tiny_checkpoint.save_checkpoint(str(tmp_path), num_classes=5)
  from vit_jax.tools import inference  # pylint: disable=g-import-not-at-top
  assert inference.run_cli(evaluate.main, ['--checkpoint', path, '--dataset', 'digits']) == 2
  assert 'Pass --model' in capsys.readouterr().err
  argv = ['--checkpoint', path, '--model', tiny_checkpoint.MODEL, '--dataset', 'digits', '--batch_size', '16']
  assert inference.run_cli(evaluate.main, argv) == 2
  err = capsys.readouterr().err
  assert "'digits' has 10 classes but the model 5" in err and err.count('\n') == 1
