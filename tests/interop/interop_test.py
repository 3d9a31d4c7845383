"""timm and transformers checkpoints through `vit_jax.interop.load`: per family, a tiny model with random weights,
saved by its own library, gives its library's logits (or pooled features) in float32, at its native resolution and
resampled to another; models we export load back into timm and transformers with our logits."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from vit_jax import interop
from vit_jax import models
from vit_jax.interop import save
from vit_jax.interop import timm as timm_map

TOL = 1e-5
TINY = dict(depth=2, embed_dim=32, num_heads=2)
# name -> (timm architecture, its kwargs beyond TINY, pixel statistics, native size, resampled size).
TIMM = {
    'vit_augreg': ('vit_base_patch16_224', dict(patch_size=8, num_classes=5), 'half', 32, 48),
    'deit': ('deit_small_patch16_224', dict(patch_size=8, num_classes=5), 'imagenet', 32, 48),
    'deit3': ('deit3_small_patch16_224', dict(patch_size=8, num_classes=5), 'imagenet', 32, 48),
    'dinov2': ('vit_small_patch14_dinov2', dict(patch_size=7, num_classes=0), 'imagenet', 28, 42),
    'dinov2_reg': ('vit_small_patch14_reg4_dinov2', dict(patch_size=7, num_classes=0), 'imagenet', 28, 42),
    'dinov2_swiglu': ('vit_giant_patch14_dinov2', dict(patch_size=7, num_classes=0), 'imagenet', 28, 42),
    'siglip': ('vit_base_patch16_siglip_224', dict(patch_size=8, num_classes=0), 'half', 32, 48),
    'clip': ('vit_base_patch16_clip_quickgelu_224', dict(patch_size=8, num_classes=6), 'clip', 32, 48),
    'gap_fc_norm': ('vit_betwixt_patch16_reg4_gap_256', dict(patch_size=8, num_classes=5), 'half', 32, 48),
}
_HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
# name -> (model class, config class, config, output, pixel statistics, native size, resampled size).
HF = {
    'hf_vit': ('ViTForImageClassification', 'ViTConfig', dict(_HF_TINY, intermediate_size=64, image_size=32,
                                                             patch_size=8, num_labels=5), 'logits', 'half', 32, 48),
    'hf_dinov2': ('Dinov2Model', 'Dinov2Config', dict(_HF_TINY, image_size=28, patch_size=7), 'pooler_output',
                  'imagenet', 28, 42),
    'hf_dinov2_reg_swiglu': ('Dinov2WithRegistersModel', 'Dinov2WithRegistersConfig',
                             dict(_HF_TINY, image_size=28, patch_size=7, num_register_tokens=2, use_swiglu_ffn=True),
                             'pooler_output', 'imagenet', 28, 42),
    'hf_siglip': ('SiglipVisionModel', 'SiglipVisionConfig', dict(_HF_TINY, intermediate_size=64, image_size=32,
                                                                   patch_size=8), 'pooler_output', 'half', 32, 48),
    'hf_clip': ('CLIPVisionModelWithProjection', 'CLIPVisionConfig',
                dict(_HF_TINY, intermediate_size=64, image_size=32, patch_size=8, projection_dim=16), 'image_embeds',
                'clip', 32, 48),
}

_OURS_TINY = dict(hidden_size=32, transformer=dict(num_layers=2, mlp_dim=64, num_heads=2))
# name -> (our model options, formats exported, pixel statistics of the torch side, output of the HF model).
EXPORTS = {
    'ours_vit': (dict(num_classes=5), ('timm', 'hf'), 'half', 'logits'),
    'ours_registers_layer_scale': (dict(num_classes=0, num_registers=2, layer_scale_init=0.1, mlp_activation='gelu',
                                        pixel_mean=timm_map.IMAGENET[0], pixel_std=timm_map.IMAGENET[1]),
                                   ('timm', 'hf'), 'imagenet', 'pooler_output'),
    'ours_map_qk_norm': (dict(num_classes=5, classifier='map', qk_norm=True), ('timm',), 'half', None),
    'ours_gap_fc_norm_pre_norm': (dict(num_classes=5, classifier='gap', fc_norm=True, pre_norm=True,
                                       mlp_activation='quick_gelu', num_registers=1), ('timm',), 'half', None),
}


def _random_params(model, size, seed=1):
  """Non-trivial float32 values for every leaf (kernels by fan-in, scales near 1, the rest small)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3)), train=False))
  rng = np.random.RandomState(seed)

  def draw(key, leaf):
    if key.endswith('/scale'):
      return (1 + 0.2 * rng.normal(size=leaf.shape)).astype(np.float32)
    if key.endswith('/kernel'):
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]) ** 0.5 * 4)).astype(np.float32)
    return (0.3 * rng.normal(size=leaf.shape)).astype(np.float32)
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(shapes)['params'], sep='/')
  return flax.traverse_util.unflatten_dict({k: draw(k, v) for k, v in flat.items()}, sep='/')


