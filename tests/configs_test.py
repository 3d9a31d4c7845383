"""Every preset: a docstring with command/hardware/time/expected, valid keys, and two real steps when shrunk."""
import glob
import os

import pytest

import loop_testlib as lib
from vit_jax.models import registry
from vit_jax.training import config_checks
from vit_jax.training import loop

PRESETS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(lib.REPO, 'configs', '*.py'))
                 if os.path.basename(p) not in ('__init__.py', 'common.py'))
FINETUNE_ARGS = ('cifar10', 'cifar100', 'oxford_iiit_pet', 'oxford_flowers102', 'imagenet2012')
# The fine-tuning datasets differ only in split names, step counts and lr: one of them runs, all are validated.
CASES = [(p, None) for p in PRESETS if p != 'finetune'] + [('finetune', 'cifar10')]


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


def _shrink(config):
  """The preset with a tiny model on synthetic data: its recipe (optimizer, loss, sharding, ...) kept."""
  overrides = {
      'dataset': 'synthetic', 'pp.crop': 16, 'pp.num_classes': 10, 'pp.num_train': 64, 'pp.num_eval': 8,
      'model.hidden_size': 16, 'model.num_layers': 2, 'model.num_heads': 2, 'model.mlp_dim': 32,
      'model.patch_size': 8, 'batch': 8, 'batch_eval': 8, 'total_steps': 2, 'warmup_steps': 1,
      'accum_steps': 1, 'model_init': None, 'tensorboard': False, 'eval_every': 2, 'checkpoint_every': 2,
      'progress_every': 1}
  if 'resnet' in registry.get_config(config.model_name):  # the hybrid root downsamples 4x: 16 px -> 4x4
    overrides['model.patch_size'] = 2
  if config.model.representation_size:
    overrides['model.representation_size'] = 8
  for name in config.evals:  # the preset's extra evaluators, on the synthetic data too
    overrides[f'evals.{name}.dataset'] = 'synthetic'
  return lib.apply(config, overrides)


@pytest.mark.parametrize('name,arg', CASES)
def test_preset_runs_two_steps_with_a_tiny_model(name, arg, tmp_path):
  config = lib.load_config(name, arg)
  workdir = str(tmp_path)
  metrics = loop.train_and_evaluate(_shrink(config), workdir)
  assert metrics['step'] == 2
  losses = lib.train_losses(workdir)
  assert sorted(losses) == [1, 2] and all(v == v for v in losses.values())  # finite, not NaN
  assert 0. <= metrics['val/top1'] <= 1.
  assert all(0. <= metrics[f'{e}/top1'] <= 1. for e in config.evals)


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
