"""`train_and_evaluate(config, workdir)`: the whole training program, read top to bottom in stages.

validate config -> mesh -> data -> model -> optimizer -> `jax.eval_shape` the init -> shardings from the
config's logical-axis rules -> jitted init -> jitted, donated train step -> resume -> loop (eval, progress,
checkpoints, preemption, NaN guard).

Resume order (the first that applies wins):
  1. the newest readable checkpoint in `<workdir>/checkpoints` (a corrupt newest one is reported and skipped; one
     of another model, or storage that keeps failing, stops the run: `checkpointing.Checkpointer.restore`);
  2. `config.resume`: another workdir or checkpoint directory (train state and data position);
  3. `config.model_init`: a published .npz, one of our workdirs (an MAE one gives its encoder) or a timm / HF
     checkpoint (whose architecture then sets `config.model`, `vit_jax.interop`), loaded into fresh params (`vit_jax.checkpoint.load_pretrained`: head
     re-initialised, position embeddings resampled);
  4. from scratch (`config.seed`).
The workdir and every path in the config may be local or a URL (gs://...; `vit_jax.storage`).
A resumed run is exact: the state, the RNG (folded with the step) and the data position are all restored, so the
losses are those an uninterrupted run has.

Logged train metrics: `train/loss` and `train/grad_norm` are means over the steps since the previous progress
report (summed on the device, no per-step host sync); `train/lr` and `train/param_norm` are the report step's.
"""
import dataclasses
import functools
import json
import logging
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from etils import epath

from vit_jax import checkpoint
from vit_jax import interop
from vit_jax import storage
from vit_jax.data import mixing
from vit_jax.data import pipeline as input_pipeline
from vit_jax.evaluation import classification as evaluate
from vit_jax.evaluation import fewshot
from vit_jax.models import build
from vit_jax.models import flops
from vit_jax.models import mae as mae_model
from vit_jax.models import vit
from vit_jax.tools import inference
from vit_jax.training import checkpointing
from vit_jax.training import config_checks
from vit_jax.training import distill
from vit_jax.training import losses
from vit_jax.training import mae
from vit_jax.training import metric_logging
from vit_jax.training import objectives
from vit_jax.training import optim
from vit_jax.training import provenance
from vit_jax.training import sharding
from vit_jax.training import teacher
from vit_jax.training import train_step

# Keys of `config` that vit_jax.training.optim reads at the top level (vit_jax's names); the rest live in `config.optim`.
_TOP_LEVEL_OPTIM_KEYS = ('base_lr', 'total_steps', 'warmup_steps', 'decay_type', 'grad_norm_clip')


class TrainingDiverged(RuntimeError):
  """Loss or gradient norm became NaN/inf; the message names the step and the last good checkpoint."""


def optim_section(config: Any) -> Dict[str, Any]:
  """The keys vit_jax.training.optim reads: `config.optim` plus the schedule keys kept at the top level."""
  section = config.optim.to_dict()
  section.update({k: config[k] for k in _TOP_LEVEL_OPTIM_KEYS})
  section['mup_base_width'] = config.model.get('mup_base_width')  # muP's per-layer lr needs the model's base width
  return section


class Preemption:
  """`due(step)`: True on every process at the same step once a preemption notice (SIGTERM) reached any of them.

  Multi-process (a `jax.distributed` client): JAX's preemption sync manager, which `jax.distributed.initialize`
  starts, takes the SIGTERM itself and agrees on the step through the coordination service
  (`multihost_utils.reached_preemption_sync_point`, which must be asked at every step; it only reads a local
  flag until a notice arrives, so it costs no host sync). Our own handler stays off there: it would replace
  JAX's and hide the notice. Single process without a client: SIGTERM sets a local flag.
  """

  def __init__(self):
    self._jax_sync = jax.distributed.is_initialized()
    self._flag = False
    if not self._jax_sync:
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True
    logging.warning('SIGTERM: saving a checkpoint at the next step, then exiting.')

  def due(self, step: int) -> bool:
    if self._jax_sync:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag

  def close(self) -> None:
    if not self._jax_sync:
      signal.signal(signal.SIGTERM, self._previous)


