"""google-research/vision_transformer's module API, called as its colabs call it, on a tiny image folder and a
tiny checkpoint: input_pipeline, utils, train (the pmap-style update and train_and_evaluate), checkpoint helpers,
inference_time, the module aliases and the model fields its callers pass."""
import inspect
import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import augreg_style_config
import reference_testlib
from vit_jax import checkpoint
from vit_jax import input_pipeline
from vit_jax import inference_time
from vit_jax import models
from vit_jax import models_resnet
from vit_jax import models_vit
from vit_jax import train
from vit_jax import utils
from vit_jax.configs import common as common_config
from vit_jax.configs import models as models_config


def _colab_config(folder):
  config = common_config.with_dataset(common_config.get_config(), 'cifar10')
  config.dataset = folder
  config.batch, config.batch_eval = 8, 8
  config.pp.train, config.pp.test, config.pp.crop, config.pp.resize = 'train', 'test', 32, 36
  return config


def test_colab_input_pipeline_cells(tmp_path):
  folder = reference_testlib.image_folder(tmp_path / 'images')
  config = _colab_config(folder)
  ds_train, ds_test = input_pipeline.get_datasets(config)
  info = input_pipeline.get_dataset_info(folder, 'train')
  assert (info['num_examples'], info['num_classes'], info['int2str'](1)) == (16, 2, 'dog')
  assert info['examples_glob'] == f'{folder}/train/*/*.jpg'
  batch = next(iter(ds_train.as_numpy_iterator()))
  devices = jax.local_device_count()
  assert batch['image'].shape == (devices, 8 // devices, 32, 32, 3) and batch['image'].dtype == np.float32
  assert -1 <= batch['image'].min() < batch['image'].max() <= 1
  np.testing.assert_array_equal(batch['label'].sum(-1), 1.)  # one-hot
  # 10 test images in batches of 8: one batch, the remainder dropped as there; every pass is a fresh one.
  test_batches = list(ds_test.as_numpy_iterator())
  assert len(test_batches) == 1 and len(list(ds_test)) == 1
  on_devices = list(input_pipeline.prefetch(ds_test, 2))
  assert len(on_devices) == 1 and len(on_devices[0]['image'].sharding.device_set) == devices
  np.testing.assert_array_equal(np.asarray(on_devices[0]['image']), test_batches[0]['image'])


@pytest.mark.slow
def test_colab_fine_tuning_cells(tmp_path):
  """load_pretrained -> replicate -> utils schedule + optax -> train.make_update_fn -> pmapped apply, against the
  same SGD step written out on one device."""
  folder = reference_testlib.image_folder(tmp_path / 'images')
  reference_testlib.testing_npz(tmp_path, 'testing')
  batch = next(iter(input_pipeline.get_data_from_directory(
      config=_colab_config(folder), directory=f'{folder}/train', mode='train').as_numpy_iterator()))
  model_config = models_config.get_testing_config()
  model_config.transformer.dropout_rate = 0.  # deterministic, to compare with the written-out step
  model = models.VisionTransformer(num_classes=2, **model_config)
  variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), batch['image'][0, :1], train=False),
                      backend='cpu')()
  params = checkpoint.load_pretrained(pretrained_path=str(tmp_path / 'testing.npz'),
                                      init_params=variables['params'], model_config=model_config)
  lr_fn = utils.create_learning_rate_schedule(10, 0.1, 'cosine', 2)
  tx = optax.chain(optax.clip_by_global_norm(1.), optax.sgd(learning_rate=lr_fn, momentum=0.9,
                                                            accumulator_dtype='bfloat16'))
  update_fn_repl = train.make_update_fn(apply_fn=model.apply, accum_steps=2, tx=tx)
  params_repl = flax.jax_utils.replicate(params)
  opt_state_repl = flax.jax_utils.replicate(tx.init(params))
  update_rng_repl = flax.jax_utils.replicate(jax.random.PRNGKey(0))

  images = batch['image'].reshape((-1, 32, 32, 3))
  labels = batch['label'].reshape((-1, 2))
  def loss(p):
    logp = jax.nn.log_softmax(model.apply({'params': p}, images, train=True))
    return -jnp.mean(jnp.sum(logp * labels, axis=1))
  want_loss, grads = jax.value_and_grad(loss)(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  want = optax.apply_updates(params, updates)

  params_repl, opt_state_repl, loss_repl, update_rng_repl = update_fn_repl(
      params_repl, opt_state_repl, batch, update_rng_repl)
  devices = jax.local_device_count()
  assert loss_repl.shape == (devices,) and update_rng_repl.shape[0] == devices
  np.testing.assert_allclose(loss_repl, want_loss, rtol=1e-5)
  for have, expected in zip(jax.tree.leaves(params_repl), jax.tree.leaves(want)):
    for replica in np.asarray(have):
      np.testing.assert_allclose(replica, expected, rtol=1e-5, atol=1e-6)
  vit_apply_repl = jax.pmap(lambda params, inputs: model.apply(dict(params=params), inputs, train=False))
  assert vit_apply_repl(params_repl, batch['image']).shape == (devices, 8 // devices, 2)


@pytest.mark.slow
def test_utils_schedule_and_gradient_accumulation():
  lr = utils.create_learning_rate_schedule(100, 0.1, 'linear', 10)
  np.testing.assert_allclose([lr(5), lr(10), lr(55), lr(100)], [0.05, 0.1, 1e-5 + (0.1 - 1e-5) / 2, 1e-5],
                             rtol=1e-6)
  np.testing.assert_allclose(utils.create_learning_rate_schedule(100, 0.1, 'cosine', 10)(55), 0.05, rtol=1e-6)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 2, 2, 1))
  y = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  w = jnp.arange(12.).reshape(4, 3) / 10
  loss_and_grad = jax.value_and_grad(lambda w, x, y: jnp.mean((x.reshape(len(x), -1) @ w - y) ** 2))
  whole = loss_and_grad(w, x, y)
  for have, want in zip(jax.tree.leaves(utils.accumulate_gradient(loss_and_grad, w, x, y, 4)),
                        jax.tree.leaves(whole)):
    np.testing.assert_allclose(have, want, rtol=1e-5)


