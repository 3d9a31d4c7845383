"""Speed benchmark of the real train step and of inference: images/s, FLOPs, MFU, compile time, memory.

Method (the one the issue-5 targets and `timm_baseline.py` use, tightened): synthetic images and labels already
on the device (random, never zeros), the train state donated, every function compiled ahead of time (compile time
reported apart), `warmup` untimed calls, then `reps` repetitions of `steps` calls each, each repetition closed by
`jax.block_until_ready`; the reported step time is the median repetition / steps. MFU counts the analytic model
FLOPs (`vit_jax.models.flops`: forward x3 for a train step, the convention of `timm_baseline.py`, counting the tokens
patch dropout keeps) against the
per-device peak of the loop's table (`metric_logging.PEAK_FLOPS`), a bf16 matmul peak measured in the same process
for a device the table lacks, or `peak_tflops` when given. Imports nothing from TensorFlow, TFDS, ml_collections or clu.
"""
import dataclasses
import functools
import math
import statistics
import time
import types
from typing import Any, Callable, Dict, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import models
from vit_jax.models import flops as model_flops
from vit_jax.training import losses
from vit_jax.training import metric_logging
from vit_jax.training import optim
from vit_jax.training import sharding
from vit_jax.training import train_step

# The optimizer of the pretraining presets (AdamW b1 .9, b2 .999, global-norm clip 1, decoupled weight decay on
# kernels, warmup + cosine). The schedule's numbers change no cost; they are here so the step is the real one.
PRETRAIN_OPTIMIZER = {
    'optimizer': 'adamw', 'base_lr': 1e-3, 'warmup_steps': 10_000, 'total_steps': 300_000,
    'decay_type': 'cosine', 'grad_norm_clip': 1.0, 'weight_decay': 0.1, 'b1': 0.9, 'b2': 0.999,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# XLA GPU flag presets live in scripts/benchmark.py: they must be in XLA_FLAGS before jax is imported.


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One benchmark point; every field is a lever the CLI exposes."""
  model: str = 'ViT-B_16'          # registered name or variant string ('B/16')
  resolution: int = 224
  batch: int = 128                 # global train batch
  infer_batch: Optional[int] = None  # global inference batch (default: batch)
  dtype: str = 'bfloat16'          # compute dtype; params, norms' statistics, softmax and logits stay float32
  attention_impl: str = 'xla'      # 'xla' | 'dot_product' | 'cudnn' | 'auto'
  attention_pad: int = 0           # pad the attention sequence to a multiple of this (0: off)
  patch_dropout: float = 0.        # train step only: drop this fraction of the patch tokens (FLIP)
  remat_policy: str = 'none'       # 'none' | 'full' | 'dots' | 'dots_no_batch'
  scan: bool = False
  mu_dtype: Optional[str] = None   # Adam first-moment dtype (None: float32)
  mesh: str = 'data=-1'            # 'data=-1' | 'data=4,fsdp=2' | 'fsdp=-1' ...
  rules: str = 'fsdp'              # sharding rule table: 'dp' | 'fsdp' | 'tp'
  num_classes: int = 1000
  num_layers: Optional[int] = None  # override the depth (scaled-down memory checks)
  steps: int = 10                  # calls per timed repetition
  reps: int = 5                    # timed repetitions (median reported)
  warmup: int = 2                  # untimed calls after compilation
  modes: Sequence[str] = ('train', 'infer')


def step_api() -> types.SimpleNamespace:
  """The pieces of the real training core that the benchmark times (vit_jax.training.train_step, optim, sharding)."""
  return types.SimpleNamespace(
      source='vit_jax.training.train_step', create_train_state=train_step.create_train_state,
      make_train_step=train_step.make_train_step, make_optimizer=optim.make_optimizer,
      make_mesh=sharding.make_mesh, param_shardings=sharding.param_shardings,
      batch_sharding=sharding.batch_sharding, axis_rules=sharding.axis_rules, softmax_xent=losses.softmax_xent)


def parse_mesh(spec: str) -> Dict[str, int]:
  """'data=4,fsdp=2' -> {'data': 4, 'fsdp': 2}."""
  try:
    return {k.strip(): int(v) for k, v in (part.split('=') for part in spec.split(',') if part.strip())}
  except ValueError:
    raise ValueError(f'Bad --mesh {spec!r}; write axis=size pairs such as "data=-1" or "data=4,fsdp=2".') from None


def model_config(cfg: BenchConfig) -> Dict[str, Any]:
  """The registry config of `cfg.model`, with the depth override applied and dropout off."""
  mc = models.get_config(cfg.model)
  if mc.get('transformer') is not None:
    mc['transformer'] = dict(mc['transformer'], dropout_rate=0., attention_dropout_rate=0.)
    if cfg.num_layers:
      mc['transformer']['num_layers'] = cfg.num_layers
  return mc


def build_model(cfg: BenchConfig, **overrides: Any) -> nn.Module:
  """The VisionTransformer of `cfg`; dropout off (a speed benchmark; drop-path/dropout add RNG work only)."""
  if cfg.dtype not in DTYPES:
    raise ValueError(f'Unknown dtype {cfg.dtype!r}; choose one of {", ".join(DTYPES)}.')
  kw = dict(dtype=DTYPES[cfg.dtype], attention_impl=cfg.attention_impl, remat_policy=cfg.remat_policy,
            scan=cfg.scan, attention_pad_to_multiple=cfg.attention_pad, head_zeroinit=False,
            patch_dropout=cfg.patch_dropout)
  kw.update(overrides)
  mc = model_config(cfg)
  return models.VisionTransformer(num_classes=cfg.num_classes, **mc, **kw)


def param_count(params: Any) -> int:
  """Number of parameters of a (possibly abstract) tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def train_memory_model(cfg: BenchConfig) -> Dict[str, float]:
  """Predicted device bytes of one train step on one device (docs/performance.md, section 5: ViT-g/14).

  State: float32 params, grads, Adam nu, and mu in `mu_dtype`. Activations kept for the backward pass, per layer
  and image, in the compute dtype: ~8 N D (LN inputs/outputs, q, k, v, attention output, residual) + 2 N M (MLP
  hidden before/after GELU) + H N^2 (softmax output; the 'xla' attention path) plus float32 logits H N^2 (fused
  attention keeps only H N float32 statistics instead). With remat 'full' only the N D block input is kept per
  layer, plus one layer's activations while it is recomputed.
  """
  mc = model_config(cfg)
  t = mc['transformer']
  p = mc['patches']['size'][0]
  n = (cfg.resolution // p) ** 2 + 1
  d, m, h, layers = mc['hidden_size'], t['mlp_dim'], t['num_heads'], t['num_layers']
  # Blocks; patch embedding; position embedding; cls + embedding bias + final norm; head.
  params = (layers * (4 * d * d + 2 * d * m + 9 * d + m) + p * p * 3 * d + n * d + 4 * d
            + (d + 1) * cfg.num_classes)
  act_bytes = jnp.dtype(DTYPES[cfg.dtype]).itemsize
  mu_bytes = jnp.dtype(cfg.mu_dtype or 'float32').itemsize
  if cfg.attention_impl in ('xla', 'dot_product'):  # softmax output kept in the compute dtype, its float32 logits too
    attention = act_bytes * h * n * n + 4 * h * n * n
  else:  # fused (flash) attention keeps only the float32 softmax statistics
    attention = 4 * h * n
  per_layer = act_bytes * (8 * n * d + 2 * n * m) + attention
  # Kept per layer under each remat policy: the block input (N D) plus what the policy saves; the rest is
  # recomputed, one layer at a time (`per_layer` live while it is).
  kept = {'full': act_bytes * n * d,
          'dots_no_batch': act_bytes * (6 * n * d + n * m),  # + q, k, v, out-proj, MLP Dense outputs
          'dots': act_bytes * (7 * n * d + n * m) + (4 * h * n * n if cfg.attention_impl in ('xla', 'dot_product')
                                                     else 0)}  # + attention einsums
  if cfg.remat_policy in kept:
    activations = cfg.batch * (layers * kept[cfg.remat_policy] + per_layer)
  else:
    activations = cfg.batch * layers * per_layer
  state = params * (4 + 4 + 4 + mu_bytes)
  return {'params': float(params), 'state_bytes': float(state), 'activation_bytes': float(activations),
          'total_bytes': float(state + activations)}


def programs(cfg: BenchConfig, devices: Optional[Sequence[Any]] = None) -> types.SimpleNamespace:
  """The jitted train step and forward of `cfg` with their shardings and abstract arguments (nothing allocated).

  `train` is the real step (state donated), `infer` the forward on `infer_params` (params in the compute dtype);
  lower them inside `axis_rules()`. The mesh spans `devices` (default: all). `run` times these functions,
  `compiled_train_memory` and `vit_jax.perf.lowering` compile or lower them.
  """
  api = step_api()
  mesh = api.make_mesh(parse_mesh(cfg.mesh), devices)
  infer_batch = cfg.infer_batch or cfg.batch
  _check_batch('--batch', cfg.batch, mesh)
  _check_batch('--infer_batch', infer_batch, mesh)
  model = build_model(cfg)
  tx, _ = api.make_optimizer(dict(PRETRAIN_OPTIMIZER, mu_dtype=cfg.mu_dtype))
  input_shape = (cfg.batch, cfg.resolution, cfg.resolution, 3)
  init = functools.partial(api.create_train_state, model, tx, input_shape=input_shape)
  boxed = jax.eval_shape(functools.partial(init, unbox=False), jax.random.PRNGKey(0))
  state_sharding = api.param_shardings(boxed, mesh, cfg.rules)
  batch_sharding = api.batch_sharding(mesh)
  state = jax.eval_shape(init, jax.random.PRNGKey(0))
  compute = DTYPES[cfg.dtype]
  step = api.make_train_step(model, tx, api.softmax_xent)
  forward = lambda p, x: model.apply({'params': p}, x, train=False)
  return types.SimpleNamespace(
      api=api, mesh=mesh, model=model, init=init, state_sharding=state_sharding, batch_sharding=batch_sharding,
      infer_batch=infer_batch,
      train=jax.jit(step, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None),
                    donate_argnums=0),
      infer=jax.jit(forward, in_shardings=(state_sharding.params, batch_sharding)),
      cast=jax.jit(lambda p: jax.tree.map(lambda x: x.astype(compute), p), out_shardings=state_sharding.params),
      state=state,
      batch={'image': jax.ShapeDtypeStruct(input_shape, jnp.float32),
             'label': jax.ShapeDtypeStruct((cfg.batch, cfg.num_classes), jnp.float32)},
      infer_params=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, compute), state.params),
      images=jax.ShapeDtypeStruct((infer_batch, cfg.resolution, cfg.resolution, 3), jnp.float32),
      axis_rules=lambda: api.axis_rules(mesh, cfg.rules))