def _apply(model, params, images):
  return np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, images))


def _images(size, n=2, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _reference(tmp, timm_specs=(), hf_specs=(), exports=()):
  for module in ('torch', 'timm', 'transformers'):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f'{module} is not installed (pip install -r requirements-test.txt)')
  spec = {'out': str(tmp), 'timm': list(timm_specs), 'hf': list(hf_specs), 'exports': list(exports)}
  (tmp / 'spec.json').write_text(json.dumps(spec))
  script = pathlib.Path(__file__).parent / 'torch_reference.py'
  subprocess.run([sys.executable, str(script), str(tmp / 'spec.json')], check=True, timeout=600)


def _save_images(tmp, size, big):
  for s in (size, big):
    if not (tmp / f'images_{s}.npy').exists():
      np.save(tmp / f'images_{s}.npy', _images(s))
  return str(tmp / f'images_{size}.npy'), str(tmp / f'images_{big}.npy')


@pytest.fixture(scope='module')
def foreign(tmp_path_factory):
  """Every family saved by timm / transformers, with their outputs, from one torch subprocess."""
  tmp = tmp_path_factory.mktemp('interop')
  timm_specs, hf_specs = [], []
  for name, (arch, kwargs, stats, size, big) in TIMM.items():
    images, images_big = _save_images(tmp, size, big)
    timm_specs.append(dict(name=name, arch=arch, kwargs={**TINY, 'img_size': size, **kwargs}, stats=stats,
                           images=images, images_big=images_big, bare=name == 'dinov2_reg'))
  for name, (cls, config_cls, config, output, stats, size, big) in HF.items():
    images, images_big = _save_images(tmp, size, big)
    hf_specs.append(dict(name=name, cls=cls, config_cls=config_cls, config=config, output=output, stats=stats,
                         images=images, images_big=images_big))
  exports, ours = [], {}
  for name, (options, formats, stats, output) in EXPORTS.items():
    model = models.get_model('S/8', **_OURS_TINY, **options)
    params = _random_params(model, 32)
    ours[name] = _apply(model, params, _images(32))
    for fmt in formats:
      save.save(model, params, tmp / f'{name}_{fmt}', fmt)
      exports.append(dict(name=f'{name}_{fmt}_out', kind=fmt, folder=str(tmp / f'{name}_{fmt}'), stats=stats,
                          images=_save_images(tmp, 32, 48)[0], output=output))
  _reference(tmp, timm_specs, hf_specs, exports)
  return tmp, ours


def _ours(path, size, **kw):
  model, params, preprocess = interop.load(path, image_size=size, **kw)
  out = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, _images(size))
  return np.asarray(out), model, preprocess