def _first_bad_step(first_bad: jax.Array, step: jax.Array, metrics: Dict[str, jax.Array]) -> jax.Array:
  """-1 while loss and grad norm stay finite, else the first step (1-based) at which one of them was not."""
  ok = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  return jnp.where((first_bad < 0) & ~ok, step, first_bad)


# Train metrics logged as their mean over the progress window (the others are the report step's own).
AVERAGED_METRICS = ('loss', 'grad_norm')


def _zero_sums(replicated: jax.sharding.Sharding) -> Dict[str, jax.Array]:
  return {k: jax.device_put(np.float32(0.), replicated) for k in AVERAGED_METRICS}


def jit_step(step_fn, state_shardings, batch_sharding, replicated, frozen_shardings=None):
  """The jitted, donated step the loop runs: (state, batch, first_bad, sums) -> (state, metrics, first_bad, sums).

  `first_bad` marks the first non-finite step; `sums` adds up AVERAGED_METRICS on the device. With
  `frozen_shardings` the step takes a fifth argument, `frozen` (a distillation teacher's params), passed to the
  objective and never donated: an argument rather than a closure, which would embed it in the program as constants.
  """

  def guarded_step(state, batch, first_bad, sums, *frozen):
    state, metrics = step_fn(state, batch, *frozen)
    sums = {k: sums[k] + metrics[k].astype(jnp.float32) for k in sums}
    return state, metrics, _first_bad_step(first_bad, state.step, metrics), sums

  frozen_in = () if frozen_shardings is None else (frozen_shardings,)
  return jax.jit(
      guarded_step, in_shardings=(state_shardings, batch_sharding, replicated, replicated) + frozen_in,
      out_shardings=(state_shardings, replicated, replicated, replicated), donate_argnums=(0, 2, 3))


@dataclasses.dataclass
class Trained:
  """What `config.objective` trains: the module whose params the state holds, its loss, its eval step's maker."""
  model: Any
  loss: objectives.Objective
  make_eval_step: Callable[..., Callable[..., Dict[str, jax.Array]]]  # (mesh=, rules=, batch_ops=) -> eval_step


def objective_for(config: Any, model: vit.VisionTransformer, loss_fn: Any) -> Trained:
  """The model and loss `config.objective` trains: classification of `model`, or MAE (its encoder plus a decoder).

  Distillation classifies too; its loss needs the teacher's loaded params, so `distillation` makes it and the step
  takes it in place of this one's."""
  if config.get('objective', 'classification') == 'mae':
    autoencoder = mae_model.from_classifier(model, config.model)
    norm_pix = config.model.get('norm_pix_loss', True)
    return Trained(autoencoder, mae.objective(autoencoder, norm_pix),
                   functools.partial(mae.make_eval_step, autoencoder, norm_pix))
  return Trained(model, objectives.classification(model, loss_fn),
                 functools.partial(train_step.make_eval_step, model, loss_fn))


def _load_model_init(state: train_step.TrainState, config: Any,
                     model: vit.VisionTransformer) -> train_step.TrainState:
  """Replaces fresh params (and EMA) with a published checkpoint's (square images: posemb grid resampled).

  Nothing is gathered but the (small) head and pre-logits, which `load_pretrained` may keep from the fresh init:
  it gets the other params' shapes only, every process reads the file and fills its own shards, so FSDP params
  that no process fully holds work too.
  """
  model_config = {'representation_size': model.representation_size, 'classifier': model.classifier,
                  'transformer': model.transformer}
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def init_value(path, x):
    if jax.tree_util.keystr(path[:1], simple=True) in ('head', 'pre_logits'):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  restored = None
  if interop.is_foreign(config.model_init):
    restored = interop.to_params(interop.read(config.model_init, config.model_init_arch))
  elif epath.Path(config.model_init).is_dir():  # one of our workdirs (an MAE one: its encoder, the decoder dropped)
    restored = inference.load_params(config.model_init)
  params = checkpoint.load_pretrained(pretrained_path=config.model_init, model_config=model_config,
                                      init_params=jax.tree_util.tree_map_with_path(init_value, state.params),
                                      restored_params=restored)
  params = jax.tree.map(lambda host, x: jax.make_array_from_callback(
      x.shape, x.sharding, lambda index: np.asarray(host[index], x.dtype)), params, state.params)
  ema = jax.tree.map(lambda x: x + 0., params) if state.ema_params is not None else None
  print(f'Initialised the params from {config.model_init}.', flush=True)
  return state.replace(params=params, ema_params=ema)


