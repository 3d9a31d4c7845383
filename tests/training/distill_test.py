"""Distillation: the KL objective against numpy, the teacher on the student's mixed batch, DeiT's distillation
token, the config checks, and the teacher as the jitted step's argument."""
import functools
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import loop_testlib as lib
import tiny_checkpoint
from vit_jax import checkpoint
from vit_jax import models
from vit_jax.data import mixing
from vit_jax.interop import save as interop_save
from vit_jax.models import build
from vit_jax.models import flops
from vit_jax.training import config_checks
from vit_jax.training import distill
from vit_jax.training import loop
from vit_jax.training import losses
from vit_jax.training import sharding
from vit_jax.training import teacher
from vit_jax.training import train_step

NUM_CLASSES = 10
SIZE = 16


def _model(width=16, **options):
  return models.get_model('B/8', num_classes=NUM_CLASSES, hidden_size=width, head_zeroinit=False,
                          transformer={'mlp_dim': 2 * width, 'num_heads': 2, 'num_layers': 1}, **options)


def _params(model, seed):
  return jax.jit(lambda: model.init(jax.random.PRNGKey(seed), jnp.zeros((1, SIZE, SIZE, 3)), train=False))()[
      'params']


@functools.lru_cache(maxsize=None)
def _tiny(width, seed, distill_token=False):
  """(model, params), shared between tests: each init is a compilation."""
  model = _model(width, distill_token=distill_token)
  return model, _params(model, seed)


def _apply(model, params, images, **kwargs):
  """`model.apply` jitted: one compiled program instead of op-by-op dispatch on 8 fake devices."""
  return jax.jit(lambda p, x: model.apply({'params': p}, x, train=False, **kwargs))(params, images)


def _images(n=6, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def _np_log_softmax(z):
  z = z.astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.slow
def test_loss_equals_numpy_kl_at_a_temperature_mixed_with_the_label_loss():
  """alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * xent(student, labels), written in numpy."""
  (student, s_params), (teacher, t_params) = _tiny(16, 0), _tiny(32, 1)
  images = _images()
  labels = np.random.RandomState(2).dirichlet(np.ones(NUM_CLASSES), len(images)).astype(np.float32)
  temperature, alpha = 2.5, 0.3
  s_logits = np.asarray(_apply(student, s_params, images))
  t_logits = np.asarray(_apply(teacher, t_params, images))
  assert np.abs(s_logits - t_logits).max() > 0.5  # two different functions: the KL is far from 0

  log_p, log_q = _np_log_softmax(t_logits / temperature), _np_log_softmax(s_logits / temperature)
  kl = temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
  xent = -(labels * _np_log_softmax(s_logits)).sum(-1)
  np.testing.assert_allclose(distill.kl_divergence(s_logits, t_logits, temperature), kl, rtol=1e-5, atol=1e-6)

  loss = distill.distill(student, teacher, losses.softmax_xent, temperature=temperature, alpha=alpha)
  loss = jax.jit(loss)
  got = float(loss(s_params, images, labels, jax.random.PRNGKey(0), t_params))
  assert got == pytest.approx(np.mean(alpha * kl + (1 - alpha) * xent), rel=1e-5, abs=1e-6)
  pure = distill.distill(student, teacher, temperature=1., alpha=1.)
  log_p1, log_q1 = _np_log_softmax(t_logits), _np_log_softmax(s_logits)
  assert float(jax.jit(pure)(s_params, images, labels, jax.random.PRNGKey(0), t_params)) == pytest.approx(
      np.mean((np.exp(log_p1) * (log_p1 - log_q1)).sum(-1)), rel=1e-5, abs=1e-6)


class _Seen:
  """The arrays a `_Recorder` was called on (a plain object: flax would freeze a list field into a tuple)."""

  def __init__(self):
    self.arrays = []


class _Recorder(nn.Module):
  """A linear classifier that hands the images it is called on to the host."""
  seen: _Seen

  @nn.compact
  def __call__(self, x, *, train, **_):
    jax.debug.callback(lambda v: self.seen.arrays.append(np.asarray(v)), x)
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


@pytest.mark.slow
def test_the_teacher_sees_exactly_the_students_mixed_batch():
  student_box, teacher_box = _Seen(), _Seen()
  student, teacher = _Recorder(student_box), _Recorder(teacher_box)
  tx = optax.sgd(0.1)
  ops = mixing.BatchOps(num_classes=NUM_CLASSES, mixup=1., cutmix=1.)  # one of the two per batch
  step = jax.jit(train_step.make_train_step(student, tx, batch_ops=ops,
                                            objective=distill.distill(student, teacher, alpha=0.5)))
  rs = np.random.RandomState(0)
  batch = {'image': rs.randint(0, 256, (8, 4, 4, 3)).astype(np.uint8),
           'label': rs.randint(0, NUM_CLASSES, 8).astype(np.int32)}
  state = train_step.create_train_state(student, tx, jax.random.PRNGKey(0), input_shape=(1, 4, 4, 3))
  t_params = teacher.init(jax.random.PRNGKey(1), jnp.zeros((1, 4, 4, 3)), train=False)['params']
  jax.effects_barrier()
  student_box.arrays.clear(), teacher_box.arrays.clear()  # the inits' calls
  for _ in range(2):
    state, _ = step(state, batch, t_params)
  jax.effects_barrier()
  student_seen, teacher_seen = student_box.arrays, teacher_box.arrays
  assert len(teacher_seen) == 2 and len(student_seen) == 2
  for t, s in zip(teacher_seen, student_seen):
    np.testing.assert_array_equal(t, s)
    assert not np.allclose(t, mixing.to_float(batch['image']))  # mixed, not the raw batch
  assert not np.array_equal(teacher_seen[0], teacher_seen[1])  # a fresh mix each step


def _count(params):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def test_distill_token_adds_exactly_deits_params():
  """DeiT-B/16 distilled is timm's 87,338,192 params: ViT-B/16's 86,567,656 plus a token, its position embedding
  and a second 1000-class head."""
  def count(**options):
    model = models.get_model('B/16', num_classes=1000, **options)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
    return _count(nn.meta.unbox(shapes)['params'])
  assert count() == 86_567_656
  assert count(distill_token=True) == 87_338_192 == 86_567_656 + 768 + 768 + 768 * 1000 + 1000


@pytest.mark.slow
def test_distill_token_heads_average_at_eval_and_off_leaves_the_model_as_it_was():
  model, params = _tiny(16, 0, distill_token=True)
  images = _images()
  cls_logits, dist_logits = _apply(model, params, images, distill_heads=True)
  assert np.abs(np.asarray(cls_logits - dist_logits)).max() > 1e-3  # two heads on two tokens
  np.testing.assert_allclose(_apply(model, params, images),
                             (cls_logits + dist_logits) / 2, rtol=1e-6, atol=1e-6)
  plain_params = flax.traverse_util.flatten_dict(jax.eval_shape(
      lambda: _model(16).init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))['params'], sep='/')
  extra = set(flax.traverse_util.flatten_dict(params, sep='/')) - set(plain_params)
  assert extra == {'dist', 'head_dist/kernel', 'head_dist/bias'}
  with pytest.raises(ValueError, match="distill_token needs classifier='token'"):
    _model(16, distill_token=True, classifier='gap').init(jax.random.PRNGKey(0), images[:1], train=False)