def _check(ours, theirs, what):
  diff = np.abs(ours - theirs).max()
  print(f'{what}: max |diff| {diff:.3g} (max |output| {np.abs(theirs).max():.3g})')
  assert ours.shape == theirs.shape, what
  assert np.abs(theirs).max() > 0.1, what  # not a degenerate output
  assert diff <= TOL, what


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(TIMM))
def test_timm_family_logits_equal_timm(foreign, name):
  foreign = foreign[0]
  _, kwargs, _, size, big = TIMM[name]
  ours, model, _ = _ours(foreign / name, size)
  _check(ours, np.load(foreign / f'{name}.npy'), f'timm {name} {size}px')
  _check(_ours(foreign / name, big)[0], np.load(foreign / f'{name}_big.npy'), f'timm {name} {big}px')
  assert model.num_classes == kwargs['num_classes']


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(HF))
def test_hf_family_outputs_equal_transformers(foreign, name):
  foreign = foreign[0]
  size, big = HF[name][-2:]
  _check(_ours(foreign / name, size)[0], np.load(foreign / f'{name}.npy'), f'hf {name} {size}px')
  _check(_ours(foreign / name, big)[0], np.load(foreign / f'{name}_big.npy'), f'hf {name} {big}px')


@pytest.mark.slow
def test_bare_safetensors_with_arch_and_the_family_options(foreign):
  foreign = foreign[0]
  ours, model, preprocess = _ours(foreign / 'dinov2_reg.safetensors', 28, arch='vit_small_patch14_reg4_dinov2',
                                  model_args={'num_heads': 2})
  _check(ours, np.load(foreign / 'dinov2_reg.npy'), 'bare dinov2_reg')
  assert (model.num_registers, model.layer_scale_init is not None, model.mlp_activation) == (4, True, 'gelu')
  assert preprocess.mean == timm_map.IMAGENET[0] and model.pixel_mean == timm_map.IMAGENET[0]
  clip = interop.load(foreign / 'clip')[0]
  assert (clip.pre_norm, clip.mlp_activation, clip.norm_eps, clip.pixel_std) == (
      True, 'quick_gelu', 1e-5, timm_map.OPENAI_CLIP[1])
  gap = interop.load(foreign / 'gap_fc_norm')[0]
  assert (gap.classifier, gap.fc_norm, gap.num_registers) == ('gap', True, 4)


def test_unrepresentable_architectures_are_refused_in_one_line():
  sd = {'patch_embed.proj.weight': np.zeros((8, 3, 4, 4)), 'blocks.0.attn.qkv.weight': np.zeros((24, 8)),
        'blocks.0.attn.relative_position_bias_table': np.zeros((10, 2))}
  with pytest.raises(timm_map.UnsupportedError, match='relative position bias'):
    timm_map.describe(sd, 'vit_base_patch16_224')
  with pytest.raises(timm_map.UnsupportedError, match=r'^eva02_base_patch14_224: rotary position embeddings \(RoPE\)'):
    timm_map.describe(sd, 'eva02_base_patch14_224')


@pytest.mark.slow
def test_finetune_from_a_dinov2_registers_checkpoint_trains_the_digits(foreign, tmp_path, capsys):
  import tests.loop_testlib as lib  # pylint: disable=g-import-not-at-top
  from vit_jax.training import loop  # pylint: disable=g-import-not-at-top
  path = str(foreign[0] / 'dinov2_reg')
  workdir = tmp_path / 'finetune'
  # The user gives the head (digits' 10 classes) and the resolution (14 px: a 2x2 grid of 7 px patches, resampled
  # from the checkpoint's 4x4); the architecture comes from the checkpoint.
  # No mixup: the default's mixed targets make a 24-step loss curve too noisy to show the fall.
  config = lib.tiny_config(model_init=path, pp__crop=14, pp__resize=16, pp__mixup=0., total_steps=24,
                           base_lr=1e-2, warmup_steps=2, progress_every=4)
  final = loop.train_and_evaluate(config, str(workdir))
  assert f'Initialised the params from {path}.' in capsys.readouterr().out
  recorded = json.loads((workdir / 'config.json').read_text())['model']
  assert (recorded['patch_size'], recorded['hidden_size'], recorded['num_registers']) == (7, 32, 4)
  assert recorded['pixel_mean'] == list(timm_map.IMAGENET[0]) and recorded['layer_scale_init'] is not None
  losses = [r['train/loss'] for r in lib.read_metrics(str(workdir)) if 'train/loss' in r]
  # Random weights make poor features: 24 steps move the loss from ln(10) (zero head) by a few hundredths.
  assert losses[-1] < losses[0] - 0.02, losses
  assert np.isfinite(final['val/loss'])
  # Out again: the fine-tuned workdir exported for timm reads back (through timm's layout) with the workdir's logits.
  from vit_jax import export  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import inference  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'timm_out')
  assert export.main(['--workdir', str(workdir), '--format=timm', '--out', out]) == 0
  model, params, _ = inference.load_model(str(workdir))
  back, back_params, _ = interop.load(out)
  assert (back.num_registers, back.pixel_mean, back.num_classes) == (4, timm_map.IMAGENET[0], 10)
  np.testing.assert_allclose(_apply(back, back_params, _images(14)), _apply(model, params, _images(14)),
                             atol=TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(EXPORTS))