def test_checkpoint_helpers(tmp_path):
  assert checkpoint.recover_tree(['a/b', 'a/c', 'd'], [1, 2, 3]) == {'a': {'b': 1, 'c': 2}, 'd': 3}
  expected = {'head': {'bias': 0}, 'pre_logits': {}, 'Transformer': {'x': {}}}
  params = checkpoint.inspect_params(params={'head': {'bias': 1}}, expected=expected)
  assert params == {'head': {'bias': 1}, 'pre_logits': {}, 'Transformer': {'x': {}}}  # empty layers put back
  with pytest.raises(ValueError, match=r'missing head/bias, extra head/kernel'):
    checkpoint.inspect_params(params={'head': {'kernel': 1}}, expected={'head': {'bias': 0}})
  assert checkpoint.inspect_params(params={'a': 1, 'b': 2}, expected={'a': 0}, fail_if_extra=False) == {'a': 1, 'b': 2}
  (tmp_path / 'src.bin').write_bytes(bytes(range(256)) * 100)
  checkpoint.copy(str(tmp_path / 'src.bin'), str(tmp_path / 'dst.bin'), progress=False, block_size=1000)
  assert (tmp_path / 'dst.bin').read_bytes() == (tmp_path / 'src.bin').read_bytes()


def test_get_augreg_df_reads_a_local_index(tmp_path):
  pytest.importorskip('pandas')
  (tmp_path / 'index.csv').write_text('name,ds,final_val,filename\nTi/16,i21k,0.4,Ti_16-i21k-a\n')
  df = checkpoint.get_augreg_df(directory=str(tmp_path))
  assert list(df.filename) == ['Ti_16-i21k-a']