def compiled_train_memory(cfg: BenchConfig) -> Dict[str, float]:
  """XLA's memory analysis of the compiled train step of `cfg` (per device), without running it."""
  prog = programs(cfg)
  with prog.axis_rules():
    m = prog.train.lower(prog.state, prog.batch).compile().memory_analysis()
  return {'argument_bytes': float(m.argument_size_in_bytes), 'output_bytes': float(m.output_size_in_bytes),
          'temp_bytes': float(m.temp_size_in_bytes), 'alias_bytes': float(m.alias_size_in_bytes),
          'total_bytes': float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                               - m.alias_size_in_bytes)}


def _cost_flops(compiled: Any) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def _compiled_bytes(compiled: Any) -> float:
  """Device bytes the compiled program needs: arguments + outputs + temporaries - donated (aliased) bytes."""
  m = compiled.memory_analysis()
  if m is None:
    return float('nan')
  return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def peak_device_bytes() -> Optional[int]:
  """`peak_bytes_in_use` of device 0 since the process started (None where the backend has no stats, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats or 'peak_bytes_in_use' not in stats else int(stats['peak_bytes_in_use'])


def time_calls(call: Callable[[], Any], *, steps: int, reps: int, warmup: int) -> List[float]:
  """Seconds per call of each timed repetition (`steps` calls, then block_until_ready), warm-up excluded."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    out = None
    for _ in range(steps):
      out = call()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / steps)
  return times