@dataclasses.dataclass
class _Programs:
  """What `_compile` builds: the sharded init, the donated train step, the eval step and their shapes."""
  init: Callable[[jax.Array], train_step.TrainState]
  train_step: Any  # AOT-compiled (state, batch, first_bad, sums) -> (state, metrics, first_bad, sums)
  eval_step: Callable[..., Dict[str, jax.Array]]
  abstract_state: Any
  rng: jax.Array
  flops_per_step: Optional[float]  # analytic model FLOPs of one step over the global batch (models/flops.py)
  frozen_args: Tuple[Any, ...] = ()  # the train step's arguments after sums: (teacher params,) when distilling


def _write_config(config: Any, workdir: epath.Path) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


@dataclasses.dataclass
class StepProgram:
  """The run's train step before compilation: the jitted, donated step and the abstract arguments it takes."""
  init: Callable[[jax.Array], train_step.TrainState]  # unjitted; `out_shardings=state_shardings` shards it
  state_shardings: Any
  abstract_state: Any
  step: Any  # jit_step(...): (state, batch, first_bad, sums[, frozen]) -> (state, metrics, first_bad, sums)
  args: Tuple[Any, ...]  # abstract (state, batch, first_bad, sums[, frozen]), with their shardings
  trained: Trained  # what the state's params are of (`objective_for`): the eval step and the FLOPs follow it


def step_program(config: Any, info: input_pipeline.DatasetInfo, model: vit.VisionTransformer, tx: Any,
                 schedule: Any, loss_fn: Any, batch_ops: mixing.BatchOps, mesh: jax.sharding.Mesh,
                 rules: Any, objective: Any = None, frozen: Any = None) -> StepProgram:
  """Shapes, then shardings from the rules, then the jitted step, which takes uint8 images and integer labels and
  finishes them on the devices (`batch_ops`); `vit_jax.perf.lowering` lowers this same step.

  `objective`: the loss (None: `objective_for`'s, classification with `loss_fn` or MAE); `frozen`: abstract arrays
  (with shardings) the step takes as a fifth argument and hands to the objective (`distillation`)."""
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  rng = jax.random.PRNGKey(config.seed)
  trained = objective_for(config, model, loss_fn)
  init = functools.partial(train_step.create_train_state, trained.model, tx,
                           input_shape=(1, info.image_size, info.image_size, 3), ema=config.ema_decay > 0)
  state_shardings = sharding.param_shardings(jax.eval_shape(functools.partial(init, unbox=False), rng),
                                             mesh, rules)
  abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                jax.eval_shape(init, rng), state_shardings)
  abstract_batch = input_pipeline.train_batch_spec(info, config.batch, batch_sharding)
  first_bad = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
  sums = {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated) for k in AVERAGED_METRICS}
  step = jit_step(train_step.make_train_step(model, tx, loss_fn, lr_schedule=schedule, accum_steps=config.accum_steps,
                                             ema_decay=config.ema_decay or None, mesh=mesh, rules=rules,
                                             batch_ops=batch_ops, objective=objective or trained.loss),
                  state_shardings, batch_sharding, replicated,
                  None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen))
  return StepProgram(init=init, state_shardings=state_shardings, abstract_state=abstract_state, step=step,
                     args=(abstract_state, abstract_batch, first_bad, sums) + (() if frozen is None else (frozen,)),
                     trained=trained)


def _compile(config: Any, info: Any, model: vit.VisionTransformer, tx: Any, schedule: Any, loss_fn: Any,
             batch_ops: mixing.BatchOps, mesh: jax.sharding.Mesh, rules: Any, objective: Any = None,
             frozen: Any = None) -> _Programs:
  """The sharded init (no param ever materialises unsharded), the AOT-compiled donated train step with the NaN
  marker and the window sums folded in, and the eval step; both steps finish uint8 batches on the devices."""
  program = step_program(config, info, model, tx, schedule, loss_fn, batch_ops, mesh, rules, objective, frozen)
  trained = program.trained
  eval_step = jax.jit(trained.make_eval_step(mesh=mesh, rules=rules, batch_ops=batch_ops),
                      out_shardings=sharding.replicated(mesh))
  return _Programs(init=jax.jit(program.init, out_shardings=program.state_shardings),
                   train_step=program.step.lower(*program.args).compile(), eval_step=eval_step,
                   abstract_state=program.abstract_state, rng=jax.random.PRNGKey(config.seed),
                   flops_per_step=flops.train_step_flops(trained.model, info.image_size, config.batch))


