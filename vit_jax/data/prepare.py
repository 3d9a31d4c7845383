"""Builds a prepared dataset (ArrayRecord shards + metadata) from an image folder or the ImageNet-21k tar, on Beam.

Input: an image folder `<root>/<split>/<class>/*.{jpg,jpeg,png}`, or the ImageNet-21k release tar (a tar of
per-class tars `n01440764.tar` holding `n01440764_10026.JPEG`, ...; all of it becomes split 'train'). An
uncompressed tar is read in place (headers, then byte ranges), never extracted. A `.tar.gz` (winter21_whole.tar.gz)
cannot be read at random, so one worker streams it once and hands each per-class tar's bytes to the pipeline;
nothing is written to disk but the output, and the shards are byte-identical to those of the uncompressed tar.

Output (`--output`, local or gs://):
  <split>.array_record-<k>-of-<n>   ArrayRecord shards; record i of a split = its i-th image in
                                    (class, file name) order, shard = i // examples_per_shard.
  vit_jax_dataset.json              classes, split sizes and shard names; written last, so a dataset
                                    without it is unfinished (run the same command again).
  prepare_report.json               the skipped members (corrupt, or not image files) and why.
A record is `<int64 label><uint32 len(name)><name, utf-8><encoded image bytes>` (little endian); the name is
`<class>/<file>`. The same input always gives byte-identical shards, on any runner.

The Beam pipeline has no shuffle of image bytes: (1) each class (a folder or an inner tar) is scanned and its
images decoded once to find the corrupt ones, giving a sorted list of (name, byte range); (2) from the counts
per class every shard's list of members is derived; (3) each shard reads its members and writes its file.
A streamed `.tar.gz` is the exception: its classes' bytes travel with them from the reading worker through (3).
"""
import dataclasses
import io
import json
import math
import os
import re
import struct
import tarfile
import tempfile
from typing import Any, Iterable, Iterator, Sequence

from etils import epath
import numpy as np

from vit_jax import extras

METADATA = 'vit_jax_dataset.json'
REPORT = 'prepare_report.json'
FORMAT = 'vit_jax.prepared/1'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_HEADER = struct.Struct('<qI')


def encode_record(label: int, name: str, image: bytes) -> bytes:
  """One ArrayRecord record: label, name and the encoded image."""
  n = name.encode('utf-8')
  return _HEADER.pack(label, len(n)) + n + image


def decode_record(record: bytes | memoryview) -> tuple[int, str, bytes | memoryview]:
  """(label, name, encoded image) of a record written by `encode_record`; given a memoryview, the image is a view
  into it (no copy)."""
  label, n = _HEADER.unpack_from(record)
  start = _HEADER.size
  return label, bytes(record[start:start + n]).decode('utf-8'), record[start + n:]


def shard_name(split: str, k: int, n: int) -> str:
  return f'{split}.array_record-{k:05d}-of-{n:05d}'


@dataclasses.dataclass(frozen=True)
class Unit:
  """One class of one split: a folder of images, or a member (byte range) of the outer tar."""
  split: str
  cls: str
  path: str  # The class folder, or the outer tar.
  offset: int = -1  # Inner tar's data offset in the outer tar (-1: a folder; 0: streamed, bytes in Scan.data).
  size: int = 0


@dataclasses.dataclass(frozen=True)
class Scan:
  """A scanned unit: its good images sorted by name as (name, offset, size) and the skipped (name, reason)."""
  unit: Unit
  good: tuple[tuple[str, int, int], ...]
  skipped: tuple[tuple[str, str], ...]
  data: bytes | None = None  # A streamed unit's inner tar (`good`'s offsets index into it).


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def check_image(data: bytes, name: str) -> str | None:
  """Why the training pipeline could not decode these bytes (None if it can), decoding at 1/8 scale."""
  from vit_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  try:
    img = preprocess.decode(data, name)
    if img.format == 'JPEG':  # Every byte is still entropy-decoded, so damage is found at 1/64 of the cost.
      img.draft('RGB', (math.ceil(img.size[0] / 8), math.ceil(img.size[1] / 8)))
    preprocess.load_rgb(img, name)
  except preprocess.CorruptImageError as e:
    return re.sub(r' <[^>]* at 0x[0-9a-f]+>', '', str(e))  # No object addresses: re-runs write the same report.
  return None


