"""Every preset: its recipe pinned to the papers, a docstring with command/hardware/time/expected, and a tiny run."""
import glob
import os

import numpy as np
import pytest

import loop_testlib as lib
from vit_jax.models import registry
from vit_jax.training import config_checks
from vit_jax.training import loop

PRESETS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(lib.REPO, 'configs', '*.py'))
                 if os.path.basename(p) != '__init__.py')
FINETUNE_ARGS = ('cifar10', 'cifar100', 'oxford_iiit_pet', 'oxford_flowers102', 'imagenet2012')
# The fine-tuning datasets differ only in split names, step counts and lr: one of them runs, all are validated.
# Distillation presets need a trained teacher: tests/training/distill_test.py runs that objective on a tiny model.
DISTILL = {'distill_default', 'deit_b16_i1k_distill'}
CASES = [(p, None) for p in PRESETS if p != 'finetune' and p not in DISTILL] + [('finetune', 'cifar10')]


def test_the_expected_presets_exist():
  assert set(PRESETS) >= {'default', 'vit_s16_i21k', 'vit_b16_i21k', 'vit_l16_i21k', 'vit_h14_i21k',
                          'vit_b16_i1k_augreg', 'finetune'}


@pytest.mark.parametrize('name', PRESETS)
def test_docstring_gives_command_hardware_time_and_expected_metric(name):
  with open(os.path.join(lib.REPO, 'configs', f'{name}.py')) as f:
    doc = f.read().split('"""')[1]
  assert f'python -m vit_jax.main --config=configs/{name}.py' in doc
  for field in ('Command:', 'Hardware:', 'Time:', 'Expected:'):
    assert field in doc, (name, field)


# Each preset's recipe, written from its source (not read back from our code). Shared by the four ImageNet-21k rows:
# the ViT paper (Dosovitskiy et al. 2021), table 3 and appendix B.1: Adam b1 0.9 b2 0.999, batch 4096, 10k warmup
# steps, "For ImageNet we found it beneficial to additionally apply gradient clipping at global norm 1" (ambiguous
# whether this covers ImageNet-21k; the presets clip), 224 px, rows 'ViT-B/{16,32} ImageNet-21k' and
# 'ViT-L/{16,32} ImageNet-21k': lr 1e-3, linear decay, weight decay 0.03, dropout 0.1, 90 epochs (L: '30/90', 90
# taken) of fall11 ImageNet-21k (14,197,122 images); the pre-training head has one hidden (pre-logits) layer
# (section 3.1), as wide as the model in the released checkpoints. The loss (sigmoid, not in the paper) is
# big_vision configs/vit_i21k.py's (loss='sigmoid_xent').
_I21K = dict(base_lr=1e-3, weight_decay=0.03, batch=4096, total_steps=90 * 14_197_122 // 4096, warmup_steps=10_000,
             decay_type='linear', dropout=0.1, attention_dropout=0., stochastic_depth=0., randaug=None, mixup=0.,
             label_smoothing=0., crop=224, optimizer='adam', b1=0.9, b2=0.999, grad_norm_clip=1.0,
             loss='sigmoid_xent')