def measure_peak_tflops(n: Optional[int] = None, dtype: Any = jnp.bfloat16, reps: int = 5) -> float:
  """TFLOP/s of an n^3 matmul in `dtype` on device 0 (n = 8192 on accelerators, 512 on CPU), median of reps."""
  if n is None:
    n = 512 if jax.default_backend() == 'cpu' else 8192
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  calls = 3 if jax.default_backend() == 'cpu' else 20
  times = time_calls(lambda: matmul(a, b), steps=calls, reps=reps, warmup=2)
  return 2 * n**3 / statistics.median(times) / 1e12


def default_peak_tflops(dtype: str = 'bfloat16') -> tuple:
  """(per-device peak TFLOP/s, source): the training loop's table (`metric_logging.PEAK_FLOPS`) for a known
  device, so the benchmark's MFU and the loop's `progress/mfu` share one denominator; else a measured matmul."""
  table = metric_logging.peak_flops(jax.devices()[0].device_kind)
  if table is not None:
    return table / 1e12, 'table'
  return measure_peak_tflops(dtype=DTYPES[dtype]), 'measured'


def _synthetic_batch(batch: int, resolution: int, num_classes: int, sharding: Any) -> Dict[str, jax.Array]:
  """Random images in [-1, 1] and one-hot labels, created on the devices with `sharding`."""
  def make(key):
    ki, kl = jax.random.split(key)
    images = jax.random.uniform(ki, (batch, resolution, resolution, 3), jnp.float32, -1., 1.)
    labels = jax.nn.one_hot(jax.random.randint(kl, (batch,), 0, num_classes), num_classes)
    return {'image': images, 'label': labels}
  return jax.jit(make, out_shardings=sharding)(jax.random.PRNGKey(1))


