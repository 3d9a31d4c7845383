"""The GPU (and TPU) program of a benchmark point or an experiment config, built on any machine: lower for CUDA
or TPU, count what the accelerator would run.

`lower_config` lowers the training loop's own step for a config (`loop.step_program`); tests/perf/lowering_test.py
pins every preset's counts for CUDA and TPU (docs/sharding.md reads them). `all_gathers` lists the gathers of a
program compiled on the accelerators themselves.

`jax.jit(...).trace(...).lower(lowering_platforms=('cuda',))` produces the StableHLO that a GPU would compile,
on a CPU-only install. Without a GPU, jax's cuDNN attention rule cannot ask for the cuDNN version and compute
capability, so `assume_gpu` supplies them (an H100 with cuDNN 9.10 by default); on a GPU nothing is patched.
`summarize` counts, over the call graph, the ops that decide speed: cuDNN fused-attention calls (forward and
backward), matmuls by operand dtype, transposes, convolutions.

  python scripts/benchmark.py --model ViT-B_16 --batch 512 --lower_only cuda --sweep --sweep_attn cudnn,xla
"""
import collections
import contextlib
import re
from typing import Any, Dict, Iterator, Optional, Sequence

import jax

from vit_jax.data import mixing
from vit_jax.data import pipeline as input_pipeline
from vit_jax.models import build
from vit_jax.perf import benchmarking
from vit_jax.training import loop
from vit_jax.training import config_checks
from vit_jax.training import losses
from vit_jax.training import optim
from vit_jax.training import sharding

FMHA_FORWARD = '__cudnn$fmhaSoftmax'
FMHA_BACKWARD = '__cudnn$fmhaSoftmaxBackward'


@contextlib.contextmanager
def assume_gpu(cudnn_version: int = 91000, compute_capability: str = '9.0') -> Iterator[None]:
  """Lets jax's cuDNN attention rule trace without a GPU, as if on `compute_capability` with `cudnn_version`."""
  if jax.devices()[0].platform == 'gpu':  # the real versions are there
    yield
    return
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  names = ('check_cudnn_version', 'check_compute_capability', 'is_cuda_compute_capability_equal')
  if not all(hasattr(fa, n) for n in names):
    raise RuntimeError(f'jax {jax.__version__} changed its cuDNN attention checks ({", ".join(names)}); '
                       'update vit_jax.perf.lowering.assume_gpu to lower cuDNN attention without a GPU.')
  saved = {n: getattr(fa, n) for n in names}
  target = tuple(int(x) for x in compute_capability.split('.'))
  fa.check_cudnn_version = lambda: cudnn_version
  fa.check_compute_capability = lambda c: target >= tuple(int(x) for x in c.split('.'))
  fa.is_cuda_compute_capability_equal = lambda c: target == tuple(int(x) for x in c.split('.'))
  try:
    yield
  finally:
    for n, f in saved.items():
      setattr(fa, n, f)


@contextlib.contextmanager
def traced_as_on(platform: str) -> Iterator[None]:
  """Traces model code as on `platform` ('cuda', 'rocm', 'tpu', 'cpu'): `jax.default_backend()`, which 'auto'
  attention asks, answers for it, and for CUDA `assume_gpu` answers jax's cuDNN checks."""
  backend = {'cuda': 'gpu', 'rocm': 'gpu'}.get(platform, platform)
  saved = jax.default_backend
  jax.default_backend = lambda: backend
  try:
    with assume_gpu() if platform == 'cuda' else contextlib.nullcontext():
      yield
  finally:
    jax.default_backend = saved


def config_program(config: Any, num_classes: int, image_size: Optional[int] = None,
                   devices: Optional[Sequence[jax.Device]] = None) -> loop.StepProgram:
  """The training loop's own step for an experiment config, not compiled: `config.mesh` over `devices` (default:
  all), `config.sharding_rules`, the model of `config.model` (dtype, remat, scan, attention), the optimizer and
  loss, at `config.batch` uint8 images of `image_size` (default `config.pp.crop`) pixels with integer labels, the
  preset's mixing and label ops done in the step as the loop does them; under distillation the teacher that
  `config.teacher` names (read from its file) as the step's fifth argument."""
  return config_step(config, num_classes, image_size, sharding.make_mesh(dict(config.mesh), devices))[0]


def config_step(config: Any, num_classes: int, image_size: Optional[int],
                mesh: jax.sharding.Mesh) -> tuple[loop.StepProgram, Any]:
  """`config_program` on a given mesh, and the model it builds."""
  model = build.build_model(config.model_name, config.model, num_classes)
  tx, schedule = optim.make_optimizer(loop.optim_section(config))
  info = input_pipeline.DatasetInfo(num_classes=num_classes, num_train=0, num_eval=0,
                                    image_size=image_size or config.pp.crop, multi_label=False)
  batch_ops = mixing.BatchOps.from_pp(config_checks.pp_dict(config.pp), num_classes)
  loss_fn, rules = losses.get_loss_fn(config.loss), sharding.get_rules(config.sharding_rules)
  objective, frozen = None, None
  if config.get('objective') == 'distill':  # the teacher read from config.teacher; its params stay abstract
    objective, frozen, _, _ = loop.distillation(config, info, model, loss_fn, mesh, rules)
  program = loop.step_program(config, info, model, tx, schedule, loss_fn, batch_ops, mesh, rules, objective, frozen)
  return program, model