def list_units(input_path: str) -> list[Unit]:
  """The classes of an image folder or of the ImageNet-21k tar (the tar's headers are read, not its data)."""
  root = epath.Path(input_path)
  if not root.exists():
    raise FileNotFoundError(f'--input={input_path} does not exist: give an image folder <root>/<split>/<class>/ '
                            'or the ImageNet-21k tar of per-class tars.')
  if root.is_dir():
    units = []
    for split in sorted(p for p in root.iterdir() if p.is_dir()):
      for cls in sorted(p for p in split.iterdir() if p.is_dir()):
        units.append(Unit(split.name, cls.name, os.fspath(cls)))
    if not units:
      raise FileNotFoundError(f'--input={input_path} has no <split>/<class>/ folders: expected '
                              f'{input_path}/train/<class>/*.jpg.')
    return units
  with root.open('rb') as f:
    if f.read(2) == _GZIP_MAGIC:
      raise ValueError(f'--input={input_path} is gzip-compressed: it is read as a stream (stream_gzip_units).')
    f.seek(0)
    try:
      members = [m for m in tarfile.open(fileobj=f, mode='r:') if m.isfile()]
    except tarfile.TarError as e:
      raise ValueError(f'--input={input_path} is neither a folder nor a tar ({e}).') from None
  units = [Unit('train', os.path.basename(m.name).removesuffix('.tar'), input_path, m.offset_data, m.size)
           for m in members if m.name.endswith('.tar')]
  if not units:
    raise ValueError(f'--input={input_path} holds no per-class tars (<wnid>.tar): is it the ImageNet-21k release?')
  return sorted(units, key=lambda u: (u.split, u.cls))


_GZIP_MAGIC = b'\x1f\x8b'


def is_gzip(input_path: str) -> bool:
  """Whether --input is a gzip file (the .tar.gz release), which is streamed rather than read at random."""
  root = epath.Path(input_path)
  if not root.exists() or root.is_dir():
    return False
  with root.open('rb') as f:
    return f.read(2) == _GZIP_MAGIC


def stream_gzip_units(input_path: str) -> Iterator[tuple[Unit, bytes]]:
  """(unit, inner tar bytes) of each per-class tar of a .tar.gz, in one sequential pass (never extracted)."""
  found = False
  try:
    with epath.Path(input_path).open('rb') as f, tarfile.open(fileobj=f, mode='r|gz') as outer:
      for m in outer:
        if m.isfile() and m.name.endswith('.tar'):
          cls = os.path.basename(m.name).removesuffix('.tar')
          found = True
          yield Unit('train', cls, input_path, 0, m.size), outer.extractfile(m).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ValueError(f'--input={input_path} is gzip-compressed but not a readable tar ({e}).') from None
  if not found:
    raise ValueError(f'--input={input_path} holds no per-class tars (<wnid>.tar): is it the ImageNet-21k release?')


def _read_range(path: str, offset: int, size: int) -> bytes:
  with epath.Path(path).open('rb') as f:
    f.seek(offset)
    return f.read(size)


def _members(unit: Unit, data: bytes | None = None) -> Iterable[tuple[str, int, int, bytes]]:
  """(file name, offset, size, bytes) of every file of a unit (offset/size in the outer tar, or in `data` for a
  streamed unit; -1/0 for folders)."""
  if unit.offset < 0:
    for p in epath.Path(unit.path).iterdir():
      if not p.is_dir():
        yield p.name, -1, 0, p.read_bytes() if _is_image_name(p.name) else b''
    return
  if data is None:
    data = _read_range(unit.path, unit.offset, unit.size)
  with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as inner:
    for m in inner:
      if m.isfile():
        start = m.offset_data
        yield os.path.basename(m.name), unit.offset + start, m.size, data[start:start + m.size]


def scan_unit(unit: Unit, inner: bytes | None = None) -> Scan:
  """Decodes every image of a unit once; keeps the good ones sorted by name (`inner`: a streamed unit's bytes)."""
  good, skipped = [], []
  for name, offset, size, data in _members(unit, inner):
    reason = None if _is_image_name(name) else 'not an image file name (.jpg/.jpeg/.png)'
    reason = reason or check_image(data, f'{unit.cls}/{name}')
    if reason:
      skipped.append((name, reason))
    else:
      good.append((name, offset, size))
  return Scan(unit, tuple(sorted(good)), tuple(sorted(skipped)), inner)