def _restore_or_init(config: Any, workdir: epath.Path, ckpt: checkpointing.Checkpointer, programs: _Programs,
                     train_iter: Any, model: vit.VisionTransformer) -> train_step.TrainState:
  """The resume order of the module docstring: own checkpoint -> config.resume -> config.model_init -> scratch.

  Restores the input pipeline's position with the state.
  """
  restored = ckpt.restore(programs.abstract_state)
  source = workdir
  if restored is None and config.resume:
    source = checkpointing.checkpoint_dir(config.resume)
    restored = checkpointing.Checkpointer(source, save_every=1, read_only=True).restore(programs.abstract_state)
    if restored is None:
      raise config_checks.ConfigError(f'config.resume={config.resume!r} holds no checkpoint; fix the path.')
  if restored is None:
    state = programs.init(programs.rng)
    return _load_model_init(state, config, model) if config.model_init else state
  start_step, state, data_state = restored
  train_iter.set_state(data_state)
  step = int(jax.device_get(state.step))
  if step != start_step:
    raise RuntimeError(f'Checkpoint step {start_step} holds a state of step {step}.')
  print(f'Resumed from step {start_step} of {source}.', flush=True)
  return state


def train_and_evaluate(config: Any, workdir: epath.PathLike) -> Dict[str, float]:
  """Trains and evaluates per `config`, checkpointing into `workdir` (local or a URL); returns the final eval
  metrics."""
  storage.configure()
  workdir = storage.absolute(workdir)
  # --- Config: a timm / HF model_init sets the model's architecture; then fail on user mistakes before anything
  # compiles.
  if config.model_init and epath.Path(config.model_init).exists() and interop.is_foreign(config.model_init):
    try:
      ckpt = interop.read(config.model_init, config.model_init_arch)
    except (ValueError, OSError) as e:
      raise config_checks.ConfigError(f'config.model_init={config.model_init!r}: {e}') from None
    config.model.update(interop.config_model(ckpt.spec, ckpt.preprocess))
  info = config_checks.validate(config)
  start_time = time.time()
  _write_config(config, workdir)
  provenance.write(workdir)

  # --- Mesh and the logical-axis rules that map params and activations onto it.
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.get_rules(config.sharding_rules)
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)

  # --- Data: per-process batches become global arrays sharded over the mesh's batch axes. Only uint8 images and
  # integer labels cross to the devices; the steps scale, make targets and mix there (`batch_ops`).
  pp = config_checks.pp_dict(config.pp)
  batch_ops = mixing.BatchOps.from_pp(pp, info.num_classes, groups=jax.process_count())
  train_iter = input_pipeline.prefetch_to_mesh(
      input_pipeline.make_train_iterator(config.dataset, pp, global_batch=config.batch, seed=config.seed,
                                         data_dir=config.tfds_data_dir, uint8=True), batch_sharding)

  def make_eval_batches(dataset: str, eval_pp: Dict[str, Any]):  # A fresh pass over an eval split, padded, masked.
    return input_pipeline.prefetch_to_mesh(input_pipeline.make_eval_iterator(
        dataset, eval_pp, global_batch=config.batch_eval, data_dir=config.tfds_data_dir, uint8=True),
        batch_sharding)

  # 'val' (config.pp.test) first, then config.evals: (name, every, fresh batches).
  evaluators = [_Evaluator(spec.name, spec.every, functools.partial(make_eval_batches, spec.dataset, spec.pp))
                for spec in config_checks.evals(config)]

  # --- Model, optimizer, loss, few-shot evaluators.
  model = build.build_model(config.model_name, config.model, info.num_classes)
  fewshot_evaluators = [
      fewshot.FewShotEvaluator(model, dataset, config_checks.fewshot_pp(config), train_split=train_split,
                               test_split=test_split, batch_size=config.fewshot.batch, shots=config.fewshot.shots,
                               num_draws=config.fewshot.num_draws, l2_reg=config.fewshot.l2_reg,
                               knn_k=config.fewshot.knn_k, seed=config.seed, data_dir=config.tfds_data_dir,
                               name=epath.Path(dataset).name, mesh=mesh)
      for dataset, train_split, test_split in config_checks.fewshot_datasets(config)]
  tx, schedule = optim.make_optimizer(optim_section(config))
  loss_fn = losses.get_loss_fn(config.loss)

  # --- The objective (config.objective) and what its step takes besides the state (a teacher's params).
  objective, abstract_frozen, frozen, frozen_flops = None, None, None, 0.
  if config.objective == 'distill':
    objective, abstract_frozen, host_frozen, frozen_flops = distillation(config, info, model, loss_fn, mesh, rules)
    frozen = teacher.put(host_frozen, abstract_frozen)

  # --- Sharded init and the compiled steps.
  programs = _compile(config, info, model, tx, schedule, loss_fn, batch_ops, mesh, rules, objective,
                      abstract_frozen)
  programs.frozen_args = () if frozen is None else (frozen,)
  if programs.flops_per_step:  # the teacher's forward is work the step does too (MFU)
    programs.flops_per_step += frozen_flops

  # --- Resume: own checkpoint -> config.resume -> config.model_init -> scratch (see the module docstring).
  ckpt = checkpointing.Checkpointer(workdir / 'checkpoints', save_every=config.checkpoint_every,
                                    keep=config.keep_checkpoints, keep_every=config.keep_checkpoint_every,
                                    barrier_timeout_s=config.multihost.barrier_timeout_s)
  state = _restore_or_init(config, workdir, ckpt, programs, train_iter, model)
  logging.info('Training %s on %s from step %d: %d devices, mesh %s.', config.model_name, config.dataset,
               int(jax.device_get(state.step)), jax.device_count(), dict(mesh.shape))

  # --- The loop (with its periodic work), then the final metrics.
  try:
    eval_metrics, step = _train(config, workdir, state, programs, ckpt, train_iter, evaluators,
                                fewshot_evaluators, replicated)
  finally:
    ckpt.close()
    train_iter.close()
  eval_metrics = {**eval_metrics, 'step': step, 'seconds': time.time() - start_time}
  if jax.process_index() == 0:
    (workdir / 'final_metrics.json').write_text(json.dumps(eval_metrics))
  return eval_metrics


