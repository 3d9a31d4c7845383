"""Every `config.model` and `config.optim` key with a bad value stops in validation, in one line naming the range."""
import ml_collections
import pytest

import loop_testlib as lib
from vit_jax.configs import common
from vit_jax.training import config_checks

# One bad value per key and the allowed range its message must state, written here rather than read from the
# tables, so a loosened rule fails. Bool keys get a string: ml_collections casts 1 to True, not 'yes'.
BAD = {
    'model.patch_size': (0, 'None or an int >= 1'),
    'model.hidden_size': (-16, 'None or an int >= 1'),
    'model.num_layers': (0, 'None or an int >= 1'),
    'model.num_heads': (2.5, 'None or an int >= 1'),
    'model.mlp_dim': (0, 'None or an int >= 1'),
    'model.dropout_rate': (1.0, 'None or a number in [0, 1)'),
    'model.attention_dropout_rate': (-0.1, 'None or a number in [0, 1)'),
    'model.classifier': ('cls', "one of None, 'token', 'gap', 'map', 'unpooled', 'token_unpooled'"),
    'model.representation_size': (-1, 'None or an int >= 0'),
    'model.resnet_num_layers': ((3, 0), 'None or a non-empty tuple of ints >= 1'),
    'model.posemb': ('sincos', "one of 'learn', 'sincos2d'"),
    'model.head_bias_init': ('-10', 'a number'),
    'model.head_zeroinit': ('yes', 'True or False'),
    'model.stochastic_depth': (1.0, 'a number in [0, 1)'),
    'model.dtype': ('bf16', "one of 'float32', 'bfloat16', 'float16'"),
    'model.attention_impl': ('flash', "one of 'xla', 'dot_product', 'cudnn', 'auto'"),
    'model.scan': ('yes', 'True or False'),
    'model.remat_policy': ('dot', "one of 'none', 'full', 'dots', 'dots_no_batch'"),
    'model.num_registers': (-1, 'an int >= 0'),
    'model.layer_scale_init': (0., 'None or a number > 0'),
    'model.qk_norm': ('yes', 'True or False'),
    'model.parallel_block': ('yes', 'True or False'),
    'model.use_bias': ('yes', 'True or False'),
    'model.patch_dropout': (1.5, 'a number in [0, 1)'),
    'model.mup_base_width': (0, 'None or an int >= 1'),
    'model.mlp_activation': ('relu', "one of 'gelu_tanh', 'gelu', 'quick_gelu', 'swiglu'"),
    'model.norm_eps': (0., 'a number > 0'),
    'model.pre_norm': ('yes', 'True or False'),
    'model.fc_norm': ('yes', 'True or False'),
    'model.projection_dim': (0, 'None or an int >= 1'),
    'model.pixel_mean': ((0.5, 0.5), 'None or three numbers (r, g, b)'),
    'model.pixel_std': ((0.2, 0., 0.2), 'None or three positive numbers (r, g, b)'),
    'model.mask_ratio': (1.0, 'a number in (0, 1)'),
    'model.decoder_num_layers': (0, 'an int >= 1'),
    'model.decoder_hidden_size': (0, 'an int >= 1'),
    'model.decoder_num_heads': (0, 'an int >= 1'),
    'model.norm_pix_loss': ('yes', 'True or False'),
    'model.distill_token': ('yes', 'True or False'),
    'optim.optimizer': ('lamb', "one of 'adam', 'adamw', 'sgd', 'adafactor'"),
    'optim.weight_decay': (-0.1, 'a number >= 0'),
    'optim.b1': (1.0, 'None or a number in [0, 1)'),
    'optim.b2': (1.5, 'a number in [0, 1)'),
    'optim.eps': (-1e-8, 'a number >= 0'),
    'optim.momentum': (float('nan'), 'None or a number in [0, 1)'),
    'optim.nesterov': ('yes', 'True or False'),
    'optim.mu_dtype': ('bf16', "one of None, 'float32', 'bfloat16', 'float16'"),
    'optim.linear_end': (-1., 'a number >= 0'),
    'optim.rsqrt_timescale': (0, 'a number > 0'),
    'optim.adafactor_decay_rate': (0., 'a number > 0'),
    'optim.adafactor_b2_cap': (1.5, 'a number in (0, 1]'),
    'optim.adafactor_min_dim_to_factor': (0, 'an int >= 1'),
    'optim.lr_mults': ((('head/(', 10.),), 'a list of (regex, number) pairs'),
    'optim.freeze': ('embedding/.*', 'a list of regexes over param paths'),
    'optim.layer_decay': (1.5, 'None or a number in (0, 1]'),
}


def _section_keys(section: str):
  return {f'{section}.{k}' for k in common.get_config()[section]}


def test_every_model_and_optim_key_has_a_bad_value():
  assert set(BAD) == _section_keys('model') | _section_keys('optim')


def _error(overrides) -> str:
  # Without type safety, as a config built in Python or read back from JSON can be; flags are stricter still.
  config = ml_collections.ConfigDict(lib.tiny_config().to_dict(), type_safe=False)
  lib.apply(config, overrides)
  with pytest.raises(config_checks.ConfigError) as info:
    config_checks.validate(config, num_devices=8, check_data=False)
  message = str(info.value)
  assert '\n' not in message
  return message


@pytest.mark.parametrize('key', sorted(BAD))
def test_bad_value_names_the_key_and_its_range(key):
  value, allowed = BAD[key]
  message = _error({key: value})
  assert message.startswith(f'config.{key}={value!r} is out of range: it must be {allowed}'), message


@pytest.mark.parametrize('overrides,expected', [
    ({'model.hidden_size': 18, 'model.num_heads': 4},
     'config.model.hidden_size=18 is not divisible by config.model.num_heads=4'),
    ({'model.hidden_size': 18, 'model.num_heads': 3, 'model.posemb': 'sincos2d'},
     "config.model.posemb='sincos2d' needs config.model.hidden_size divisible by 4, got 18."),
    ({'model.hidden_size': 36, 'model.num_heads': 3, 'model.attention_impl': 'cudnn'},
     "config.model.attention_impl='cudnn' needs a head dim (hidden_size / num_heads) that is a multiple of 8, "
     'got 12'),
    ({'mesh.dcn.data': 0}, 'config.mesh.dcn='),
    ({'mesh.data': 3}, 'config.mesh='),
])
def test_keys_that_depend_on_each_other(overrides, expected):
  assert _error(overrides).startswith(expected)


def test_good_values_at_the_edges_pass():
  config = lib.tiny_config(model__patch_dropout=0., model__layer_scale_init=1e-6, model__classifier=None,
                           optim__b1=None, optim__momentum=0., optim__layer_decay=1.,
                           optim__lr_mults=(('head/.*', 10.),), optim__freeze=('embedding/.*',),
                           model__resnet_num_layers=(None,))
  assert config_checks.validate(config, num_devices=8, check_data=False) is None


@pytest.mark.parametrize('flag,expected', [
    ('--config.model.patch_dropout=1.5', 'config.model.patch_dropout=1.5 is out of range: it must be a number in '
                                         '[0, 1)'),
    ('--config.model.remat_policy=dot', "config.model.remat_policy='dot' is out of range: it must be one of 'none'"),
])
def test_main_stops_in_one_line_before_anything_starts(flag, expected, tmp_path):
  workdir = tmp_path / 'run'
  result = lib.run_main(str(workdir), {}, extra=(flag,), timeout=180)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith('Config error')]
  assert len(lines) == 1 and lines[0].startswith('Config error: ' + expected), result.stderr[-3000:]
  assert not workdir.exists()  # validation ran before the workdir, the data or any compilation