@pytest.mark.slow
def test_model_fields_take_the_reference_arguments():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4))
  mlp = models.MlpBlock(mlp_dim=8, out_dim=3, param_dtype=jnp.bfloat16, kernel_init=nn.initializers.ones,
                        bias_init=nn.initializers.zeros, dropout_rate=0.5)
  variables = mlp.init(jax.random.PRNGKey(0), x, deterministic=True)
  kernel = variables['params']['Dense_1']['kernel']
  assert kernel.shape == (8, 3) and kernel.dtype == jnp.bfloat16 and np.all(np.asarray(kernel, np.float32) == 1)
  want = jnp.sum(jax.nn.gelu(jnp.sum(x, -1, keepdims=True) * jnp.ones(8), approximate=True), -1)
  np.testing.assert_allclose(mlp.apply(variables, x, deterministic=True)[..., 0], want, rtol=2e-2)
  dropped = mlp.apply(variables, x, deterministic=False, rngs={'dropout': jax.random.PRNGKey(1)})
  assert not np.allclose(dropped, mlp.apply(variables, x, deterministic=True))
  assert inspect.signature(models.MlpBlock.__call__).parameters['deterministic'].kind == inspect.Parameter.KEYWORD_ONLY

  pe = models.AddPositionEmbs(posemb_init=nn.initializers.normal(stddev=0.02), param_dtype=jnp.bfloat16)
  assert pe.init(jax.random.PRNGKey(0), x)['params']['pos_embedding'].dtype == jnp.bfloat16

  encoder = dict(num_layers=1, mlp_dim=8, num_heads=2, dropout_rate=0., attention_dropout_rate=0.)
  with_pe = models.Encoder(**encoder).init(jax.random.PRNGKey(0), x, train=False)['params']
  without = models.Encoder(**encoder, add_position_embedding=False).init(jax.random.PRNGKey(0), x, train=False)
  assert 'posembed_input' in with_pe and 'posembed_input' not in without['params']

  class Doubler(nn.Module):  # a caller's own encoder, built as the reference builds `encoder`
    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.
    attention_dropout_rate: float = 0.

    @nn.compact
    def __call__(self, x, *, train):
      return x * self.param('scale', nn.initializers.constant(2.), ())

  cfg = models_config.get_testing_config()
  vit = models.VisionTransformer(num_classes=3, encoder=Doubler, **cfg)
  params = vit.init(jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 3)), train=False)['params']
  assert set(params['Transformer']) == {'scale'}


def test_module_aliases():
  assert models_vit.VisionTransformer is models.VisionTransformer and models_vit.MlpBlock is models.MlpBlock
  assert models_vit.Encoder is models.Encoder and models_vit.AddPositionEmbs is models.AddPositionEmbs
  assert models_resnet.StdConv is models.StdConv and models_resnet.ResNetStage is models.ResNetStage
  x = jnp.arange(3.)
  assert models_vit.IdentityLayer().apply({}, x) is x
  assert models.get_model('testing', num_classes=3).num_classes == 3


@pytest.mark.slow
def test_inference_time(tmp_path):
  config = ml_collections.ConfigDict(dict(model_name='testing', batch=8, num_classes=3, image_size=32, steps=2,
                                          initial_steps=1))
  stats = inference_time.inference_time(config, str(tmp_path))
  assert 0 < stats['imgs_sec_core_min'] <= stats['imgs_sec_core_mean'] <= stats['imgs_sec_core_max']
  assert json.loads((tmp_path / 'inference_time.json').read_text()) == stats


@pytest.mark.slow
def test_train_and_evaluate_as_the_augreg_colab_calls_it(tmp_path):
  """get_config(...), then the colab's edits (shuffle_buffer, accum_steps=0, ...), then train_and_evaluate."""
  folder = reference_testlib.image_folder(tmp_path / 'images')
  published = reference_testlib.testing_npz(tmp_path, 'testing-tiny')
  config = augreg_style_config.get_config('testing-tiny')
  config.pretrained_dir = str(tmp_path)
  config.dataset = folder
  config.shuffle_buffer = 1000
  config.accum_steps = 0
  config.total_steps = 2
  params = train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert params['head']['kernel'].shape == (10, 2)  # re-initialised (zeros) for the folder's 2 classes,
  assert np.any(params['head']['kernel'] != 0)  # then trained; the body is the checkpoint's: the zero head sends
  # it no gradient at step 1, and the cosine schedule of 2 steps (1 warmup) ends at lr 0 at step 2.
  np.testing.assert_array_equal(params['embedding']['kernel'], published['embedding']['kernel'])
  assert os.path.isfile(tmp_path / 'work' / 'final_metrics.json')