RECIPES = {
    'vit_b16_i21k': dict(_I21K, representation_size=768),    # table 3, ViT-B ImageNet-21k row
    'vit_l16_i21k': dict(_I21K, representation_size=1024),   # table 3, ViT-L ImageNet-21k row (90 of '30/90')
    # No source: the paper trains H/14 on JFT only and has no S/16. The presets apply the L and B ImageNet-21k rows
    # unchanged and their docstrings say so; these rows pin exactly that.
    'vit_h14_i21k': dict(_I21K, representation_size=1280),
    'vit_s16_i21k': dict(_I21K, representation_size=384),
    # big_vision configs/vit_i1k.py, B/16 -> aug 'medium2': randaug(2,15), mixup p=0.5 (the Beta concentration),
    # batch 4096, 300 epochs of train[:99%] (1,268,355 images), lr 1e-3, wd 1e-4 in big_vision's convention (not
    # scaled by the base lr) = 0.1 in ours (scaled by lr(step), optax.adamw's), 10k warmup, cosine, grad clip 1,
    # scale_by_adam (defaults 0.9/0.999), rep_size=True (pre-logits 768), pool 'tok', softmax_xent, 224 px.
    # Dropout and stochastic depth 0.1: the AugReg ImageNet-1k checkpoints' names ('..._do_0.1-sd_0.1'); the
    # big_vision config sets neither (ambiguous; the docstring says so).
    'vit_b16_i1k_augreg': dict(
        base_lr=1e-3, weight_decay=0.1, batch=4096, total_steps=300 * 1_268_355 // 4096, warmup_steps=10_000,
        decay_type='cosine', dropout=0.1, attention_dropout=0., stochastic_depth=0.1, randaug=(2, 15),
        randaug_variant='tf', mixup=0.5, label_smoothing=0., representation_size=768, crop=224, optimizer='adam',
        b1=0.9, b2=0.999, grad_norm_clip=1.0, loss='softmax_xent'),
    # google-research/vision_transformer vit_jax/configs/common.py (+ DATASET_PRESETS['cifar10']) and its
    # models.py ViT-B_16: batch 512, base_lr 0.03, warmup 500, cosine, grad clip 1, 10k steps, crop 384, SGD with
    # momentum 0.9 and no weight decay (train.py), dropout 0, no pre-logits (representation_size None).
    'finetune:cifar10': dict(
        base_lr=0.03, weight_decay=0., batch=512, total_steps=10_000, warmup_steps=500, decay_type='cosine',
        dropout=0., attention_dropout=0., stochastic_depth=0., randaug=None, mixup=0., label_smoothing=0.,
        representation_size=None, crop=384, optimizer='sgd', momentum=0.9, grad_norm_clip=1.0,
        loss='softmax_xent'),
    # MAE (He et al. 2022) appendix A.1, ViT-B and ViT-L alike: batch 4096, 1600 epochs of the 1,281,167 ImageNet-1k
    # training images, 40 warmup epochs, cosine, AdamW betas (0.9, 0.95), weight decay 0.05, lr 1.5e-4 * 4096/256,
    # RandomResizedCrop + flip only, no dropout, no clipping.
    **{name: dict(base_lr=1.5e-4 * 4096 / 256, weight_decay=0.05, batch=4096,
                  total_steps=round(1600 * 1_281_167 / 4096), warmup_steps=round(40 * 1_281_167 / 4096),
                  decay_type='cosine', dropout=0., stochastic_depth=0.,
                  randaug=None, mixup=0., label_smoothing=0., crop=224, optimizer='adamw', b1=0.9, b2=0.95,
                  grad_norm_clip=0.) for name in ('mae_vit_b16_i1k', 'mae_vit_l16_i1k')},
    # MAE appendix A.2 (table 9) with the MAE repository's FINETUNE.md per-model values: batch 1024, 5 warmup
    # epochs, cosine, AdamW (0.9, 0.999), wd 0.05, RandAugment m9 (2 ops, timm's increasing), mixup 0.8, label
    # smoothing 0.1; B: 100 epochs, base lr 5e-4, drop path 0.1; L: 50 epochs, base lr 1e-3, drop path 0.2.
    'mae_finetune_i1k': dict(
        base_lr=5e-4 * 1024 / 256, weight_decay=0.05, batch=1024, total_steps=round(100 * 1_281_167 / 1024),
        warmup_steps=round(5 * 1_281_167 / 1024), decay_type='cosine', dropout=0., stochastic_depth=0.1,
        randaug=(2, 9), randaug_variant='increasing', mixup=0.8, label_smoothing=0.1, crop=224, optimizer='adamw',
        b1=0.9, b2=0.999, grad_norm_clip=0.),
    'mae_finetune_i1k:l16': dict(
        base_lr=1e-3 * 1024 / 256, total_steps=round(50 * 1_281_167 / 1024), stochastic_depth=0.2),
    # DeiT (Touvron et al. 2021) table 9: AdamW, lr 5e-4 x 1024/512, wd 0.05, 300 epochs of the 1,281,167 train
    # images at batch 1024, 5 warmup epochs, cosine, no clipping, label smoothing 0.1, dropout 0, stochastic depth
    # 0.1, rand-m9 (timm's -inc1 levels, 2 layers), mixup 0.8, no pre-logits, 224 px.
    'deit_b16_i1k_distill': dict(
        base_lr=1e-3, weight_decay=0.05, batch=1024, total_steps=300 * 1_281_167 // 1024,
        warmup_steps=5 * 1_281_167 // 1024, decay_type='cosine', dropout=0., attention_dropout=0.,
        stochastic_depth=0.1, randaug=(2, 9), randaug_variant='increasing', mixup=0.8, label_smoothing=0.1,
        representation_size=None, crop=224, optimizer='adamw', b1=0.9, b2=0.999, grad_norm_clip=0.,
        loss='softmax_xent'),
}
# 'default' and 'mae_digits' (digits) are this repository's own recipes, with no paper behind them: their
# docstrings give their numbers; 'distill_default' is the default's recipe at half the width, distilled from it.
OWN = ('default', 'mae_digits', 'distill_default')


