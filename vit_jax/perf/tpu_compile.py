"""A preset's real train step compiled for a TPU slice that is not there: memory per device and a step-time estimate.

With libtpu installed (`pip install 'jax[tpu]'`), `jax.experimental.topologies.get_topology_desc` gives the devices
of any TPU slice the installed libtpu knows; the loop's own jitted, donated step (`loop.jit_step`: mesh, logical-axis
rules, dtype, remat, scan, accumulation, optimizer) lowered onto a mesh of them compiles with the real TPU compiler.
`compile_report` returns what that compiler says: argument, output and temporary bytes per device against the
chip's HBM, the compiled FLOPs and bytes per device, and a step time:

  * the compiler's cost-model time (`cost_analysis()['optimal_seconds']`) where it is sound: the program has no
    while loop (a loop body is costed once, not once per trip: `config.model.scan`, `config.accum_steps > 1`) and
    it is not below the roofline. It goes negative, as if each op it cannot cost counted -1 s (seen: -0.9999,
    -2.0, -4.0, -7.999 on small ViT steps, with and without loops), and a positive value may hide such a term;
    `estimate_step` states which case it met;
  * otherwise a roofline: max(compiled FLOPs / peak FLOP/s, compiled bytes / HBM bandwidth) per device, with the
    FLOPs of a loop body scaled up by the trips the compiled count misses (`roofline_seconds`). A roofline is a
    ceiling on speed (perfect overlap at peak throughput), so the MFU it implies is a ceiling too.

The report says which estimate it is. Nothing runs on a device; nothing needs a dataset (the class count comes from
`config.pp.num_classes`, a table of known datasets, or `num_classes`).
"""
import dataclasses
import math
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

GiB = 2 ** 30


class CompileCheckError(ValueError):
  """A user mistake (unknown topology, missing libtpu, batch not divisible); the message is one line."""


class DoesNotFit(RuntimeError):
  """The TPU compiler itself refused the step: it needs more HBM than the chip has (its one-line reason)."""


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures of a TPU generation (Cloud TPU system architecture pages) and how libtpu names it."""
  libtpu: str            # prefix of libtpu's topology names ('v4' in 'v4:4x4x8')
  device_kind: str       # jax's device_kind of its devices
  hbm_bytes: float       # HBM per chip
  hbm_bandwidth: float   # bytes/s per chip
  peak_flops: float      # bf16 FLOP/s per chip
  cores_per_chip: int    # TensorCores per chip
  megacore: bool         # the cores of a chip form one jax device
  dims: int              # 2D or 3D torus
  name_counts_cores: bool  # 'v4-256' counts TensorCores (v2-v5p); 'v5litepod-16' / 'v6e-16' count chips

  @property
  def devices_per_chip(self) -> int:
    return 1 if self.megacore else self.cores_per_chip


CHIPS: Dict[str, Chip] = {
    'v3': Chip('v3', 'TPU v3', 32 * GiB, 900e9, 123e12, 2, False, 2, True),
    'v4': Chip('v4', 'TPU v4', 32 * GiB, 1228e9, 275e12, 2, True, 3, True),
    'v5p': Chip('v5p', 'TPU v5', 95 * GiB, 2765e9, 459e12, 2, True, 3, True),
    'v5e': Chip('v5e', 'TPU v5 lite', 16 * GiB, 819e9, 197e12, 1, False, 2, False),
    'v6e': Chip('v6e', 'TPU v6 lite', 32 * GiB, 1640e9, 918e12, 1, False, 2, False),
}
_ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e', 'v6': 'v6e'}

# Class counts of datasets the presets name, for configs that leave config.pp.num_classes unset.
KNOWN_CLASSES = {'imagenet21k': 21843, 'imagenet2012': 1000, 'cifar10': 10, 'cifar100': 100,
                 'oxford_iiit_pet': 37, 'oxford_flowers102': 102, 'digits': 10}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice (or several): the chip, libtpu's name of one slice's chip grid, and the slice count."""
  name: str
  chip: Chip
  grid: Tuple[int, ...]
  num_slices: int = 1

  @property
  def libtpu_name(self) -> str:
    return f'{self.chip.libtpu}:{"x".join(map(str, self.grid))}'

  @property
  def num_devices(self) -> int:
    return math.prod(self.grid) * self.chip.devices_per_chip * self.num_slices