def test_exported_models_load_into_timm_and_transformers_with_our_logits(foreign, name):
  folder, ours = foreign
  for fmt in EXPORTS[name][1]:
    _check(np.load(folder / f'{name}_{fmt}_out.npy'), ours[name], f'export {name} -> {fmt}')
    back = _ours(folder / f'{name}_{fmt}', 32)[0]  # and back through our loader
    np.testing.assert_allclose(back, ours[name], atol=TOL, rtol=0)


def test_export_refuses_what_timm_and_transformers_cannot_compute(tmp_path):
  model = models.get_model('S/8', **_OURS_TINY, num_classes=5, parallel_block=True)
  with pytest.raises(ValueError, match='parallel blocks, which timm and transformers models lack'):
    save.save(model, _random_params(model, 16), tmp_path, 'timm')
  model = models.get_model('S/8', **_OURS_TINY, num_classes=5, classifier='map')
  with pytest.raises(ValueError, match="transformers' ViT and DINOv2 take class-token models"):
    save.save(model, _random_params(model, 16), tmp_path, 'hf')


@pytest.mark.slow
def test_the_tools_take_a_transformers_folder(foreign, tmp_path, capsys):
  import tests.tiny_checkpoint as tiny  # pylint: disable=g-import-not-at-top
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  from vit_jax.tools import inference  # pylint: disable=g-import-not-at-top
  folder = foreign[0] / 'hf_vit'
  model, params, size = inference.load_model(str(folder))
  assert size == 32
  _check(_apply(model, params, _images(32)), np.load(foreign[0] / 'hf_vit.npy'), 'inference.load_model hf_vit')
  img = tiny.write_image(str(tmp_path / 'a.jpg'))
  capsys.readouterr()
  assert inference.run_cli(predict.main, ['--checkpoint', str(folder), '--image', img, '--topk', '2']) == 0
  probs = np.asarray(jax.nn.softmax(_apply(model, params, inference.load_image(img, 32)[None])))[0]
  top = capsys.readouterr().out.strip().split('\n')[1].split()
  assert (top[1], float(top[0])) == (str(int(np.argmax(probs))), pytest.approx(probs.max(), abs=1e-4))


def test_preprocess_resizes_the_short_side_by_crop_pct_then_crops_the_centre():
  image = np.zeros((8, 16, 3), np.uint8)
  image[:, 6:10] = 255  # the central 8x4 band
  out = interop.Preprocess(size=(4, 4), crop_pct=0.5)(image)  # short side 4 / 0.5 = 8: no resize, central 4x4
  assert out.shape == (4, 4, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, np.ones((4, 4, 3), np.float32))


def test_model_init_errors_are_one_config_line(tmp_path):
  import tests.loop_testlib as lib  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from vit_jax.training import config_checks, loop  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'model.safetensors')
  save_file({'pos_embed': np.zeros((1, 5, 8), np.float32)}, path)
  with pytest.raises(config_checks.ConfigError, match=r'is a bare state dict: pass arch=<timm architecture name>'):
    loop.train_and_evaluate(lib.tiny_config(model_init=path), str(tmp_path / 'w'))
  with pytest.raises(config_checks.ConfigError, match='not a timm VisionTransformer state dict'):
    loop.train_and_evaluate(lib.tiny_config(model_init=path, model_init_arch='vit_base_patch16_224'),
                            str(tmp_path / 'w'))
