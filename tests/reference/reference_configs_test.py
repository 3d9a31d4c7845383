"""google-research/vision_transformer's config files through our config validation and `python -m vit_jax.main`:
its keys mapped (vit_jax/configs/reference_compat.py), its nested config.model accepted, the unmappable one line."""
import json
import os
import subprocess
import sys

import pytest

import augreg_style_config
import reference_testlib
from vit_jax.configs import augreg
from vit_jax.configs import common
from vit_jax.configs import reference_compat
from vit_jax.configs import vit
from vit_jax.models import build
from vit_jax.training import config_checks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _error(config) -> str:
  with pytest.raises(config_checks.ConfigError) as info:
    config_checks.validate(config, num_devices=8, check_data=False)
  assert '\n' not in str(info.value)
  return str(info.value)


def test_vit_style_config_becomes_the_finetune_preset(tmp_path):
  """vit.py:b16,cifar10 -> configs/finetune.py:cifar10's recipe, model and preprocessing (base_lr 0.01 as set)."""
  sys.path.insert(0, REPO)
  from configs import finetune  # pylint: disable=g-import-not-at-top
  open(tmp_path / 'ViT-B_16.npz', 'wb').close()  # only its existence is checked here
  config = vit.get_config('b16,cifar10')
  config.pretrained_dir = str(tmp_path)
  assert reference_compat.adopt(config)
  ours = finetune.get_config('cifar10')
  assert config.model_init == str(tmp_path / 'ViT-B_16.npz') and config.base_lr == 0.01
  for key in ('dataset', 'total_steps', 'warmup_steps', 'decay_type', 'grad_norm_clip', 'batch', 'batch_eval',
              'model_name', 'loss', 'optim.optimizer', 'optim.momentum', 'optim.weight_decay', 'optim.nesterov',
              'pp.train', 'pp.test', 'pp.crop', 'pp.train_crop', 'pp.eval_crop', 'pp.resize'):
    assert config_checks._get(config, key) == config_checks._get(ours, key), key  # pylint: disable=protected-access
  assert config.optim.mu_dtype == 'bfloat16'  # the reference's optim_dtype default
  assert build.build_model(config.model_name, config.model, 10) == build.build_model(ours.model_name, ours.model, 10)
  assert not [k for k in reference_compat.REFERENCE_KEYS if config[k] is not None]
  assert not reference_compat.adopt(config)  # now ours: a second pass changes nothing


def test_our_configs_are_left_alone():
  config = common.get_config()
  before = config.to_dict()
  assert not reference_compat.adopt(config)
  assert config.to_dict() == before


def test_with_dataset_and_presets():
  config = common.with_dataset(common.get_config(), 'imagenet2012')
  assert (config.dataset, config.total_steps, config.pp.train, config.pp.test, config.pp.crop) == (
      'imagenet2012', 20_000, 'train[:99%]', 'validation', 384)
  assert set(common.DATASET_PRESETS) == {'cifar10', 'cifar100', 'imagenet2012'}


def test_augreg_bare_model_name_picks_the_best_i21k_checkpoint_of_the_index(tmp_path):
  (tmp_path / 'index.csv').write_text(
      'name,ds,final_val,filename\n'
      'Ti/16,i21k,0.40,Ti_16-i21k-a\n'
      'Ti/16,i21k,0.45,Ti_16-i21k-b\n'
      'Ti/16,i1k,0.90,Ti_16-i1k-c\n'
      'S/16,i21k,0.99,S_16-i21k-d\n')
  open(tmp_path / 'Ti_16-i21k-b.npz', 'wb').close()
  config = augreg.get_config('Ti_16')
  config.pretrained_dir, config.dataset = str(tmp_path), 'digits'
  reference_compat.adopt(config)
  assert config.model_init == str(tmp_path / 'Ti_16-i21k-b.npz')
  assert (config.model_name, config.model.dropout_rate, config.pp.resize, config.pp.crop) == (
      'ViT-Ti_16', 0., 448, 384)


def test_model_init_given_wins_over_pretrained_dir(tmp_path):
  config = augreg_style_config.get_config('testing-tiny')
  config.dataset, config.model_init = 'digits', str(tmp_path / 'mine.npz')
  reference_compat.adopt(config)
  assert config.model_init == str(tmp_path / 'mine.npz') and config.pretrained_dir is None


