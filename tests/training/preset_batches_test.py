"""Every preset's training loop hands its steps uint8 images and int32 labels, train and eval alike.

The loop's own config, data and evaluator stages run on each preset (its pp section: crops, flip, RandAugment,
mixup; digits at 8 px in place of its dataset); the stages that would compile the preset's model (the compiled
steps, the init, the steps themselves) are stand-ins that record the batches the loop hands them.
loop_test.py's uint8 test runs the real steps on the AugReg preset.
"""
import os
import types

import jax.numpy as jnp
import ml_collections
import pytest

import loop_testlib as lib
from vit_jax.training import loop

PRESETS = [('default', None), ('vit_s16_i21k', None), ('vit_b16_i21k', None), ('vit_l16_i21k', None),
           ('vit_h14_i21k', None), ('vit_b16_i1k_augreg', None), ('finetune', 'imagenet2012'),
           ('mae_vit_b16_i1k', None), ('mae_vit_l16_i1k', None), ('mae_finetune_i1k', 'b16'), ('mae_digits', 'pretrain')]


def test_the_list_names_every_preset():
  files = {f[:-3] for f in os.listdir(os.path.join(lib.REPO, 'configs')) if f.endswith('.py') and f != '__init__.py'}
  # The distillation presets' loop also reads a teacher from a file (tests/training/distill_test.py runs that loop).
  assert files - {'distill_default', 'deit_b16_i1k_distill'} == {name for name, _ in PRESETS}


@pytest.mark.parametrize('name,arg', PRESETS, ids=[n for n, _ in PRESETS])
def test_the_loop_hands_every_presets_steps_uint8_images_and_int32_labels(name, arg, tmp_path, monkeypatch):
  seen = {'train': [], 'eval': []}
  shape = lambda batch: {k: (v.dtype.name, v.shape) for k, v in batch.items()}

  def compile_stand_in(config, info, model, tx, schedule, loss_fn, batch_ops, mesh, rules, objective, frozen):
    seen['batch_ops'] = batch_ops
    return types.SimpleNamespace(flops_per_step=None)

  def eval_step(params, batch):  # the sums the real eval step returns, so the evaluator runs to its end
    seen['eval'].append(shape(batch))
    return {'loss_sum': jnp.float32(0), 'top1': jnp.float32(0), 'top5': jnp.float32(0),
            'count': batch['mask'].sum()}

  def train_stand_in(config, workdir, state, programs, ckpt, train_iter, evaluators, fewshot_evaluators, replicated):
    seen['train'].append(shape(next(train_iter)))  # what the real loop passes to programs.train_step
    for e in evaluators:
      e.run(eval_step, state)
    return {}, 0

  monkeypatch.setattr(loop, '_compile', compile_stand_in)
  monkeypatch.setattr(loop, '_restore_or_init', lambda *args: types.SimpleNamespace(step=0, params=None))
  monkeypatch.setattr(loop, '_train', train_stand_in)
  cfg = lib.apply(lib.load_config(name, arg), {
      **lib.TINY, 'dataset': 'digits', 'pp.train': 'train', 'pp.test': 'test', 'model_init': None,
      'model.representation_size': None, 'batch_eval': 160,
      'accum_steps': 1})  # the presets' accumulation (4, 8) does not divide the tiny batch's 2 images per device
  pp = cfg.pp.to_dict()
  with cfg.unlocked():
    cfg.evals = ml_collections.ConfigDict({'minival': {'split': 'train[99%:]'}})  # the second evaluator's path
  loop.train_and_evaluate(cfg, str(tmp_path))

  b, e = cfg.batch, cfg.batch_eval
  assert seen['train'] == [{'image': ('uint8', (b, 8, 8, 3)), 'label': ('int32', (b,))}]
  # val: 297 test digits, 2 batches; minival: 18 train digits, 1 batch.
  assert seen['eval'] == [{'image': ('uint8', (e, 8, 8, 3)), 'label': ('int32', (e,)), 'mask': ('float32', (e,))}] * 3
  ops = seen['batch_ops']  # the steps finish the batches on the devices with the preset's own settings
  assert (ops.num_classes, ops.mixup, ops.cutmix) == (10, pp.get('mixup') or 0, pp.get('cutmix') or 0)