def _check_batch(name: str, batch: int, mesh: Any) -> None:
  shards = mesh.shape['data'] * mesh.shape['fsdp']
  if batch % shards:
    raise ValueError(f'{name} {batch} is not divisible by the {shards} data shards of the mesh; change it.')


def run(cfg: BenchConfig, peak_tflops: Optional[float] = None) -> Dict[str, Any]:
  """Benchmarks one configuration; returns a flat dict of results (see `COLUMNS`)."""
  prog = programs(cfg)
  infer_batch = prog.infer_batch
  mc = model_config(cfg)
  res: Dict[str, Any] = {
      'model': cfg.model, 'res': cfg.resolution, 'batch': cfg.batch, 'infer_batch': infer_batch,
      'dtype': cfg.dtype, 'attn': cfg.attention_impl, 'attn_pad': cfg.attention_pad,
      'patch_dropout': cfg.patch_dropout, 'remat': cfg.remat_policy,
      'scan': cfg.scan, 'mu_dtype': cfg.mu_dtype or 'float32', 'mesh': cfg.mesh, 'rules': cfg.rules,
      'devices': len(jax.devices()), 'device_kind': jax.devices()[0].device_kind, 'step_source': prog.api.source,
      'layers': mc['transformer']['num_layers'] if mc.get('transformer') else 0,
  }
  state = jax.jit(prog.init, out_shardings=prog.state_sharding)(jax.random.PRNGKey(0))
  res['params_M'] = param_count(state.params) / 1e6

  if 'train' in cfg.modes:
    batch = _synthetic_batch(cfg.batch, cfg.resolution, cfg.num_classes, prog.batch_sharding)
    # The mesh and rule contexts are entered around lowering, not inside the traced step.
    start = time.perf_counter()
    with prog.axis_rules():
      compiled = prog.train.lower(state, batch).compile()
    res['compile_s'] = time.perf_counter() - start
    res['train_mem_compiled_GB'] = _compiled_bytes(compiled) / 1e9

    holder = [state]
    def train_call():
      holder[0], metrics = compiled(holder[0], batch)
      return metrics
    times = time_calls(train_call, steps=cfg.steps, reps=cfg.reps, warmup=cfg.warmup)
    state = holder[0]
    res['train_step_ms'] = 1e3 * statistics.median(times)
    res['train_spread_%'] = 100 * (max(times) - min(times)) / statistics.median(times)
    res['train_img_s'] = cfg.batch / statistics.median(times)
    del batch

  if 'infer' in cfg.modes:
    # Inference weights in the compute dtype (as timm_baseline's `.to(torch.bfloat16)`), cast once, untimed.
    infer_params = prog.cast(state.params)
    images = _synthetic_batch(infer_batch, cfg.resolution, cfg.num_classes, prog.batch_sharding)['image']
    start = time.perf_counter()
    with prog.axis_rules():
      compiled = prog.infer.lower(infer_params, images).compile()
    res['infer_compile_s'] = time.perf_counter() - start
    times = time_calls(lambda: compiled(infer_params, images), steps=cfg.steps, reps=cfg.reps, warmup=cfg.warmup)
    res['infer_ms'] = 1e3 * statistics.median(times)
    res['infer_img_s'] = infer_batch / statistics.median(times)
    del images, infer_params

  res['fwd_GFLOP_xla'] = xla_forward_flops(cfg) / 1e9
  res['fwd_GFLOP_analytic'] = model_flops.model_forward_flops(prog.model, cfg.resolution) / 1e9
  # A train step processes only the patches that patch dropout keeps.
  res['train_GFLOP_analytic'] = 3 * model_flops.model_forward_flops(prog.model, cfg.resolution, train=True) / 1e9
  if peak_tflops is None:
    peak_tflops, res['peak_source'] = default_peak_tflops(cfg.dtype)
  else:
    res['peak_source'] = 'given'
  res['peak_TFLOPs'] = peak_tflops * len(jax.devices())  # MFU is per device: the peak scales with the mesh.
  if 'train_img_s' in res:
    res['train_TFLOPs'] = res['train_GFLOP_analytic'] * res['train_img_s'] / 1e3
    res['train_mfu_%'] = 100 * res['train_TFLOPs'] / res['peak_TFLOPs']
  if 'infer_img_s' in res:
    res['infer_TFLOPs'] = res['fwd_GFLOP_analytic'] * res['infer_img_s'] / 1e3
    res['infer_mfu_%'] = 100 * res['infer_TFLOPs'] / res['peak_TFLOPs']
  peak = peak_device_bytes()
  res['peak_mem_GB'] = 'n/a' if peak is None else peak / 1e9
  return res


