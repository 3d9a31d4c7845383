"""Device mesh, logical-axis rule tables and the shardings of params, optimizer state and batches.

The model tags weights and activations with logical axis names ('batch', 'length', 'embed', 'mlp', 'heads',
'kv', 'classes', 'layers'); a rule table maps them onto the mesh axes ('data', 'fsdp', 'tensor'). Switching
from pure data parallel to FSDP or tensor parallel is a change of table (`config.sharding_rules`), not of code.

Rules are ordered (logical name, mesh axes) pairs, resolved by flax: a dimension takes the first rule whose mesh
axes are still free in that array, else it is replicated. So in the 'fsdp' table activations
('batch', 'length', 'embed') shard 'batch' over ('data', 'fsdp') and leave 'embed' whole, while weights, which
have no 'batch' dimension, shard 'embed' over 'fsdp'. On top of flax's resolution, `param_shardings` replicates
any dimension whose size is not divisible by its mesh axes (e.g. a 10-wide toy model on fsdp=4).

Multi-slice TPU and multi-node GPU jobs get a hybrid mesh: `config.mesh.dcn` says how many slices (nodes) each
axis spans, so that the axes with heavy traffic (fsdp, tensor) stay on the fast links. docs/sharding.md explains
the axes, the tables and the lowered-program pins.
"""
import collections
import contextlib
import logging
import math
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch dimension is split over both: FSDP is data parallel for activations

Rules = Tuple[Tuple[str, Any], ...]
RULES: Dict[str, Rules] = {
    # Pure data parallel: params and optimizer state replicated on every device.
    'dp': (
        ('batch', BATCH_AXES),
    ),
    # Fully sharded data parallel (ZeRO-3): params and optimizer state split over 'fsdp' along 'embed'.
    'fsdp': (
        ('batch', BATCH_AXES),
        ('embed', 'fsdp'),
    ),
    # Tensor parallel (Megatron-style MLP column/row split and attention heads) over 'tensor', plus FSDP.
    'tp': (
        ('batch', BATCH_AXES),
        ('embed', 'fsdp'),
        ('mlp', 'tensor'),
        ('heads', 'tensor'),
    ),
}


def get_rules(name_or_rules: Any) -> Rules:
  """A rule table by name ('dp', 'fsdp', 'tp') or an explicit ((logical, mesh axes), ...) sequence."""
  if isinstance(name_or_rules, str):
    if name_or_rules not in RULES:
      raise ValueError(f'Unknown sharding rules {name_or_rules!r}; set config.sharding_rules to one of '
                       f'{", ".join(RULES)} or to a list of (logical axis, mesh axes) pairs.')
    return RULES[name_or_rules]
  return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in name_or_rules)


# The default DCN split: every granule (TPU slice, GPU node) holds whole data-parallel replicas, so only the
# gradient all-reduce crosses the slow network. -1 = the number of granules.
DCN_DEFAULT = {'data': -1, 'fsdp': 1, 'tensor': 1}


def axis_sizes(shape: Mapping[str, Any], count: int, where: str = 'config.mesh', unit: str = 'devices'
               ) -> Dict[str, int]:
  """{axis: size} for MESH_AXES from `shape` (missing axes 1, one -1 = the rest) whose product is `count`."""
  shape = {k: v for k, v in shape.items() if k != 'dcn'}
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'Unknown mesh axes {sorted(unknown)} in {where}; use {", ".join(MESH_AXES)}.')
  sizes = {a: shape.get(a, 1) for a in MESH_AXES}
  if any(isinstance(s, bool) or not isinstance(s, int) for s in sizes.values()):
    raise ValueError(f'{where}={dict(shape)}: sizes must be ints.')
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f'{where}={dict(shape)}: sizes must be positive, with at most one -1 (= the rest).')
  known = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if count % known:
      raise ValueError(f'{where}={dict(shape)} does not divide the {count} {unit}; make the product of the '
                       f'fixed axes ({known}) divide {count}.')
    sizes[free[0]] = count // known
  if math.prod(sizes.values()) != count:
    raise ValueError(f'{where}={dict(shape)} has {math.prod(sizes.values())} {unit} but there are {count}; make '
                     f'the product of the axis sizes {count} or use -1 for one axis.')
  return sizes


def granule(device: jax.Device) -> int:
  """The device's unit of the slow network: `slice_index` (a TPU slice; a GPU host or NVLink domain), else its
  process."""
  index = getattr(device, 'slice_index', None)
  return device.process_index if index is None else index