@pytest.mark.parametrize('edit, message', [
    (lambda c: setattr(c.model, 'name', 'x'), 'config.model.name has no counterpart here'),
    (lambda c: setattr(c, 'model_type', 'Mixer'), "config.model_type='Mixer': vit_jax has no MLP-Mixer"),
    (lambda c: setattr(c, 'trainer', 'inference_time'), 'scripts/benchmark.py'),
    (lambda c: setattr(c, 'train', 'inference_time'), 'is not a training run'),  # its inference_time.py's key
    (lambda c: setattr(c, 'pretrained_dir', '/nonexistent'), "config.pretrained_dir='/nonexistent': "
     '/nonexistent/testing-tiny.npz does not exist'),
    (lambda c: setattr(c, 'dataset', ''), 'config.dataset is empty'),
    (lambda c: c.model.update(dict(resnet=dict(num_layers=(1,), width_factor=2))),
     'only the number of units per stage can change here'),
])
@pytest.mark.slow
def test_what_cannot_be_mapped_is_one_line(tmp_path, edit, message):
  reference_testlib.testing_npz(tmp_path, 'testing-tiny')
  config = augreg_style_config.get_config('testing-tiny')
  config.pretrained_dir, config.dataset = str(tmp_path), 'digits'
  edit(config)
  assert message in _error(config)


@pytest.mark.slow
def test_vit_style_file_through_main(tmp_path):
  """vit_jax/configs/vit.py (the reference's call style) fine-tunes a save_npz checkpoint on a local folder."""
  folder = reference_testlib.image_folder(tmp_path / 'images')
  reference_testlib.testing_npz(tmp_path, 'testing')
  workdir = tmp_path / 'work'
  cmd = [sys.executable, '-m', 'vit_jax.main', '--config=vit_jax/configs/vit.py:testing,cifar10',
         f'--workdir={workdir}', f'--config.pretrained_dir={tmp_path}', f'--config.dataset={folder}',
         '--config.pp.train=train', '--config.pp.test=test', '--config.pp.crop=32', '--config.pp.resize=36',
         '--config.total_steps=2', '--config.warmup_steps=1', '--config.batch=8', '--config.batch_eval=8',
         '--config.tensorboard=False']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'Initialised the params from {tmp_path}/testing.npz.' in out.stdout
  assert json.loads((workdir / 'final_metrics.json').read_text())['step'] == 2
  written = json.loads((workdir / 'config.json').read_text())
  assert (written['model_name'], written['model']['patch_size'], written['optim']['optimizer']) == (
      'testing', 16, 'sgd')


@pytest.mark.slow
def test_augreg_style_file_through_main(tmp_path):
  """A file written as augreg.py is, with its key names (optim_dtype, shuffle_buffer, accum_steps, ...), and a
  nested config.model: trains from the named checkpoint, logs the key it ignores, writes our keys."""
  folder = reference_testlib.image_folder(tmp_path / 'images')
  reference_testlib.testing_npz(tmp_path, 'testing-tiny')
  workdir = tmp_path / 'work'
  cmd = [sys.executable, '-m', 'vit_jax.main', '--config=tests/reference/augreg_style_config.py:testing-tiny',
         f'--workdir={workdir}', f'--config.pretrained_dir={tmp_path}', f'--config.dataset={folder}',
         '--config.shuffle_buffer=1000']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f'Initialised the params from {tmp_path}/testing-tiny.npz.' in out.stdout
  assert 'config.shuffle_buffer=1000 is ignored: examples are read in a fresh random order' in out.stderr
  metrics = json.loads((workdir / 'final_metrics.json').read_text())
  assert metrics['step'] == 3 and 0 <= metrics['val/top1'] <= 1
  written = json.loads((workdir / 'config.json').read_text())
  assert written['optim']['mu_dtype'] == 'float32' and written['accum_steps'] == 2
  assert written['model_init'] == f'{tmp_path}/testing-tiny.npz' and written['pretrained_dir'] is None


@pytest.mark.slow
def test_unmappable_config_exits_2_in_one_line(tmp_path):
  """A reference config naming a checkpoint that is not there: one line and exit 2 from main, no traceback."""
  cmd = [sys.executable, '-m', 'vit_jax.main', '--config=tests/reference/augreg_style_config.py:testing-tiny',
         f'--workdir={tmp_path}', f'--config.pretrained_dir={tmp_path}', '--config.dataset=digits']
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      f"Config error: config.pretrained_dir='{tmp_path}': {tmp_path}/testing-tiny.npz does not exist; download it "
      '(gs://vit_models/...) or point --config.pretrained_dir at its folder.')
  assert 'Traceback' not in out.stderr