def lower_config(config: Any, num_classes: int, platform: str = 'cuda',
                 devices: Optional[Sequence[jax.Device]] = None) -> str:
  """StableHLO of `config_program(config, ...)`'s step lowered for `platform`, traced as on it."""
  program = config_program(config, num_classes, devices=devices)
  with traced_as_on(platform):
    return program.step.trace(*program.args).lower(lowering_platforms=(platform,)).as_text()


def lower(cfg: benchmarking.BenchConfig, modes: Sequence[str] = ('train',), platform: str = 'cuda',
          num_devices: Optional[int] = 1) -> Dict[str, str]:
  """{mode: StableHLO text} of the benchmark's train step ('train') and forward ('infer') lowered for `platform`.

  The mesh spans the first `num_devices` local devices (None: all). On a mesh of more than one device jax wraps
  cuDNN attention in a `CustomSPMDPartitioning` call that XLA expands later (`summarize` counts those apart).
  """
  unknown = set(modes) - {'train', 'infer'}
  if unknown:
    raise ValueError(f"Unknown modes {sorted(unknown)}; use 'train' and/or 'infer'.")
  devices = jax.devices() if num_devices is None else jax.devices()[:num_devices]
  with assume_gpu():
    prog = benchmarking.programs(cfg, devices)
    calls = {'train': (prog.train, (prog.state, prog.batch)), 'infer': (prog.infer, (prog.infer_params, prog.images))}
    with prog.axis_rules():
      return {m: calls[m][0].trace(*calls[m][1]).lower(lowering_platforms=(platform,)).as_text() for m in modes}


_NAME = r'@("[^"]+"|[\w.$-]+)'  # symbol names are quoted when not identifiers (@"<lambda>")
_FUNC = re.compile(rf'^\s*func\.func (?:public |private )?{_NAME}\(', re.M)
_CALL = re.compile(rf'\bcall {_NAME}\(')
_CUSTOM = re.compile(rf'(?:%[\w.-]+(?::(\d+))? = )?stablehlo\.custom_call {_NAME}\(')
_TENSOR = r'tensor<(?:\d+x)*(\w+)>'
_DOT = re.compile(rf'stablehlo\.dot_general .*: \({_TENSOR}, {_TENSOR}\) -> {_TENSOR}')
_OP = re.compile(r'= (stablehlo\.\w+)')
_VOID_OP = re.compile(r'^\s*(stablehlo\.(?:send|outfeed))\b')  # ops without results: host transfers
# Host round trips inside a step (jax.debug.print/callback, io_callback, infeed/outfeed): each one stalls it.
_HOST_OPS = ('stablehlo.send', 'stablehlo.recv', 'stablehlo.outfeed', 'stablehlo.infeed')


def _function_counts(text: str) -> Dict[str, Dict[str, Any]]:
  """Per function: its own op counts and the functions it calls (with multiplicity)."""
  starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(text)] + [(len(text), None)]
  funcs = {}
  for (begin, name), (end, _) in zip(starts, starts[1:]):
    body = text[begin:end]
    ops = collections.Counter()
    for line in body.splitlines():
      custom = _CUSTOM.search(line)
      if custom:
        results, target = custom.groups()
        ops['custom_call:' + target] += 1
        # jax's cuDNN attention under a mesh: out (a forward nothing differentiates), (out, stats) or (dq, dk, dv)
        if target == 'CustomSPMDPartitioning':
          ops[f'spmd_results:{results or 1}'] += 1
      dot = _DOT.search(line)
      if dot:
        lhs, rhs, out = dot.groups()
        ops[f'dot:{lhs}x{rhs}->{out}'] += 1
      op = _OP.search(line) or _VOID_OP.search(line)
      if op:
        ops[op.group(1)] += 1
    funcs[name] = {'ops': ops, 'calls': collections.Counter(_CALL.findall(body))}
  return funcs