def make_mesh(shape: Mapping[str, Any], devices: Optional[Sequence[jax.Device]] = None,
              granule_of: Callable[[jax.Device], int] = granule) -> Mesh:
  """Mesh with axes ('data', 'fsdp', 'tensor') sized by `shape` (missing axes 1; one axis may be -1 = the rest).

  `shape['dcn']` (default `DCN_DEFAULT`) says how many granules (`granule_of`: TPU slices, GPU nodes) each axis
  spans: the mesh is then hybrid, each granule a contiguous block of every axis, laid out by the fast network's
  topology inside (`mesh_utils.create_device_mesh`) and in granule order outside. Where the devices do not fit the
  requested layout, a warning says why and the devices are taken in jax's order.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = axis_sizes(shape, len(devices))
  dcn = shape.get('dcn') or DCN_DEFAULT
  grid = _hybrid_grid(devices, sizes, dict(dcn.items()), granule_of)
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _hybrid_grid(devices: Sequence[jax.Device], sizes: Dict[str, int], dcn_shape: Dict[str, int],
                 granule_of: Callable[[jax.Device], int]) -> np.ndarray:
  """Devices in a (data, fsdp, tensor) array: granule blocks over the slow network, topology order inside."""
  groups: Dict[int, list] = collections.defaultdict(list)
  for d in devices:
    groups[granule_of(d)].append(d)
  granules = [groups[k] for k in sorted(groups)]
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    dcn = axis_sizes(dcn_shape, len(granules), 'config.mesh.dcn', 'granules')
    for a in MESH_AXES:
      if sizes[a] % dcn[a]:
        raise ValueError(f'config.mesh.{a}={sizes[a]} cannot be split over config.mesh.dcn.{a}={dcn[a]} granules')
    ici = tuple(sizes[a] // dcn[a] for a in MESH_AXES)
    uneven = sorted({len(g) for g in granules})
    if uneven != [math.prod(ici)]:
      raise ValueError(f'the granules hold {"/".join(map(str, uneven))} devices, not {math.prod(ici)} each')
  except ValueError as e:
    if len(granules) > 1 or any(v not in (1, -1) for k, v in dcn_shape.items()):
      logging.warning('No hybrid ICI/DCN mesh over %d granules (TPU slices / GPU nodes): %s; set config.mesh.dcn to '
                      'match. Using one flat mesh, whose collectives may cross the slow network.', len(granules), e)
    return _granule_grid(devices, shape)
  blocks = np.empty(tuple(dcn[a] for a in MESH_AXES) + ici, dtype=object)
  for i, members in enumerate(granules):
    blocks[np.unravel_index(i, blocks.shape[:3])] = _granule_grid(members, ici)
  # (dcn_data, dcn_fsdp, dcn_tensor, ici_data, ...) -> (data, fsdp, tensor), the granule index outermost per axis.
  return blocks.transpose(0, 3, 1, 4, 2, 5).reshape(shape)


def _granule_grid(devices: Sequence[jax.Device], shape: Tuple[int, ...]) -> np.ndarray:
  """Devices laid out for `shape` by the fast network's topology (TPU, GPU); CPUs, which have none, in order."""
  plain = np.asarray(devices, dtype=object).reshape(shape)
  if devices[0].platform == 'cpu':
    return plain
  from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
  try:
    return mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  except (TypeError, ValueError, NotImplementedError, AssertionError, KeyError) as e:
    logging.warning('No topology-aware device order for mesh %s on %d %s devices (%s: %s); using jax\'s device '
                    'order, whose collectives may take slower links.', shape, len(devices), devices[0].device_kind,
                    type(e).__name__, e)
    return plain


def _axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def _fit(spec: P, shape: Tuple[int, ...], mesh: Mesh) -> P:
  """`spec` with the dims whose size its mesh axes do not divide replicated instead."""
  entries = list(spec) + [None] * (len(shape) - len(spec))
  return P(*[a if a is None or dim % _axis_size(mesh, a) == 0 else None for a, dim in zip(entries, shape)])


def mesh_specs(boxed_tree: Any, mesh: Mesh, rules: Any) -> Any:
  """Mesh PartitionSpecs for a (possibly abstract) tree with flax boxes; its structure is the unboxed tree's."""
  rules = get_rules(rules)

  def spec(x):
    if not isinstance(x, nn.meta.AxisMetadata):
      return P()
    value = nn.meta.unbox(x)
    if not jax.tree.leaves(value):
      return value  # e.g. optax.MaskedNode for a frozen param's absent state: keep the (leafless) structure
    logical = tuple(x.get_partition_spec())
    return _fit(nn.logical_to_mesh_axes(logical, rules), tuple(np.shape(value)), mesh)
  return jax.tree.map(spec, boxed_tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def param_shardings(boxed_tree: Any, mesh: Mesh, rules: Any) -> Any:
  """NamedShardings for params, a train state or optimizer state given as a boxed (abstract) tree.

  Pass `jax.eval_shape` of an init that keeps flax's `Partitioned` boxes (`models.init_with_axes`, or
  `create_train_state(..., unbox=False)`): optax's init maps over the boxed params, so mu/nu inherit their params'
  boxes and shard like them; scalars (step, counts) and rng keys are
  unboxed and replicated. The result has the structure of the *unboxed* tree, ready for `out_shardings`.
  """
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), mesh_specs(boxed_tree, mesh, rules),
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: leading (example) dimension over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding (metrics, scalars)."""
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def axis_rules(mesh: Optional[Mesh], rules: Any) -> Iterator[None]:
  """Context (entered inside jit) in which the model's `nn.with_logical_constraint` activations follow `rules`."""
  if mesh is None or rules is None:
    yield
    return
  # Entered while tracing (inside jit), where only an abstract mesh may be set.
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(get_rules(rules)):
    yield