def class_offsets(counts: Sequence[tuple[str, str, int]]) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
  """First example index of each (split, class) in (class) order, and the split sizes."""
  offsets, sizes = {}, {}
  for split, cls, n in sorted(counts):
    offsets[(split, cls)] = sizes.get(split, 0)
    sizes[split] = sizes.get(split, 0) + n
  return offsets, sizes


def shard_pieces(scan: Scan, counts: Sequence[tuple[str, str, int]], examples_per_shard: int):
  """((split, shard), (first index, unit, members, member bytes or None)) for the runs of this class falling into
  each shard; the bytes only for a streamed unit, which cannot be read again."""
  offsets, _ = class_offsets(counts)
  first = offsets[(scan.unit.split, scan.unit.cls)]
  r = 0
  while r < len(scan.good):
    shard = (first + r) // examples_per_shard
    end = min(len(scan.good), (shard + 1) * examples_per_shard - first)
    members = scan.good[r:end]
    payload = None if scan.data is None else tuple(scan.data[o:o + n] for _, o, n in members)
    yield (scan.unit.split, shard), (first + r, scan.unit, members, payload)
    r = end


def _member_bytes(unit: Unit, members: Sequence[tuple[str, int, int]]) -> list[bytes]:
  if unit.offset < 0:
    return [(epath.Path(unit.path) / name).read_bytes() for name, _, _ in members]
  start, end = members[0][1], max(o + s for _, o, s in members)
  data = _read_range(unit.path, start, end - start)  # One read for the whole run (members are in tar order).
  return [data[o - start:o - start + s] for _, o, s in members]