def summarize(text: str) -> Dict[str, int]:
  """Op counts of a lowered module, following calls from @main (a scan body is counted once, as written)."""
  funcs = _function_counts(text)
  memo: Dict[str, collections.Counter] = {}

  def total(name: str) -> collections.Counter:
    if name not in memo:
      counts = collections.Counter(funcs[name]['ops'])
      for callee, times in funcs[name]['calls'].items():
        for k, v in total(callee).items():
          counts[k] += v * times
      memo[name] = counts
    return memo[name]

  counts = total('main')
  dots = {k[4:]: v for k, v in counts.items() if k.startswith('dot:')}
  customs = {k[12:]: v for k, v in counts.items() if k.startswith('custom_call:')}
  callbacks = sum(v for k, v in customs.items() if 'callback' in k)
  return {
      'fmha_fwd': customs.get(FMHA_FORWARD, 0),
      'fmha_bwd': customs.get(FMHA_BACKWARD, 0),
      'spmd_partitioned_calls': customs.get('CustomSPMDPartitioning', 0),
      'spmd_fmha_fwd': counts.get('spmd_results:2', 0),
      'spmd_fmha_bwd': counts.get('spmd_results:3', 0),
      'spmd_fmha_fwd_only': counts.get('spmd_results:1', 0),  # no stats kept: inference, a frozen teacher
      'host_callbacks': callbacks + sum(counts.get(k, 0) for k in _HOST_OPS),
      'other_custom_calls': sum(v for k, v in customs.items()
                                if k not in (FMHA_FORWARD, FMHA_BACKWARD, 'CustomSPMDPartitioning')) - callbacks,
      'dots': sum(dots.values()),
      'dots_bf16_in': sum(v for k, v in dots.items() if k.startswith('bf16xbf16')),
      'dots_f32_in': sum(v for k, v in dots.items() if k.startswith('f32xf32')),
      'dots_by_type': dict(sorted(dots.items())),
      'convolutions': counts.get('stablehlo.convolution', 0),
      'transposes': counts.get('stablehlo.transpose', 0),
      'while_loops': counts.get('stablehlo.while', 0),
      'ops': sum(v for k, v in counts.items() if k.startswith('stablehlo.')),
  }


_DEF = re.compile(r'^\s*(%[\w#]+)(?::\d+)? = (.*)$')
_SPMD_CALL = re.compile(r'custom_call @CustomSPMDPartitioning\(([^)]*)\).*: \(([^)]*)\) ->')
_CONSTRAINT = re.compile(r'sdy\.sharding_constraint %[\w#]+ <@\w+, \[(.*)\]>')


def seqlen_shardings(text: str) -> list:
  """For each int32 operand of each partitioned cuDNN attention call (its q/kv sequence lengths): the dimension
  shardings of the `sdy.sharding_constraint` that defines it, e.g. '{"data", "fsdp"}', or None when unconstrained."""
  out = []
  for body in re.split(r'^\s*func\.func ', text, flags=re.M):
    defs = {}
    for line in body.splitlines():
      d = _DEF.match(line)
      if d:
        defs[d.group(1)] = d.group(2)
      call = _SPMD_CALL.search(line)
      if not call:
        continue
      names = [a.strip() for a in call.group(1).split(',')]
      types = re.findall(r'tensor<[^>]*>', call.group(2))
      for name, typ in zip(names, types):
        if re.fullmatch(r'tensor<\d+xi32>', typ):
          constraint = _CONSTRAINT.search(defs.get(name, ''))
          out.append(constraint.group(1) if constraint else None)
  return out


def lowering_row(cfg: benchmarking.BenchConfig, platform: str = 'cuda', num_devices: Optional[int] = 1
                 ) -> Dict[str, Any]:
  """A benchmark-table row of what `cfg` lowers to on `platform`, per mode in `cfg.modes` (no timing)."""
  row: Dict[str, Any] = {'model': cfg.model, 'res': cfg.resolution, 'batch': cfg.batch, 'dtype': cfg.dtype,
                         'attn': cfg.attention_impl, 'attn_pad': cfg.attention_pad, 'remat': cfg.remat_policy,
                         'scan': cfg.scan, 'mu_dtype': cfg.mu_dtype or 'float32', 'mesh': cfg.mesh,
                         'platform': platform, 'devices': num_devices or len(jax.devices())}
  for mode, text in lower(cfg, cfg.modes, platform, num_devices).items():
    for key, value in summarize(text).items():
      row[f'{mode}_{key}'] = value
  return row


COLUMNS = tuple(
    (f'{mode} {title}', f'{mode}_{key}', '{}') for mode in ('train', 'infer') for title, key in (
        ('fMHA fwd', 'fmha_fwd'), ('fMHA bwd', 'fmha_bwd'), ('dots bf16', 'dots_bf16_in'),
        ('dots f32', 'dots_f32_in'), ('transposes', 'transposes'), ('while', 'while_loops'), ('ops', 'ops')))


_GATHER = re.compile(r'= (.*?) all-gather(?:-start)?\(')
_ARRAY = re.compile(r'(\w+)\[([\d,]*)\]')


def all_gathers(hlo: str) -> collections.Counter:
  """(dtype, shape) -> count of the arrays all-gathered in a compiled (partitioned) HLO module's text.

  Async (`all-gather-start`) and combined gathers list several arrays, the shards and the gathered results; a
  gathered weight appears with its full shape.
  """
  found = collections.Counter()
  for m in _GATHER.finditer(hlo):
    for dtype, dims in _ARRAY.findall(m.group(1)):
      found[(dtype, tuple(int(d) for d in dims.split(',') if d))] += 1
  return found