def _recipe(config, keys):
  """The recipe numbers of a loaded preset, with the model registry's defaults filled in where it leaves them."""
  model = registry.get_config(config.model_name)
  transformer = model['transformer']
  pick = lambda v, default: default if v is None else v
  rep = pick(config.model.representation_size, model.get('representation_size'))
  values = {
      'base_lr': config.base_lr, 'weight_decay': config.optim.weight_decay, 'batch': config.batch,
      'total_steps': config.total_steps, 'warmup_steps': config.warmup_steps, 'decay_type': config.decay_type,
      'dropout': pick(config.model.dropout_rate, transformer['dropout_rate']),
      'attention_dropout': pick(config.model.attention_dropout_rate, transformer['attention_dropout_rate']),
      'stochastic_depth': config.model.stochastic_depth,
      'randaug': None if config.pp.randaug is None else tuple(config.pp.randaug),
      'randaug_variant': pick(config.pp.randaug_variant, 'tf'), 'mixup': pick(config.pp.mixup, 0.),
      'label_smoothing': pick(config.pp.label_smoothing, 0.), 'representation_size': rep or None,
      'crop': config.pp.crop, 'optimizer': config.optim.optimizer, 'b1': config.optim.b1, 'b2': config.optim.b2,
      'momentum': config.optim.momentum, 'grad_norm_clip': config.grad_norm_clip, 'loss': config.loss}
  return {k: values[k] for k in keys}


def test_every_preset_but_default_has_a_recipe_row():
  assert set(RECIPES) == ({p for p in PRESETS if p not in OWN + ('finetune',)}
                          | {'finetune:cifar10', 'mae_finetune_i1k:l16'})


@pytest.mark.parametrize('key', sorted(RECIPES))
def test_preset_recipe_matches_its_source(key):
  name, _, arg = key.partition(':')
  want = RECIPES[key]
  got = _recipe(lib.load_config(name, arg or None), want)
  assert got == want, {k: (got[k], v) for k, v in want.items() if got[k] != v}


@pytest.mark.parametrize('name', sorted(p for p in PRESETS if p not in OWN))
def test_docstring_states_the_recipe_and_its_departures(name):
  with open(os.path.join(lib.REPO, 'configs', f'{name}.py')) as f:
    doc = f.read().split('"""')[1]
  assert 'Recipe:' in doc and ('Departures:' in doc or name == 'finetune'), name
  if name.endswith('_i21k'):  # The dropout that used to come silently from the registry is stated.
    assert 'dropout 0.1' in doc


def _shrink(config):
  """The preset with a tiny model on the embedded digits: its recipe (optimizer, loss, augmentation, ...) kept."""
  overrides = {
      'dataset': 'digits', 'pp.train': 'train', 'pp.test': 'test', 'pp.crop': 8, 'pp.resize': 10,
      'model.hidden_size': 16, 'model.num_layers': 1, 'model.num_heads': 2, 'model.mlp_dim': 32,
      'model.patch_size': 4, 'batch': 16, 'batch_eval': 304, 'total_steps': 24, 'warmup_steps': 2,
      'accum_steps': 1, 'model_init': None, 'tensorboard': False, 'eval_every': 24, 'checkpoint_every': 24,
      'progress_every': 1}
  if 'resnet' in registry.get_config(config.model_name):  # the hybrid root downsamples 4x: 8 px -> 2x2
    overrides['model.patch_size'] = 1
  if config.model.representation_size:
    overrides['model.representation_size'] = 8
  if config.objective == 'mae':  # the paper's 8 x 512 decoder shrunk like the encoder
    overrides.update({'model.decoder_num_layers': 1, 'model.decoder_hidden_size': 16, 'model.decoder_num_heads': 2})
  if config.optim.optimizer != 'sgd':  # Adam's lr 1e-3 barely moves a 16-wide model in 24 steps; SGD keeps 0.03.
    overrides['base_lr'] = 1e-2
  for name in config.evals:  # the preset's extra evaluators, on the same digits test split as val/
    overrides[f'evals.{name}.dataset'] = 'digits'
    overrides[f'evals.{name}.split'] = 'test'
  return lib.apply(config, overrides)


