"""The training loop: exact resume after SIGKILL, SIGTERM save-and-exit, NaN stop, metrics.jsonl contents."""
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

import loop_testlib as lib
from vit_jax import checkpoint
from vit_jax.evaluation import fewshot
from vit_jax.tools import inference
from vit_jax.training import checkpointing
from vit_jax.training import config_checks
from vit_jax.training import loop


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted in-process run of the tiny config, profiling 2 steps: (workdir, final metrics)."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  return workdir, loop.train_and_evaluate(lib.tiny_config(profile_steps=2), workdir)


@pytest.mark.slow
def test_metrics_jsonl_has_the_documented_keys_and_monotone_steps(reference):
  workdir, final = reference
  records = lib.read_metrics(workdir)
  steps = [r['step'] for r in records]
  assert steps == sorted(steps)
  train_records = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in train_records] == list(range(1, 13))
  for key in ('train/loss', 'train/lr', 'train/grad_norm', 'train/param_norm', 'progress/steps_per_sec',
              'progress/images_per_sec', 'progress/images_per_sec_per_device', 'progress/eta_minutes',
              'progress/input_wait_fraction'):
    assert all(key in r for r in train_records[1:]), key
  assert all(0 <= r['progress/input_wait_fraction'] <= 1 for r in train_records[1:])
  val = [r for r in records if 'val/top1' in r]
  assert [r['step'] for r in val] == [12]
  assert val[0]['val/top1'] == pytest.approx(final['val/top1'])
  assert 0 <= val[0]['val/top1'] <= val[0]['val/top5'] <= 1
  assert train_records[-1]['train/lr'] < train_records[5]['train/lr']  # cosine decay reached the end


def test_profile_steps_writes_a_trace(reference):
  workdir, _ = reference
  traces = [f for _, _, files in os.walk(os.path.join(workdir, 'profile')) for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces


@pytest.mark.slow
def test_a_finished_run_restarted_only_evaluates(reference, tmp_path):
  workdir, final = reference
  again = loop.train_and_evaluate(lib.tiny_config(), workdir)
  assert again['step'] == 12 and again['val/top1'] == pytest.approx(final['val/top1'])
  assert sorted(lib.train_losses(workdir)) == list(range(1, 13))


@pytest.mark.slow
def test_exact_resume_after_sigkill_at_two_points(tmp_path):
  """Killed from outside twice (each time once a new checkpoint is on disk), then run to the end: the losses are
  bit-identical to an uninterrupted run's."""
  long_run = {'total_steps': 60}
  ref_dir = str(tmp_path / 'reference')
  loop.train_and_evaluate(lib.tiny_config(**long_run), ref_dir)
  workdir = str(tmp_path / 'killed')
  lib.run_main_killed(workdir, long_run, after_checkpoint=3)
  saved = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1, read_only=True).all_steps()
  second = lib.run_main_killed(workdir, long_run, after_checkpoint=max(saved) + 6)
  assert 'Resumed from step' in second.stdout
  third = lib.run_main(workdir, long_run)
  assert third.returncode == 0, third.stderr[-2000:]
  resumed_at = int(re.search(r'Resumed from step (\d+)', third.stdout).group(1))
  assert max(saved) + 6 <= resumed_at < 60
  expected, got = lib.train_losses(ref_dir), lib.train_losses(workdir)
  assert sorted(got) == list(range(1, 61))
  diff = max(abs(expected[s] - got[s]) for s in expected)
  print(f'exact resume (killed after checkpoints {max(saved)} and {resumed_at}): max |loss diff| = {diff}')
  assert got == expected  # bit-identical on CPU


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_the_run_resumes(tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = subprocess.Popen(lib.main_command(workdir, {'total_steps': 100_000, 'checkpoint_every': 100_000}),
                          cwd=lib.REPO, env=lib.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(os.path.join(workdir, 'metrics.jsonl')) and len(lib.train_losses(workdir)) >= 3:
        break
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-2000:]
  saved = int(re.search(r'Preempted \(SIGTERM\): saved step (\d+)', out).group(1))
  assert checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1,
                                    read_only=True).all_steps() == [saved]
  resumed = lib.run_main(workdir, {'total_steps': saved + 2, 'checkpoint_every': 100_000})
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'Resumed from step {saved}' in resumed.stdout
  assert max(lib.train_losses(workdir)) == saved + 2


@pytest.mark.slow
def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
  workdir = str(tmp_path / 'nan')
  cfg = lib.tiny_config(base_lr=1e30, checkpoint_every=1)
  with pytest.raises(loop.TrainingDiverged, match=r'NaN/inf at step \d+') as info:
    loop.train_and_evaluate(cfg, workdir)
  bad = int(re.search(r'at step (\d+)', str(info.value)).group(1))
  assert 1 <= bad <= 4
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1, read_only=True)
  assert ckpt.all_steps() and max(ckpt.all_steps()) < bad
  assert f'Last good checkpoint: step {max(ckpt.all_steps())}' in str(info.value)
  capsys.readouterr()
  raw = ckpt.restore(None)
  params = raw[1]['params']
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_model_init_loads_a_published_npz(reference, tmp_path, capsys):
  ref_dir, _ = reference
  ckpt = checkpointing.Checkpointer(os.path.join(ref_dir, 'checkpoints'), save_every=1, read_only=True)
  _, state, _ = ckpt.restore(None)
  npz = str(tmp_path / 'pretrained.npz')
  checkpoint.save_npz(state['params'], npz)
  workdir = str(tmp_path / 'finetune')
  # lr 0: the params after one step are exactly the loaded ones.
  loop.train_and_evaluate(lib.tiny_config(model_init=npz, base_lr=0., warmup_steps=0, decay_type='constant',
                                           total_steps=1), workdir)
  assert f'Initialised the params from {npz}.' in capsys.readouterr().out
  _, tuned, _ = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), save_every=1,
                                           read_only=True).restore(None)
  jax.tree.map(np.testing.assert_array_equal, tuned['params'], state['params'])