def write_shard(group: tuple[tuple[str, int], Iterable[Any]], counts: Sequence[tuple[str, str, int]],
                output: str, examples_per_shard: int) -> tuple[str, int, int]:
  """Writes one shard file from its pieces; returns (split, shard, number of records)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  (split, shard), pieces = group
  _, sizes = class_offsets(counts)
  classes = sorted({c for _, c, _ in counts})
  label = {c: i for i, c in enumerate(classes)}
  num_shards = math.ceil(sizes[split] / examples_per_shard)
  pieces = sorted(pieces, key=lambda p: p[0])
  expected = shard * examples_per_shard
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, 'shard')
    # One record per chunk (random access) and no compression: JPEG bytes do not compress, and reading skips a pass.
    writer = array_record_module.ArrayRecordWriter(local, 'group_size:1,uncompressed')
    n = 0
    for first, unit, members, payload in pieces:
      if first != expected + n:
        raise RuntimeError(f'Shard {split}/{shard}: records {expected + n}..{first} are missing.')
      if payload is not None:
        data = dict(enumerate(payload))
      else:
        # A piece's members are sorted by name; reading them in offset order keeps tar reads sequential.
        order = sorted(range(len(members)), key=lambda j: members[j][1])
        data = dict(zip(order, _member_bytes(unit, [members[j] for j in order])))
      for j, (name, _, _) in enumerate(members):
        writer.write(encode_record(label[unit.cls], f'{unit.cls}/{name}', data[j]))
      n += len(members)
    writer.close()
    dst = epath.Path(output) / shard_name(split, shard, num_shards)
    epath.Path(local).copy(dst, overwrite=True)
  return split, shard, n


def write_metadata(written: Sequence[tuple[str, int, int]], counts: Sequence[tuple[str, str, int]],
                   skipped: Sequence[tuple[str, str, str, str]], output: str, input_path: str,
                   examples_per_shard: int) -> dict[str, Any]:
  """Checks that every shard was written, then writes the report and (last) the metadata JSON."""
  _, sizes = class_offsets(counts)
  got = {}
  for split, _, n in written:
    got[split] = got.get(split, 0) + n
  if got != {s: n for s, n in sizes.items() if n}:
    raise RuntimeError(f'Written records {got} differ from the scanned counts {sizes}.')
  out = epath.Path(output)
  report = {'input': input_path, 'num_skipped': len(skipped),
            'skipped': [dict(zip(('split', 'class', 'name', 'reason'), s)) for s in sorted(skipped)]}
  (out / REPORT).write_text(json.dumps(report, indent=1))
  splits = {}
  for split, n in sorted(sizes.items()):
    k = math.ceil(n / examples_per_shard)
    splits[split] = {'num_examples': n, 'shards': [shard_name(split, i, k) for i in range(k)]}
  meta = {'format': FORMAT, 'classes': sorted({c for _, c, _ in counts}), 'splits': splits,
          'examples_per_shard': examples_per_shard, 'num_skipped': len(skipped), 'input': input_path}
  (out / METADATA).write_text(json.dumps(meta, indent=1))
  return meta


def build_pipeline(pipeline, input_path: str, output: str, examples_per_shard: int = 10_000):
  """Adds the prepare stages to a Beam pipeline (see the module docstring)."""
  beam = extras.require('apache_beam', 'prepare', 'vit_jax.prepare_data')
  if is_gzip(input_path):
    next(stream_gzip_units(input_path))  # Only the first class: a bad input fails here, in one line.
    units = pipeline | 'Input' >> beam.Create([input_path]) | 'Stream' >> beam.FlatMap(stream_gzip_units)
    scan = beam.MapTuple(scan_unit)
  else:
    units = pipeline | 'Units' >> beam.Create(list_units(input_path))
    scan = beam.Map(scan_unit)
  epath.Path(output).mkdir(parents=True, exist_ok=True)
  scans = units | 'SpreadUnits' >> beam.Reshuffle() | 'Scan' >> scan
  counts = beam.pvalue.AsList(scans | 'Count' >> beam.Map(lambda s: (s.unit.split, s.unit.cls, len(s.good))))
  skipped = scans | 'Skipped' >> beam.FlatMap(lambda s: [(s.unit.split, s.unit.cls, n, r) for n, r in s.skipped])
  written = (scans
             | 'Pieces' >> beam.FlatMap(shard_pieces, counts, examples_per_shard)
             | 'ByShard' >> beam.GroupByKey()
             | 'Write' >> beam.Map(write_shard, counts, output, examples_per_shard))
  return (written | 'AllWritten' >> beam.combiners.ToList()
          | 'Metadata' >> beam.Map(write_metadata, counts, beam.pvalue.AsList(skipped), output, input_path,
                                   examples_per_shard))


def run(input_path: str, output: str, beam_args: Sequence[str] = (), examples_per_shard: int = 10_000) -> dict:
  """Runs the pipeline with Beam options `beam_args` (DirectRunner on all cores by default); returns the metadata."""
  beam = extras.require('apache_beam', 'prepare', 'vit_jax.prepare_data')
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  options = pipeline_options.PipelineOptions(list(beam_args))
  direct = options.view_as(pipeline_options.DirectOptions)
  runner = options.view_as(pipeline_options.StandardOptions).runner
  if runner in (None, 'DirectRunner', 'direct'):
    given = lambda flag: any(a.startswith(flag) for a in beam_args)
    if not given('--direct_num_workers'):
      direct.direct_num_workers = 0  # One worker per core.
    if not given('--direct_running_mode'):
      direct.direct_running_mode = 'multi_processing'
    # The worker processes start from a fresh interpreter: let them import vit_jax from wherever this one did.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = os.environ.get('PYTHONPATH', '').split(os.pathsep)
    if package_root not in paths:
      os.environ['PYTHONPATH'] = os.pathsep.join([package_root] + [p for p in paths if p])
  options.view_as(pipeline_options.SetupOptions).save_main_session = False
  with beam.Pipeline(options=options) as p:
    build_pipeline(p, input_path, output, examples_per_shard)
  return json.loads((epath.Path(output) / METADATA).read_text())


def read_metadata(path: str) -> dict[str, Any] | None:
  """The metadata of a prepared dataset at `path`, or None if `path` is not one."""
  meta = epath.Path(path) / METADATA
  try:
    return json.loads(meta.read_text()) if meta.exists() else None
  except (OSError, ValueError):
    return None


def sorted_permutation(n: int) -> np.ndarray:
  """The fixed order image folders use for their files (seed 0), so both sources slice alike."""
  return np.random.default_rng(0).permutation(n)
