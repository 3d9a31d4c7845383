"""MAE on the embedded digits, end to end: pretrain (no labels), few-shot features vs random init, fine-tune.

  python scripts/mae_digits.py --workdir /tmp/mae_digits [--scratch] [--seed S] [--steps N]

Runs configs/mae_digits.py's two stages through the training loop (a finished stage is only re-evaluated), probes
the features of the same model at random init with the same few-shot evaluator, and prints one line per figure:
10-shot linear and kNN accuracy of the MAE features and of the random-init ones, the fine-tuned top-1, and with
`--scratch` the default preset (configs/default.py) from random init: the fine-tuning stage is that preset plus
layer-wise lr decay, so this is the baseline it must match. `--seed` sets every stage's config.seed; `--steps`
shortens the stages (a smoke run).
"""
import argparse
import importlib.util
import os
import sys
from typing import Any, Dict, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax.evaluation import fewshot  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.models import build  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.tools import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.training import loop  # pylint: disable=g-import-not-at-top,wrong-import-position


def _config(stage: str, steps: int = 0, seed: int = 0) -> Any:
  """configs/mae_digits.py:<stage> ('pretrain' | 'finetune'), or configs/default.py for stage 'default'."""
  name, args = ('default', ()) if stage == 'default' else ('mae_digits', (stage,))
  spec = importlib.util.spec_from_file_location(f'{name}_config', os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(*args)
  c.seed = seed
  if steps:
    c.total_steps, c.warmup_steps, c.eval_every, c.checkpoint_every = steps, 1, steps, steps
  return c


def fewshot_of(config: Any, params: Any = None) -> Dict[str, float]:
  """Few-shot and kNN accuracy of the pretraining model's features with `params` (None: its random init, seed
  `config.seed`), by the evaluator the loop runs."""
  model = build.build_model(config.model_name, config.model, 10)
  if params is None:
    size = config.pp.crop
    params = model.init(jax.random.PRNGKey(config.seed), jax.numpy.zeros((1, size, size, 3)), train=False)['params']
  f = config.fewshot
  (dataset, train, test), = config_checks.fewshot_datasets(config)
  evaluator = fewshot.FewShotEvaluator(model, dataset, config_checks.fewshot_pp(config), train_split=train,
                                       test_split=test, batch_size=f.batch, shots=f.shots, num_draws=f.num_draws,
                                       l2_reg=f.l2_reg, knn_k=f.knn_k, seed=config.seed)
  return evaluator.run(params)


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/mae_digits')
  parser.add_argument('--scratch', action='store_true',
                      help='also train the default preset from random init (the baseline)')
  parser.add_argument('--steps', type=int, default=0, help='steps of each stage (0: the preset\'s)')
  parser.add_argument('--seed', type=int, default=0, help='config.seed of every stage')
  args = parser.parse_args(argv)
  config = lambda stage: _config(stage, args.steps, args.seed)
  pretrain_dir = os.path.join(args.workdir, 'pretrain')
  pre = loop.train_and_evaluate(config('pretrain'), pretrain_dir)
  mae_features = fewshot_of(config('pretrain'), inference.load_params(pretrain_dir))  # decoder dropped
  rand = fewshot_of(config('pretrain'))
  finetune = config('finetune')
  finetune.model_init = pretrain_dir
  tuned = loop.train_and_evaluate(finetune, os.path.join(args.workdir, 'finetune'))
  print(f'MAE pretraining: reconstruction loss (val/loss) {pre["val/loss"]:.4f}')
  for key in sorted(rand):
    print(f'{key}: MAE features {mae_features[key]:.4f}, random init {rand[key]:.4f}')
  print(f'fine-tuned from MAE: top-1 {tuned["val/top1"]:.4f}')
  if args.scratch:
    scratch = loop.train_and_evaluate(config('default'), os.path.join(args.workdir, 'scratch'))
    print(f'default preset from random init: top-1 {scratch["val/top1"]:.4f}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