# Measured: after 96 steps (even at lr 3e-2 or without RandAugment) the tiny AugReg run stays at log 10 on the
# held-out digits (2.302 at 8 px: mixup 0.5, dropout and stochastic depth 0.1 on a 1-layer, 16-wide model), so its
# run checks the exact initial loss only; its recipe is pinned by RECIPES and RandAugment by preprocess_test.py.
NO_LEARNING_CHECK = {'vit_b16_i1k_augreg'}


@pytest.mark.slow
@pytest.mark.parametrize('name,arg', CASES)
def test_preset_tiny_run_starts_at_the_known_loss_and_learns(name, arg, tmp_path):
  config = lib.load_config(name, arg)
  workdir = str(tmp_path)
  metrics = loop.train_and_evaluate(_shrink(config), workdir)
  assert metrics['step'] == 24
  losses = lib.train_losses(workdir)
  assert sorted(losses) == list(range(1, 25))
  if config.objective == 'mae':  # no labels and no head: the held-out reconstruction loss falls below the first
    assert metrics['val/loss'] < losses[1] and 'val/top1' not in metrics, (metrics, losses[1])
    return
  # A zero head gives every class logit its bias b (0 for softmax): the first loss is log 10 for softmax, and
  # softplus(-b) + 9 softplus(b) for the summed sigmoid loss, whatever mixup did to the (sum-1) targets.
  b = config.model.head_bias_init
  softplus = lambda x: float(np.logaddexp(0., x))
  initial = np.log(10.) if config.loss == 'softmax_xent' else softplus(-b) + 9 * softplus(b)
  assert losses[1] == pytest.approx(initial, rel=1e-5)
  # 24 steps of the recipe (its optimizer, loss, augmentation and schedule) bring the held-out loss below it.
  if name not in NO_LEARNING_CHECK:
    assert metrics['val/loss'] < initial - 0.01, (metrics['val/loss'], initial)
  for e in config.evals:  # the same split and preprocessing as val/: the same numbers
    assert metrics[f'{e}/top1'] == metrics['val/top1'] and metrics[f'{e}/loss'] == metrics['val/loss'], e


@pytest.mark.parametrize('arg', FINETUNE_ARGS)
def test_every_finetune_dataset_validates(arg):
  config = lib.load_config('finetune', arg)
  assert config.dataset == arg and config.pp.crop == 384 and config.optim.optimizer == 'sgd'
  config_checks.validate(lib.apply(config, {'model_init': None}), num_devices=8, check_data=False)


def test_unknown_finetune_dataset_is_one_line():
  with pytest.raises(ValueError, match='Unknown fine-tuning dataset'):
    lib.load_config('finetune', 'mnist')


@pytest.mark.parametrize('name', [p for p in PRESETS if p.endswith('_i21k')])
def test_i21k_preset_reads_the_extracted_release_and_holds_out_one_percent(name, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for i, wnid in enumerate(('n00004475', 'n00005787', 'n00006024', 'n00006484')):
    os.makedirs(tmp_path / 'train' / wnid)
    for j in range(50):
      Image.new('RGB', (12, 10), (i * 60, j, 0)).save(tmp_path / 'train' / wnid / f'{wnid}_{j}.JPEG')
  config = lib.apply(lib.load_config(name), {'dataset': str(tmp_path), 'pp.crop': 112})
  info = config_checks.validate(config, num_devices=8)
  assert (info.num_classes, info.num_train, info.num_eval) == (4, 198, 2)