def _grid(chips: int, dims: int, name: str) -> Tuple[int, ...]:
  """Cloud TPU's default chip grid for a slice of `chips` chips (v4-256: 4x4x8; v6e-256: 16x16)."""
  grid = [2, 2, 1][:dims] if chips >= 4 else [1] * dims
  while math.prod(grid) < chips:  # doubling the last of the smallest sides gives 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...
    i = max(j for j, g in enumerate(grid) if g == min(grid))
    grid[i] *= 2
  if chips < 4:
    grid[-1 if dims == 2 else 1] = chips
  if math.prod(grid) != chips:
    raise CompileCheckError(f'--topology={name!r}: {chips} chips is not a Cloud TPU slice size (1, 4, 8, 16, ... chips).')
  return tuple(grid)


def parse_topology(text: str) -> Topology:
  """'v4-256', '2xv5p-128' (two slices), 'v5litepod-16', 'v6e-256', 'v3-32', or libtpu's own 'v4:4x4x8'."""
  m = re.fullmatch(r'(?:(\d+)x)?([a-z0-9]+?)([-:])([0-9x]+)', text.strip().lower())
  kind = m and _ALIASES.get(m.group(2), m.group(2))
  if not m or kind not in CHIPS:
    raise CompileCheckError(f'--topology={text!r} is not a TPU slice; write e.g. v4-256, v5p-128, v5litepod-16, '
                            f'v6e-256, 2xv4-256 (two slices) or v4:4x4x8 ({", ".join(CHIPS)}).')
  chip, num_slices = CHIPS[kind], int(m.group(1) or 1)
  if m.group(3) == ':':
    grid = tuple(int(g) for g in m.group(4).split('x'))
    if len(grid) != chip.dims:
      raise CompileCheckError(f'--topology={text!r}: {kind} slices are {chip.dims}D, e.g. '
                              f'{kind}:{"x".join(["2"] * chip.dims)}.')
  else:
    count = int(m.group(4))
    if chip.name_counts_cores and count % chip.cores_per_chip:
      raise CompileCheckError(f'--topology={text!r}: {kind}-N counts TensorCores ({chip.cores_per_chip} per chip); '
                              f'use a multiple of {chip.cores_per_chip * 4}, e.g. {kind}-8.')
    grid = _grid(count // chip.cores_per_chip if chip.name_counts_cores else count, chip.dims, text)
  return Topology(text, chip, grid, num_slices)


def libtpu_missing() -> Optional[str]:
  """None when libtpu is installed, else the one line that says what to install."""
  path = os.environ.get('TPU_LIBRARY_PATH')  # set by `import libtpu`, or by hand to a libtpu.so
  if path and os.path.isfile(path):
    return None
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return (f"libtpu is not installed, so the TPU compiler is missing: pip install 'jax[tpu]=={jax.__version__}' "
            '(on this CPU machine too; nothing runs on a TPU).')
  return None


def topology_devices(topology: Topology) -> Sequence[jax.Device]:
  """Compile-only devices of `topology` from the installed libtpu."""
  missing = libtpu_missing()
  if missing:
    raise CompileCheckError(missing)
  # libtpu looks for a TPU VM's metadata when it loads; say there is none (compiling needs none).
  for key, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_ACCELERATOR_TYPE', 'v4-8'),
                     ('TPU_WORKER_HOSTNAMES', 'localhost'), ('TPU_WORKER_ID', '0'),
                     ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')):  # compile-only: no TPU to guard with libtpu's lockfile
    os.environ.setdefault(key, value)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  chips_per_host = None if math.prod(topology.grid) >= 4 else tuple(topology.grid) + (1,) * (3 - len(topology.grid))
  kwargs = {'chip_config_name': 'megacore' if topology.chip.megacore else 'default',
            'num_slices': topology.num_slices}
  if chips_per_host:
    kwargs['chips_per_host_bounds'] = chips_per_host
  try:
    return topologies.get_topology_desc(topology.libtpu_name, 'tpu', **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except  # libtpu's JaxRuntimeError, one line
    raise CompileCheckError(f'libtpu does not know --topology={topology.name!r} ({topology.libtpu_name}): '
                            f'{str(e).splitlines()[0]}') from None


def num_classes_of(config: Any, num_classes: Optional[int] = None) -> int:
  """The class count: `num_classes`, else config.pp.num_classes, else KNOWN_CLASSES of the dataset's last path part."""
  if num_classes:
    return num_classes
  if config.pp.get('num_classes'):
    return int(config.pp.num_classes)
  name = str(config.dataset).rstrip('/').split('/')[-1].split(':')[0]
  if name in KNOWN_CLASSES:
    return KNOWN_CLASSES[name]
  raise CompileCheckError(f'config.dataset={config.dataset!r}: unknown class count; pass '
                          '--config.pp.num_classes=N.')


@dataclasses.dataclass
class Report:
  """What the TPU compiler says about one train step, per device unless named global."""
  topology: str
  libtpu_name: str
  device_kind: str
  num_devices: int
  mesh: Dict[str, int]
  global_batch: int
  image_size: int
  num_classes: int
  argument_bytes: float
  output_bytes: float
  alias_bytes: float
  temp_bytes: float
  code_bytes: float
  hbm_bytes: float
  compiled_flops: float
  compiled_bytes_accessed: float
  model_flops: float          # analytic model FLOPs per device (models/flops.py; what MFU counts)
  counted_model_flops: float  # the part of model_flops that cost_analysis sees: loop bodies once
  optimal_seconds: Optional[float]
  has_loops: bool
  peak_flops: float
  hbm_bandwidth: float
  compile_seconds: float
  step_seconds: float = 0.
  estimate: str = ''

  @property
  def total_bytes(self) -> float:
    """Peak HBM use: arguments + outputs not aliased to (donated) arguments + temporaries + code."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

  @property
  def fits(self) -> Optional[bool]:
    """None where the chip's HBM is unknown (CPU, GPU)."""
    return self.total_bytes <= self.hbm_bytes if self.hbm_bytes else None

  @property
  def margin_bytes(self) -> float:
    return self.hbm_bytes - self.total_bytes

  @property
  def images_per_second(self) -> float:
    return self.global_batch / self.step_seconds if self.step_seconds else 0.

  @property
  def mfu(self) -> float:
    return self.model_flops / (self.step_seconds * self.peak_flops) if self.step_seconds else 0.

  def as_dict(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(total_bytes=self.total_bytes, fits=self.fits, margin_bytes=self.margin_bytes,
             images_per_second=self.images_per_second, mfu=self.mfu)
    return d


def roofline_seconds(report: Report) -> Tuple[float, str]:
  """max(FLOPs / peak, bytes / HBM bandwidth) per device, and which of the two binds.

  cost_analysis counts a while loop's body once (scan: one layer; accumulation: one micro-batch). There the
  compiled FLOPs are scaled by model_flops / counted_model_flops: the compiled-to-model ratio (remat recomputation,
  softmax, optimizer) of what was counted is taken to hold for the trips it missed. The bytes are not scaled (the
  optimizer's traffic, outside the loop, would be multiplied too): the HBM term is then a floor.
  It is a ceiling on speed (perfect overlap, peak throughput): real steps are slower.
  """
  scale = report.model_flops / report.counted_model_flops if report.has_loops and report.counted_model_flops else 1.
  compute = max(report.compiled_flops * scale, report.model_flops) / report.peak_flops
  memory = report.compiled_bytes_accessed / report.hbm_bandwidth
  return max(compute, memory), 'compute' if compute >= memory else 'HBM'


def estimate_step(report: Report) -> Tuple[float, str]:
  """(seconds, which estimate): the cost model's time where it is sound, else the stated roofline.

  Sound means: no while loop in the step (scan, accumulation: the cost model costs a loop body once) and at least
  the roofline (it is not below what the peaks allow). Below that it is wrong: it goes negative on loops and on
  some programs without one (-0.9999 for a 4-chip FSDP step), as if an uncosted op counted -1 s.
  """
  roof, bound = roofline_seconds(report)
  optimal = report.optimal_seconds
  if optimal is not None and not report.has_loops and optimal >= roof:
    return optimal, 'cost model (optimal_seconds)'
  why = ('no optimal_seconds' if optimal is None else 'while loop in the step' if report.has_loops
         else f'optimal_seconds {optimal:.3g} s is below the roofline')
  return roof, f'roofline, {bound}-bound; {why}'


def _has_while(compiled: Any) -> bool:
  try:
    return ' while(' in compiled.as_text() or '= while(' in compiled.as_text()
  except Exception:  # pylint: disable=broad-except  # no HLO text: assume a loop (the safe side)
    return True


def build_step(config: Any, devices: Sequence[jax.Device], image_size: int, num_classes: int):
  """The loop's jitted, donated train step on a mesh of `devices` and its abstract arguments (uint8 images and
  integer labels, as the loop feeds it), with the model and the mesh."""
  from vit_jax.perf import lowering  # pylint: disable=g-import-not-at-top
  from vit_jax.training import sharding  # pylint: disable=g-import-not-at-top
  # The loop's own mesh builder: on the topology's devices it lays each slice out on its torus and spans the
  # slices with config.mesh.dcn (the data axis by default), as a run on that slice does.
  mesh = sharding.make_mesh(dict(config.mesh), devices)
  program, model = lowering.config_step(config, num_classes, image_size, mesh)
  return program.step, program.args, model, mesh


def chip_of(device_kind: str) -> Optional[Chip]:
  """The CHIPS entry of a jax device_kind ('TPU v4'), or None (CPU, GPU, an unknown TPU)."""
  return next((c for c in CHIPS.values() if c.device_kind == device_kind), None)


def compile_report(config: Any, devices: Sequence[jax.Device], name: str, libtpu_name: str = '',
                   num_classes: Optional[int] = None, image_size: Optional[int] = None) -> Report:
  """Compiles `config`'s train step for `devices` (a topology's, or the attached ones) and returns the compiler's
  memory and cost figures; HBM, peaks and the step time are 0 where the chip is not in CHIPS."""
  import time  # pylint: disable=g-import-not-at-top
  from vit_jax.models import flops  # pylint: disable=g-import-not-at-top
  from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  try:
    config_checks.validate(config, num_devices=len(devices), check_data=False)
  except config_checks.ConfigError as e:
    raise CompileCheckError(f'{e} (on {name}: {len(devices)} devices)') from None
  image_size = image_size or int(config.pp.crop or 224)
  classes = num_classes_of(config, num_classes)
  step, args, model, mesh = build_step(config, devices, image_size, classes)
  model_flops = flops.train_step_flops(model, image_size, config.batch) / len(devices)
  counted = model_flops / config.accum_steps  # the accumulation loop's body is one micro-batch
  if config.model.scan and model.transformer:  # the scanned body is one layer
    one_layer = model.clone(transformer={**model.transformer, 'num_layers': 1})
    counted *= flops.model_forward_flops(one_layer, image_size) / flops.model_forward_flops(model, image_size)
  start = time.time()
  try:
    compiled = step.lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    raise DoesNotFit(f'DOES NOT FIT on {name} ({len(devices)} devices, {config.batch // len(devices)} images per '
                     f'device): {str(e).splitlines()[0]}') from None
  return report_of(compiled, devices, topology=name, libtpu_name=libtpu_name, mesh=dict(mesh.shape),
                   global_batch=config.batch, image_size=image_size, num_classes=classes, model_flops=model_flops,
                   counted_model_flops=counted, compile_seconds=time.time() - start)


def report_of(compiled: Any, devices: Sequence[jax.Device], *, model_flops: float, counted_model_flops: float,
              **fields: Any) -> Report:
  """The Report of a compiled step: the compiler's memory and cost figures, the chip's HBM and peaks, the estimate.

  `model_flops` are per device; `counted_model_flops` the part of them outside loops or in one trip of each loop.
  """
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  optimal = cost.get('optimal_seconds')
  chip = chip_of(devices[0].device_kind)
  per_device = lambda x: x / chip.devices_per_chip if chip else 0.
  report = Report(
      device_kind=devices[0].device_kind, num_devices=len(devices), argument_bytes=memory.argument_size_in_bytes,
      output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes, code_bytes=memory.generated_code_size_in_bytes,
      hbm_bytes=per_device(chip.hbm_bytes if chip else 0), compiled_flops=float(cost.get('flops', 0.)),
      compiled_bytes_accessed=float(cost.get('bytes accessed', 0.)), model_flops=model_flops,
      counted_model_flops=counted_model_flops, optimal_seconds=None if optimal is None else float(optimal),
      has_loops=_has_while(compiled), peak_flops=per_device(chip.peak_flops if chip else 0),
      hbm_bandwidth=per_device(chip.hbm_bandwidth if chip else 0), **fields)
  if chip:
    report.step_seconds, report.estimate = estimate_step(report)
  return report


def topology_report(config: Any, topology: Topology, num_classes: Optional[int] = None) -> Report:
  """`compile_report` on the devices of `topology` (a slice that need not be there). The checkpoint paths are
  dropped: they do not change the step, and they need not exist on this machine."""
  config = config.copy_and_resolve_references()
  config.model_init, config.resume = None, None
  return compile_report(config, topology_devices(topology), topology.name, topology.libtpu_name, num_classes)


def format_report(r: Report) -> str:
  """The report as the command prints it: memory per device, fits / margin, step time, MFU, img/s."""
  gb = lambda b: f'{b / GiB:.2f} GiB' if abs(b) >= GiB / 10 else f'{b / 2**20:.1f} MiB'
  optimal = 'n/a' if r.optimal_seconds is None else f'{r.optimal_seconds:.4g} s'
  where = f'{r.topology} ({r.libtpu_name}, {r.device_kind})' if r.libtpu_name else f'{r.topology} ({r.device_kind})'
  lines = [
      f'{where}: {r.num_devices} devices, mesh {r.mesh}; global batch {r.global_batch} '
      f'({r.global_batch // r.num_devices} per device), {r.image_size} px, {r.num_classes} classes; compiled in '
      f'{r.compile_seconds:.0f} s.',
      f'memory per device: arguments {gb(r.argument_bytes)}, outputs {gb(r.output_bytes)} (aliased to donated '
      f'arguments {gb(r.alias_bytes)}), temporaries {gb(r.temp_bytes)}, code {gb(r.code_bytes)}; total '
      f'{gb(r.total_bytes)}' + (f' of {gb(r.hbm_bytes)} HBM.' if r.hbm_bytes else ' (HBM of this device unknown).'),
      f'compiled per device: {r.compiled_flops:.3g} FLOPs, {r.compiled_bytes_accessed:.3g} bytes accessed; model '
      f'FLOPs {r.model_flops:.3g}; cost model optimal_seconds {optimal}.']
  if r.hbm_bytes:
    lines.insert(2, f'{"fits" if r.fits else "DOES NOT FIT"}: margin {gb(r.margin_bytes)} '
                    f'({100 * r.margin_bytes / r.hbm_bytes:.0f}% of HBM).')
  if r.step_seconds:
    lines.append(f'step time {r.step_seconds * 1e3:.1f} ms [{r.estimate}; peaks {r.peak_flops / 1e12:.0f} TFLOP/s, '
                 f'{r.hbm_bandwidth / 1e9:.0f} GB/s per device] -> {r.images_per_second:,.0f} img/s, MFU '
                 f'{100 * r.mfu:.0f}%.')
  return '\n'.join(lines)


EXIT_DOES_NOT_FIT = 1


def print_report(report: Report, as_json: bool = False) -> int:
  """Prints the report (and its JSON line); returns the exit status: 0 fits (or HBM unknown), 1 does not fit."""
  import json  # pylint: disable=g-import-not-at-top
  print(format_report(report), flush=True)
  if as_json:
    print(json.dumps(report.as_dict()), flush=True)
  return EXIT_DOES_NOT_FIT if report.fits is False else 0


def dry_run(config: Any) -> int:
  """`vit_jax.main --dry_run`: the check on the attached devices (a pod's TPUs), printed by process 0; nothing is
  allocated. Returns the exit status (print_report's); raises CompileCheckError on a config mistake."""
  from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  try:
    info = config_checks.validate(config)  # the dataset is there: its image size and classes, as the loop has them
  except config_checks.ConfigError as e:
    raise CompileCheckError(str(e)) from None
  try:
    report = compile_report(config, jax.devices(), f'attached ({jax.process_count()} processes)',
                            num_classes=info.num_classes, image_size=info.image_size)
  except DoesNotFit as e:
    if jax.process_index() == 0:
      print(e, flush=True)
    return EXIT_DOES_NOT_FIT
  if jax.process_index():
    return EXIT_DOES_NOT_FIT if report.fits is False else 0
  return print_report(report)