def xla_forward_flops(cfg: BenchConfig) -> float:
  """FLOPs per image from XLA's cost analysis of the compiled forward (float32, 'xla' attention, batch 1).

  Compiled unrolled, without remat and with the einsum attention: XLA's cost analysis counts a while-loop (scan)
  body once and a cuDNN custom call as zero FLOPs. Batch 1 on one device keeps the count mesh-independent.
  """
  return _xla_forward_flops(cfg.model, cfg.resolution, cfg.num_layers, cfg.num_classes)


@functools.lru_cache(maxsize=None)
def _xla_forward_flops(name: str, resolution: int, num_layers: Optional[int], num_classes: int) -> float:
  cfg = BenchConfig(model=name, resolution=resolution, num_layers=num_layers, num_classes=num_classes,
                    dtype='float32')
  model = build_model(cfg)
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False)['params'])
  fwd = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  return _cost_flops(fwd.lower(params, x).compile())


# Table layout: (column, result key, format).
COLUMNS = (
    ('model', 'model', '{}'), ('res', 'res', '{}'), ('batch', 'batch', '{}'), ('dtype', 'dtype', '{}'),
    ('attn', 'attn', '{}'), ('pad', 'attn_pad', '{}'), ('pdrop', 'patch_dropout', '{}'),
    ('remat', 'remat', '{}'), ('scan', 'scan', '{}'),
    ('mu', 'mu_dtype', '{}'), ('mesh', 'mesh', '{}'), ('compile s', 'compile_s', '{:.1f}'),
    ('train img/s', 'train_img_s', '{:.1f}'), ('step ms', 'train_step_ms', '{:.2f}'),
    ('±%', 'train_spread_%', '{:.0f}'), ('train MFU%', 'train_mfu_%', '{:.1f}'),
    ('infer img/s', 'infer_img_s', '{:.1f}'), ('infer MFU%', 'infer_mfu_%', '{:.1f}'),
    ('GFLOP/img xla', 'fwd_GFLOP_xla', '{:.3g}'), ('analytic', 'fwd_GFLOP_analytic', '{:.3g}'),
    ('peak TF/s', 'peak_TFLOPs', '{:.3g}'), ('peak mem GB', 'peak_mem_GB', '{:.2f}'),
    ('compiled GB', 'train_mem_compiled_GB', '{:.2f}'),
)


def _fmt(fmt: str, value: Any) -> str:
  if value is None:
    return '-'
  try:
    return fmt.format(value)
  except (ValueError, TypeError):
    return str(value)


def format_table(rows: Sequence[Dict[str, Any]], extra: Sequence[tuple] = ()) -> str:
  """Markdown table of result dicts; columns absent from every row are left out."""
  cols = [c for c in tuple(COLUMNS) + tuple(extra) if any(c[1] in r for r in rows)]
  cells = [[_fmt(f, r.get(k)) for _, k, f in cols] for r in rows]
  header = [c[0] for c in cols]
  widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
  line = lambda xs: '| ' + ' | '.join(x.rjust(w) for x, w in zip(xs, widths)) + ' |'
  return '\n'.join([line(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] + [line(r) for r in cells])