@pytest.mark.slow
def test_distill_token_objective_trains_the_two_heads_on_label_and_teacher_argmax():
  (student, s_params), (teacher, t_params) = _tiny(16, 0, distill_token=True), _tiny(32, 1)
  images = _images()
  labels = np.eye(NUM_CLASSES, dtype=np.float32)[np.arange(len(images)) % NUM_CLASSES]
  cls_logits, dist_logits = (np.asarray(x) for x in _apply(student, s_params, images, distill_heads=True))
  hard = np.argmax(np.asarray(_apply(teacher, t_params, images)), -1)
  want = np.mean(0.5 * -(labels * _np_log_softmax(cls_logits)).sum(-1)
                 + 0.5 * -_np_log_softmax(dist_logits)[np.arange(len(images)), hard])
  loss = jax.jit(distill.distill(student, teacher, alpha=0.5, distill_token=True))
  assert float(loss(s_params, images, labels, jax.random.PRNGKey(0), t_params)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize('overrides,expected', [
    ({'objective': 'distill', 'teacher': '/nonexistent/teacher'},
     "config.teacher='/nonexistent/teacher' does not exist"),
    ({'objective': 'distill'}, "config.objective='distill' needs config.teacher"),
    ({'distill.temperature': 0.}, 'config.distill.temperature=0.0 is out of range: it must be a number > 0'),
    ({'distill.alpha': 1.5}, 'config.distill.alpha=1.5 is out of range: it must be a number in [0, 1]'),
    ({'model.distill_token': True, 'model.classifier': 'gap'}, 'config.model.distill_token needs'),
])
def test_config_errors_are_one_line(overrides, expected):
  config = lib.apply(lib.tiny_config(), overrides)
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate(config, num_devices=8, check_data=False)
  assert str(e.value).startswith(expected) and '\n' not in str(e.value)


@pytest.mark.slow
def test_distillation_resumes_exactly_after_sigkill(tmp_path):
  """A half-width student distilled from a tiny trained workdir, killed once a checkpoint is on disk and run to
  the end: its losses are bit-identical to an uninterrupted run's (the teacher is reloaded, the batch redrawn)."""
  teacher_dir = str(tmp_path / 'teacher')
  loop.train_and_evaluate(lib.tiny_config(total_steps=3), teacher_dir)
  student = {'objective': 'distill', 'teacher': teacher_dir, 'distill.temperature': 2., 'distill.alpha': 0.5,
             'model.hidden_size': 8, 'model.mlp_dim': 16, 'total_steps': 9}
  ref_dir = str(tmp_path / 'reference')
  config = lib.apply(lib.tiny_config(), student)
  loop.train_and_evaluate(config, ref_dir)
  # MFU counts the teacher's forward besides the student's step.
  logged = [r['progress/model_flops_per_step'] for r in lib.read_metrics(ref_dir)
            if 'progress/model_flops_per_step' in r]
  tiny = lib.tiny_config()
  want = (flops.train_step_flops(build.build_model(config.model_name, config.model, 10), 8, 16)
          + 16 * flops.model_forward_flops(build.build_model(tiny.model_name, tiny.model, 10), 8))
  assert logged and logged == [pytest.approx(want)] * len(logged)
  workdir = str(tmp_path / 'killed')
  lib.run_main_killed(workdir, student, after_checkpoint=3)
  resumed = lib.run_main(workdir, student)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 0 < int(re.search(r'Resumed from step (\d+)', resumed.stdout).group(1)) < 9
  assert f'Teacher: {teacher_dir} (params).' in resumed.stdout
  expected, got = lib.train_losses(ref_dir), lib.train_losses(workdir)
  assert sorted(got) == list(range(1, 10)) and got == expected  # bit-identical on CPU


def test_npz_teacher_in_bf16_is_sharded_by_the_students_rules(tmp_path):
  """A .npz teacher of the student's own architecture: bf16 with the student's dtype, and under FSDP every param
  has the student's sharding (some of them split over 'fsdp'), its values those of the file."""
  config = lib.tiny_config(objective='distill', model__dtype='bfloat16', teacher_model_name='testing')
  config.teacher_model = ml_collections.ConfigDict({k: config.model[k] for k in (
      'hidden_size', 'num_layers', 'num_heads', 'mlp_dim', 'patch_size', 'resnet_num_layers', 'classifier')})
  model = build.build_model(config.model_name, config.model, NUM_CLASSES)
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False))()['params']
  config.teacher = str(tmp_path / 'teacher.npz')
  checkpoint.save_npz(params, config.teacher)

  t_model, host = teacher.load(config, NUM_CLASSES, 8)
  assert t_model.dtype == jnp.bfloat16 and {x.dtype for x in jax.tree.leaves(host)} == {jnp.dtype(jnp.bfloat16)}
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 8, 'tensor': 1})
  rules = sharding.get_rules('fsdp')
  abstract = teacher.abstract_params(t_model, host, 8, mesh, rules)
  boxed = jax.eval_shape(lambda: models.init_with_axes(model, {'params': jax.random.PRNGKey(0)},
                                                       jnp.zeros((1, 8, 8, 3)), train=False)['params'])
  student_shardings = sharding.param_shardings(boxed, mesh, rules)
  assert jax.tree.map(lambda a: a.sharding.spec, abstract) == jax.tree.map(lambda s: s.spec, student_shardings)
  assert any('fsdp' in str(a.sharding.spec) for a in jax.tree.leaves(abstract))
  on_mesh = teacher.put(host, abstract)
  jax.tree.map(lambda x, p: np.testing.assert_array_equal(np.asarray(x, np.float32),
                                                          np.asarray(jnp.asarray(p, jnp.bfloat16), np.float32)),
               on_mesh, jax.device_get(params))


def test_timm_folder_teacher_describes_its_own_model(tmp_path):
  """A timm checkpoint (our export of a tiny ViT) as the teacher: its architecture comes from the file, its
  logits are the exported model's."""
  model, params = tiny_checkpoint.random_params(mlp_activation='gelu', num_classes=NUM_CLASSES)
  folder = str(tmp_path / 'timm_teacher')
  interop_save.save(model, params, folder, 'timm')
  config = lib.tiny_config(objective='distill', teacher=folder)
  t_model, t_params = teacher.load(config, NUM_CLASSES, tiny_checkpoint.SIZE)
  images = np.random.RandomState(0).uniform(-1, 1, (2, tiny_checkpoint.SIZE, tiny_checkpoint.SIZE, 3))
  np.testing.assert_array_equal(_apply(t_model, t_params, images.astype(np.float32)),
                                _apply(model, params, images.astype(np.float32)))