@pytest.mark.slow
def test_fewshot_during_training_equals_the_evaluator_on_the_saved_params(tmp_path):
  workdir = str(tmp_path)
  config = lib.tiny_config(fewshot__datasets=(('digits', 'train', 'test'),), fewshot__every=6,
                           fewshot__shots=(1, 5), fewshot__num_draws=2)
  final = loop.train_and_evaluate(config, workdir)
  records = [r for r in lib.read_metrics(workdir) if 'fewshot/digits/5shot' in r]
  assert [r['step'] for r in records] == [6, 12]
  model, params, _ = inference.load_model(workdir)  # the step-12 checkpoint, read back from disk
  reference = fewshot.FewShotEvaluator(model, 'digits', config_checks.fewshot_pp(config), shots=(1, 5),
                                       num_draws=2, seed=config.seed).run(params)
  assert set(reference) == {'fewshot/digits/1shot', 'fewshot/digits/5shot', 'knn/digits/k10'}
  for key, value in reference.items():
    assert records[-1][key] == pytest.approx(value, abs=1e-6) and final[key] == pytest.approx(value, abs=1e-6)
  assert 0.1 < records[-1]['knn/digits/k10'] <= 1  # above chance on 10 classes, even after 12 tiny steps


def test_fewshot_entry_that_is_not_a_triple_is_one_line():
  config = lib.tiny_config(fewshot__datasets=(('digits', 'train'),))
  with pytest.raises(config_checks.ConfigError, match=r"fewshot.datasets entry \('digits', 'train'\)"):
    config_checks.validate(config)
  config = lib.tiny_config(fewshot__datasets=(('no_such_dataset_xyz', 'train', 'test'),))
  with pytest.raises(config_checks.ConfigError, match='no_such_dataset_xyz'):
    config_checks.validate(config)


@pytest.mark.slow
def test_logged_loss_and_grad_norm_are_window_means(reference, tmp_path):
  ref_dir, _ = reference  # logs every step
  per_step = {r['step']: r for r in lib.read_metrics(ref_dir) if 'train/loss' in r}
  workdir = str(tmp_path)
  loop.train_and_evaluate(lib.tiny_config(progress_every=5), workdir)
  logged = {r['step']: r for r in lib.read_metrics(workdir) if 'train/loss' in r}
  assert sorted(logged) == [5, 10, 12]
  for step, window in ((5, range(1, 6)), (10, range(6, 11)), (12, range(11, 13))):
    for key in ('train/loss', 'train/grad_norm'):
      assert logged[step][key] == pytest.approx(np.mean([per_step[s][key] for s in window]), rel=1e-5)
    for key in ('train/lr', 'train/param_norm'):  # the report step's own
      assert logged[step][key] == pytest.approx(per_step[step][key], rel=1e-5)


@pytest.mark.slow  # a tiny model compiled a few times
def test_the_loop_hands_the_steps_uint8_images_and_int32_labels_with_mixing_on(tmp_path, monkeypatch):
  """The AugReg preset's data settings (RandAugment, mixup 0.5; cutmix too here) on digits: only uint8 images and
  int32 labels reach the train and eval steps, which mix and make targets on the devices."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_step  # pylint: disable=g-import-not-at-top
  seen = {'train': [], 'eval': []}

  def spy(make, kind):
    def wrapped(*args, **kwargs):
      step = make(*args, **kwargs)

      def recorded(state_or_params, batch):
        seen[kind].append({k: (v.dtype.name, v.shape) for k, v in batch.items()})
        return step(state_or_params, batch)
      return recorded
    return wrapped
  monkeypatch.setattr(train_step, 'make_train_step', spy(train_step.make_train_step, 'train'))
  monkeypatch.setattr(train_step, 'make_eval_step', spy(train_step.make_eval_step, 'eval'))
  cfg = lib.apply(lib.load_config('vit_b16_i1k_augreg'), {
      **lib.TINY, 'dataset': 'digits', 'pp.train': 'train', 'pp.test': 'test', 'pp.cutmix': 1.0,
      'model.representation_size': None, 'model.dtype': 'float32', 'total_steps': 2, 'warmup_steps': 1,
      'accum_steps': 2})  # the preset accumulates 4 micro-batches; 2 images per device split in 2 here
  assert cfg.pp.mixup == 0.5 and cfg.pp.randaug == (2, 15)
  with cfg.unlocked():
    cfg.evals = ml_collections.ConfigDict({'minival': {'split': 'train[99%:]'}})
  final = loop.train_and_evaluate(cfg, str(tmp_path))
  assert final['step'] == 2 and 0 <= final['val/top1'] <= 1 and 'minival/top1' in final
  b = cfg.batch
  assert seen['train'] == [{'image': ('uint8', (b, 8, 8, 3)), 'label': ('int32', (b,))}]
  assert {k: v[0] for k, v in seen['eval'][0].items()} == {'image': 'uint8', 'label': 'int32', 'mask': 'float32'}
  assert all(s['image'][0] == 'uint8' and s['label'] == ('int32', (cfg.batch_eval,)) for s in seen['eval'])