# --- Distillation (config.objective='distill'): kept apart so that other objectives merge beside it.
def distillation(config: Any, info: Any, model: vit.VisionTransformer, loss_fn: Any, mesh: jax.sharding.Mesh,
                 rules: Any) -> Tuple[Any, Any, Any, float]:
  """(the distillation objective, the teacher's params as abstract arrays sharded by the student's rules, the same
  params on the host (`teacher.put` places them), the teacher's forward FLOPs per step)."""
  teacher_model, host_params = teacher.load(config, info.num_classes, info.image_size)
  abstract = teacher.abstract_params(teacher_model, host_params, info.image_size, mesh, rules)
  objective = distill.distill(model, teacher_model, loss_fn, temperature=config.distill.temperature,
                              alpha=config.distill.alpha, distill_token=bool(config.model.get('distill_token')))
  return objective, abstract, host_params, flops.model_forward_flops(teacher_model, info.image_size) * config.batch


@dataclasses.dataclass
class _Evaluator:
  """One of `config_checks.evals(config)`: metrics `<name>/...` every `every` steps and at the end."""
  name: str
  every: int
  make_batches: Callable[[], Any]

  def run(self, eval_step: Callable[..., Dict[str, jax.Array]], state: train_step.TrainState) -> Dict[str, float]:
    what = 'config.pp.test' if self.name == 'val' else f'config.evals.{self.name}.split'
    return evaluate.evaluate_all(eval_step, state, self.make_batches, prefix=self.name, what=what)


