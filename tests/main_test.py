"""Entry point and config validation: every user mistake is one line naming the key and the fix."""
import subprocess
import sys

import ml_collections
import pytest

import loop_testlib as lib
from vit_jax.training import config_checks


def _error(**overrides) -> str:
  config = lib.tiny_config(**overrides)
  with pytest.raises(config_checks.ConfigError) as info:
    config_checks.validate(config, num_devices=8)
  message = str(info.value)
  assert '\n' not in message
  return message


def test_batch_not_divisible_by_devices():
  assert _error(batch=12) == ('config.batch=12 is not divisible by the 8 devices; use a multiple of 8, e.g. 8.')


def test_batch_eval_not_divisible_by_devices():
  assert 'config.batch_eval=300 is not divisible by the 8 devices' in _error(batch_eval=300)


def test_image_size_not_divisible_by_patch():
  message = _error(model__patch_size=3)
  assert message.startswith('Image size 8 (config.pp.crop) is not divisible by the patch size 3')
  assert 'config.model.patch_size' in message


def test_hybrid_patch_counts_the_resnet_root_downsampling():
  message = _error(model_name='R+ViT-Ti_16', model__patch_size=1, pp__crop=10)
  assert 'patch size 4' in message


def test_resnet_stage_override_counts_in_the_patch():
  message = _error(model_name='R+ViT-Ti_16', model__patch_size=1, model__resnet_num_layers=(1, 1), pp__crop=12)
  assert 'patch size 8' in message


def test_missing_dataset_names_the_key():
  message = _error(dataset='/nonexistent/images')
  assert message.startswith("config.dataset='/nonexistent/images' cannot be loaded:")


def test_wrong_type_names_the_key():
  # Flags and typed ConfigDicts reject this early; a config built without type safety reaches validation.
  config = ml_collections.ConfigDict(lib.tiny_config().to_dict(), type_safe=False)
  config.total_steps = 10.5
  with pytest.raises(config_checks.ConfigError, match=r'config.total_steps must be an int, got 10.5'):
    config_checks.validate(config, num_devices=8)


def test_unknown_enum_value_lists_the_choices():
  assert "config.decay_type='cosin' is not one of 'cosine', 'linear', 'rsqrt', 'constant'" in _error(
      decay_type='cosin')


def test_accum_steps_must_divide_the_per_device_batch():
  assert 'config.accum_steps=3' in _error(accum_steps=3)


def test_missing_resume_path():
  assert _error(resume='/nonexistent/run').startswith("config.resume='/nonexistent/run' does not exist")


def test_unknown_model_name():
  assert _error(model_name='ViT-Q_16').startswith("config.model_name='ViT-Q_16': Unknown model")


def test_nearest_key():
  assert config_checks.nearest('btach', ['batch', 'batch_eval', 'seed']) == 'batch'


def _main(*args):
  return subprocess.run([sys.executable, '-m', 'vit_jax.main', '--config=configs/default.py',
                         '--workdir=/tmp/unused', *args], cwd=lib.REPO, env=lib.env(), capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.mark.parametrize('flag,expected', [
    ('--config.btach=3', 'Config error: Unknown config key config.btach: did you mean config.batch?'),
    ('--config.model.hiden_size=3',
     'Config error: Unknown config key config.model.hiden_size: did you mean config.model.hidden_size?'),
    ('--config.batch=abc', "Config error: Bad value for config.batch='abc': expects a int like 128;"),
    ('--config.batch=12', 'Config error: config.batch=12 is not divisible by the 8 devices'),
    ("--config.fewshot.datasets=(('digits', 'train'),)",  # the README's flag form, one field short
     "Config error: config.fewshot.datasets entry ('digits', 'train') is not a (dataset, train split, test split)"),
])
def test_main_prints_one_line_and_exits_2_without_traceback(flag, expected):
  result = _main(flag)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('Config error')]
  assert len(lines) == 1 and lines[0].startswith(expected), result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