def _train(config: Any, workdir: epath.Path, state: train_step.TrainState, programs: _Programs,
           ckpt: checkpointing.Checkpointer, train_iter: Any, evaluators: List[_Evaluator],
           fewshot_evaluators: List[fewshot.FewShotEvaluator],
           replicated: jax.sharding.Sharding) -> Tuple[Dict[str, float], int]:
  """Steps from the state's step to `config.total_steps`: progress reports, checkpoints, evals, few-shot,
  preemption and the NaN guard. Returns (the last eval metrics, the last step)."""
  step = int(jax.device_get(state.step))
  metric_logging.truncate_jsonl(workdir / 'metrics.jsonl', step)
  writer = metric_logging.MetricWriter(workdir, tensorboard=config.tensorboard)
  progress = metric_logging.Progress(
      total_steps=config.total_steps, global_batch=config.batch, start_step=step,
      flops_per_step=programs.flops_per_step,
      peak=metric_logging.peak_flops(jax.devices()[0].device_kind, config.peak_flops),
      use_clu=config.tensorboard)
  profiler = metric_logging.Profiler(workdir, step + 5, config.profile_steps) if config.profile_steps else None
  preemption = Preemption()
  first_bad = jax.device_put(np.int32(-1), replicated)
  sums, window_steps = _zero_sums(replicated), 0

  def check_finite() -> None:
    bad = int(jax.device_get(first_bad))
    if bad >= 0:
      ckpt.wait()
      last = [s for s in ckpt.all_steps() if s < bad]
      where = f'step {last[-1]} in {ckpt.directory}' if last else 'none'
      raise TrainingDiverged(f'Loss or gradient norm is NaN/inf at step {bad}; stopped. Last good checkpoint: '
                             f'{where}. Lower config.base_lr or raise config.warmup_steps.')

  def periodic_work(last: bool, preempted: bool) -> Dict[str, float]:
    """Checkpoint, evaluations and few-shot when due; returns the metrics of those that ran."""
    saving = step % config.checkpoint_every == 0 or last or preempted
    due = [e for e in evaluators if last or step % e.every == 0]
    fewshot_due = fewshot_evaluators and (last or (config.fewshot.every and step % config.fewshot.every == 0))
    if not (saving or due or fewshot_due):
      return {}
    jax.block_until_ready(state)  # Training time ends here; what follows is left out of the rates.
    metrics: Dict[str, float] = {}
    with progress.paused():
      if saving:
        check_finite()
        ckpt.save(step, state, train_iter.get_state(), force=True)
      if due:
        metrics = {k: v for e in due for k, v in e.run(programs.eval_step, state).items()}
        writer.write_scalars(step, metrics)
      if fewshot_due:
        fewshot_metrics = fewshot.evaluate_all(fewshot_evaluators, state)
        writer.write_scalars(step, fewshot_metrics)
        if last:
          metrics = {**metrics, **fewshot_metrics}
    return metrics

  eval_metrics: Dict[str, float] = {}
  if step >= config.total_steps:  # A finished run started again: report its result.
    eval_metrics = {k: v for e in evaluators for k, v in e.run(programs.eval_step, state).items()}
  try:
    while step < config.total_steps:
      with progress.waiting_for_input():
        batch = next(train_iter)
      with jax.transfer_guard_device_to_host('disallow'):
        state, metrics, first_bad, sums = programs.train_step(state, batch, first_bad, sums,
                                                              *programs.frozen_args)
      step += 1
      window_steps += 1
      last = step == config.total_steps
      preempted = preemption.due(step)
      if profiler is not None:
        profiler(step)
      if step % config.progress_every == 0 or last:
        check_finite()
        scalars = {f'train/{k}': v for k, v in jax.device_get(metrics).items()}
        scalars.update({f'train/{k}': float(v) / window_steps for k, v in jax.device_get(sums).items()})
        sums, window_steps = _zero_sums(replicated), 0
        writer.write_scalars(step, {**scalars, **progress.report(step)})
      # Each evaluator's metrics carry its name: keep the newest of every one (their cadences differ).
      eval_metrics = {**eval_metrics, **periodic_work(last, preempted)}
      if preempted:
        print(f'Preempted (SIGTERM): saved step {step}; exiting.', flush=True)
        break
  finally:
    preemption.close()
    if profiler is not None:
      profiler.close()
    writer.close()
  return eval_metrics, step
