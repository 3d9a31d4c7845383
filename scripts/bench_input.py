"""Images/s per CPU core of our pretraining preprocessing vs a minimal plain tf.data pipeline.

Both decode the same generated JPEGs (~500x375, ImageNet-like), take an Inception random resized crop
(area 8-100%, aspect 3/4-4/3) to 224x224, flip at random and scale to [-1, 1], and batch. Each
measurement runs in a fresh child process pinned (sched_setaffinity) to as many CPU cores as it has
workers. "Per core" is measured as images per CPU-second the process consumed (all its threads), which
stays meaningful on a shared machine; wall-clock images/s per pinned core is printed too:
  ours:    vit_jax.data.pipeline.make_train_iterator over an image folder (grain, `workers` reader threads;
           with simplejpeg + OpenCV installed: libjpeg-turbo decode, at 1/2-1/8 DCT scale when the box is
           2x the output or more, then bilinear resize on uint8), as the training loop runs it: uint8 batches,
           whose [-1, 1] scaling is one fused op on the accelerator after the transfer (prefetch_to_mesh).
  ours host float: the same with that scaling done on the host (`uint8=False`), as tf.data does it.
  tf.data: from_tensor_slices(paths).map(read+decode_jpeg+crop+resize+flip+normalise,
           num_parallel_calls=workers) with a private thread pool of `workers` threads; measured with
           tf.image.resize's default (bilinear, no antialiasing: the same filter as ours below a 2x
           shrink), with antialias=True (area-like when shrinking, costlier), and with big_vision's
           decode_and_crop_jpeg (decodes only the box) in place of decode_jpeg + slice.

  ours_shards: the same, reading the same JPEGs from shards written by `vit_jax.prepare_data`.
Ingest: `vit_jax.prepare_data` (Beam DirectRunner, multi-processing, `workers` processes on as many cores)
over the folder and over a 3x larger one; images per CPU-second (this process and its Beam workers) is the
marginal rate between the two, i.e. without Beam's fixed start-up cost, and the time for 14 M images on N cores
is extrapolated from it.

  python scripts/bench_input.py [--images 400] [--workers 1 2] [--json out.json]

Per preset (`--config`): that preset's exact train pipeline (its pp section: decode, crop, RandAugment, mixup, the
label width of its dataset) over generated JPEGs, at its per-host batch, in N grain worker processes; prints images
per CPU-second (main process + workers) and the host cores needed to feed the preset's model at the accelerator
targets of docs/performance.md (8 x H100 at 4,100 img/s each for ViT-B/16; a TPU v4 host, 4 chips at ~2,000; other
models at the same MFU, i.e. scaled by train FLOPs per image):

  python scripts/bench_input.py --config=configs/vit_b16_i1k_augreg.py --workers 1 2 --batch 128
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

CROP = 224
BATCH = 32


def make_jpegs(directory: str, num: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[str]:
  """Writes `num` photo-like JPEGs (smooth shapes + texture noise, quality 90) as <dir>/train/c<k>/<i>.jpg."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  files = []
  for i in range(num):
    w, h = size
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    d = os.path.join(directory, 'train', f'c{i % 10}')
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f'{i}.jpg')
    Image.fromarray(img).save(path, 'JPEG', quality=90)
    files.append(path)
  return files


def measure_ours(root: str, workers: int, num_images: int, uint8: bool = True) -> dict[str, float]:
  """Images/s of make_train_iterator (decode + inception crop 224 + flip) over `root`, as the training loop runs it
  (uint8 batches; [-1, 1] on the devices) or with the [-1, 1] float pass on the host (`uint8=False`)."""
  from vit_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  pp = {'crop': CROP, 'train_crop': 'inception', 'flip': True, 'threads': workers}
  it = input_pipeline.make_train_iterator(root, pp, global_batch=BATCH, seed=0, process_index=0,
                                          process_count=1, uint8=uint8)
  return _time(it, num_images)


def measure_tf(root: str, workers: int, num_images: int, antialias: bool = False,
               crop_first: bool = False) -> dict[str, float]:
  """Images/s of a minimal tf.data pipeline doing the same ops on the same files."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, 'train')) for f in fs)

  def load(path, seed):
    data = tf.io.read_file(path)
    shape = tf.image.extract_jpeg_shape(data) if crop_first else None
    img = None if crop_first else tf.io.decode_jpeg(data, channels=3)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape if crop_first else tf.shape(img), tf.zeros([0, 0, 4], tf.float32), seed=seed,
        area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    if crop_first:  # As big_vision's decode_jpeg_and_inception_crop: decodes only the box's rows/columns.
      img = tf.image.decode_and_crop_jpeg(data, tf.stack([begin[0], begin[1], size[0], size[1]]), channels=3)
    else:
      img = tf.slice(img, begin, size)
    img = tf.image.resize(img, [CROP, CROP], 'bilinear', antialias=antialias)
    img = tf.image.stateless_random_flip_left_right(img, seed)
    return img / 127.5 - 1

  seeds = tf.data.Dataset.random(seed=0).batch(2)
  ds = tf.data.Dataset.from_tensor_slices(files).repeat().shuffle(len(files), seed=0)
  ds = tf.data.Dataset.zip((ds, seeds)).map(load, num_parallel_calls=workers)
  ds = ds.batch(BATCH, drop_remainder=True).prefetch(2)
  opts = tf.data.Options()
  opts.threading.private_threadpool_size = workers
  opts.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(opts)
  return _time(map(lambda x: x.numpy(), iter(ds)), num_images)


def measure_ingest(root: str, output: str, workers: int) -> dict[str, float]:
  """Wall and CPU seconds (this process and its Beam worker processes) of prepare_data over `root`."""
  import resource  # pylint: disable=g-import-not-at-top
  from vit_jax.data import prepare  # pylint: disable=g-import-not-at-top
  start, cpu = time.perf_counter(), time.process_time()
  meta = prepare.run(root, output, [f'--direct_num_workers={workers}', '--direct_running_mode=multi_processing'])
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return {'images': meta['splits']['train']['num_examples'], 'wall': time.perf_counter() - start,
          'cpu': time.process_time() - cpu + children.ru_utime + children.ru_stime}


def _replicate(src: str, dst: str, copies: int) -> None:
  """dst/train/<class>/ holding `copies` hard links of each image of src/train/<class>/ (no extra disk)."""
  for cls in sorted(os.listdir(os.path.join(src, 'train'))):
    os.makedirs(os.path.join(dst, 'train', cls))
    for f in os.listdir(os.path.join(src, 'train', cls)):
      for k in range(copies):
        os.link(os.path.join(src, 'train', cls, f), os.path.join(dst, 'train', cls, f'{k}_{f}'))


def _time(batches, num_images: int) -> dict[str, float]:
  """Wall-clock images/s and images per CPU-second of this process (all its threads)."""
  next(batches)  # Warm-up: thread pools, first files.
  n, start, cpu = 0, time.perf_counter(), time.process_time()
  while n < num_images:
    b = next(batches)
    n += len(b['image'] if isinstance(b, dict) else b)
  return {'wall': n / (time.perf_counter() - start), 'cpu': n / (time.process_time() - cpu)}


def _child(kind: str, root: str, workers: int, num_images: int, call: str | None = None) -> dict[str, float]:
  """Runs one measurement ('ours', 'ours_shards', 'tf', 'tf_aa', 'tf_crop' or `call`) pinned to `workers` cores."""
  cores = sorted(os.sched_getaffinity(0))[:workers]
  if call is None:
    call = {'ours': 'b.measure_ours(%r, %d, %d)', 'ours_shards': 'b.measure_ours(%r + "_prepared", %d, %d)',
            'ours_float': 'b.measure_ours(%r, %d, %d, uint8=False)',
            'tf': 'b.measure_tf(%r, %d, %d)', 'tf_aa': 'b.measure_tf(%r, %d, %d, antialias=True)',
            'tf_crop': 'b.measure_tf(%r, %d, %d, crop_first=True)'}[kind] % (root, workers, num_images)
  code = ('import os, sys; sys.path.insert(0, %r); os.sched_setaffinity(0, %r); '
          'import json; from scripts import bench_input as b; print(json.dumps(%s))'
          % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), cores, call))
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', CUDA_VISIBLE_DEVICES='')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'{kind} measurement failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


# Classes of the datasets the presets name: the label width the host builds (one-hot rows of this many floats).
DATASET_CLASSES = {'imagenet21k': 21_843, 'imagenet2012': 1000, 'digits': 10, 'cifar10': 10, 'cifar100': 100,
                   'oxford_iiit_pet': 37, 'oxford_flowers102': 102}
# Accelerator hosts a preset's train step must be fed on: (accelerators per host, ViT-B/16 train img/s per
# accelerator at 224 px). The targets (docs/performance.md, section 3); other models at the same MFU.
HOSTS = {'8x H100': (8, 4_100.), 'TPU v4 host': (4, 2_000.)}


def load_config(spec: str) -> Any:
  """The ConfigDict of 'configs/<preset>.py' or 'configs/<preset>.py:<arg>' (as `--config` of vit_jax.main)."""
  from vit_jax.tools import sweep  # pylint: disable=g-import-not-at-top
  module, arg = sweep.load_module(spec)
  return module.get_config(arg) if arg else module.get_config()


def documented_hardware(spec: str) -> str:
  """The 'Hardware:' line of a preset's docstring (tests/docs_test.py holds every preset to one)."""
  from vit_jax.tools import sweep  # pylint: disable=g-import-not-at-top
  module, _ = sweep.load_module(spec)
  lines = (module.__doc__ or '').splitlines()
  return next((line.split(':', 1)[1].strip() for line in lines if line.startswith('Hardware:')), '')


def preset_targets(spec: str, model_name: str, crop: int) -> dict[str, float]:
  """`host_targets`, or none for a preset documented to run without an accelerator (the default: B/16's MFU
  scaled to a 16-px model would ask for millions of images per second)."""
  return {} if 'no accelerator' in documented_hardware(spec) else host_targets(model_name, crop)


def host_targets(model_name: str, crop: int) -> dict[str, float]:
  """Images/s one host must deliver to its accelerators for `model_name` at `crop` px, per host kind of HOSTS."""
  from vit_jax.models import flops, registry  # pylint: disable=g-import-not-at-top
  ratio = (flops.forward_flops(registry.get_config('ViT-B_16'), 224, 1000)
           / flops.forward_flops(registry.get_config(model_name), crop, 1000))
  return {host: n * rate * ratio for host, (n, rate) in HOSTS.items()}


def make_preset_folder(root: str, num_images: int, num_classes: int) -> None:
  """Generated JPEGs in `root/train/`, with empty class folders up to `num_classes` (the dataset's label width)."""
  make_jpegs(root, num_images)
  for k in range(num_classes):
    os.makedirs(os.path.join(root, 'train', f'c{k}'), exist_ok=True)


def _tree_cpu_seconds(pid: int | None = None) -> float:
  """User + system CPU seconds of a process and all its live descendants (grain's workers), from /proc."""
  pid = os.getpid() if pid is None else pid
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    children = []
    for tid in os.listdir(f'/proc/{pid}/task'):
      with open(f'/proc/{pid}/task/{tid}/children') as f:
        children += [int(c) for c in f.read().split()]
  except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
    return 0.
  return total + sum(_tree_cpu_seconds(c) for c in children)


def measure_preset(config: str, root: str, workers: int, batch: int, num_images: int) -> dict[str, float]:
  """Images/s (wall) and per CPU-second (this process + its worker processes) of the preset's train pipeline."""
  from vit_jax.data import pipeline as input_pipeline  # pylint: disable=g-import-not-at-top
  c = load_config(config)
  pp = {k: v for k, v in c.pp.to_dict().items() if v is not None}
  pp.update(workers=workers, threads=1)  # N worker processes, one reader thread each
  it = input_pipeline.make_train_iterator(root, pp, global_batch=batch, seed=0, process_index=0, process_count=1,
                                          uint8=True)
  b = next(it)  # Warm-up: worker start-up, first files.
  n, start, cpu = 0, time.perf_counter(), _tree_cpu_seconds()
  while n < num_images:
    b = next(it)
    n += len(b['image'])
  wall, cpu = time.perf_counter() - start, _tree_cpu_seconds() - cpu
  return {'wall': n / wall, 'cpu': n / cpu, 'label_width': int(np.prod(b['label'].shape[1:]))}


def preset_main(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Measures `args.config`'s train pipeline at each worker count; prints the table and the cores each host needs."""
  c = load_config(args.config)
  classes = DATASET_CLASSES.get(c.dataset, c.pp.get('num_classes') or 1000)
  batch = args.batch or c.batch  # per host: one 8-GPU host runs the whole global batch
  targets = preset_targets(args.config, c.model_name, c.pp.crop)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, 'folder')
    make_preset_folder(root, args.images, classes)
    for w in args.workers:
      best = {'wall': 0., 'cpu': 0.}
      for _ in range(args.repeats):
        r = _child('preset', root, w, args.measure,
                   f'b.measure_preset({args.config!r}, {root!r}, {w}, {batch}, {args.measure})')
        best = {k: max(best[k], r[k]) for k in best}
      row = {'preset': args.config, 'model': c.model_name, 'batch': batch, 'workers': w,
             'label_width': r['label_width'], 'img_s': best['wall'], 'img_per_cpu_s': best['cpu']}
      for host, rate in targets.items():
        row[f'{host} img/s'] = rate
        row[f'{host} cores'] = rate / best['cpu']
      rows.append(row)
  pp = c.pp
  print(f'{args.config}: {c.model_name}, crop {pp.crop} ({pp.get("train_crop")}), flip {pp.get("flip")}, randaug '
        f'{pp.get("randaug")}, mixup {pp.get("mixup")}, cutmix {pp.get("cutmix")}, {classes} classes; '
        f'batch {batch} per host; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
  print(f'documented hardware: {documented_hardware(args.config)}'
        + ('' if targets else ' (no accelerator host to feed: no cores figure)'))
  cols = [('workers', 'workers'), ('img_s', 'img/s'), ('img_per_cpu_s', 'img per CPU-s')]
  for host in targets:
    cols += [(f'{host} img/s', f'{host} needs img/s'), (f'{host} cores', f'{host} cores')]
  _table(rows, cols)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)
  return rows


I21K_IMAGES = 14_000_000


def main(argv=None) -> list[dict[str, float]]:
  """Generates the JPEGs, measures the pipelines and the ingest at each worker count and prints the tables."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=400, help='distinct JPEGs to generate')
  parser.add_argument('--measure', type=int, default=1024, help='images timed per measurement')
  parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
  parser.add_argument('--repeats', type=int, default=2, help='best of N runs per cell')
  parser.add_argument('--json', help='also write the rows to this file')
  parser.add_argument('--config', help="a preset, e.g. configs/vit_b16_i21k.py: measure its train pipeline")
  parser.add_argument('--batch', type=int, help='--config: per-host batch (default: the preset\'s global batch, '
                                                'all on one 8-accelerator host)')
  args = parser.parse_args(argv)
  if args.config:
    return preset_main(args)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, 'folder')  # <root>/train/<class>/*.jpg; prepared shards in <root>_prepared.
    make_jpegs(root, args.images)
    _replicate(root, os.path.join(tmp, 'folder3'), 3)
    for w in args.workers:
      if w > len(os.sched_getaffinity(0)):
        print(f'skipping workers={w}: only {len(os.sched_getaffinity(0))} cores available')
        continue
      ingest = [_child('ingest', root, w, 0, f'b.measure_ingest({d!r}, {d + "_prepared"!r}, {w})')
                for d in (root, os.path.join(tmp, 'folder3'))]
      best = {k: {'wall': 0., 'cpu': 0.} for k in ('ours', 'ours_float', 'ours_shards', 'tf', 'tf_aa', 'tf_crop')}
      for _ in range(args.repeats):  # Interleaved, so all see the same machine load.
        for kind in best:
          r = _child(kind, root, w, args.measure)
          best[kind] = {k: max(best[kind][k], r[k]) for k in r}
      row = {'workers': w}
      for kind in best:
        row[f'{kind}_cpu'] = best[kind]['cpu']
        row[f'{kind}_wall_core'] = best[kind]['wall'] / w
      row['ratio'] = row['ours_cpu'] / row['tf_cpu']
      row['ratio_aa'] = row['ours_cpu'] / row['tf_aa_cpu']
      row['ratio_crop'] = row['ours_cpu'] / row['tf_crop_cpu']
      row['ratio_float_crop'] = row['ours_float_cpu'] / row['tf_crop_cpu']
      row['ratio_wall'] = row['ours_wall_core'] / row['tf_wall_core']
      row['ratio_shards'] = row['ours_shards_cpu'] / row['ours_cpu']
      extra = ingest[1]['images'] - ingest[0]['images']
      # Marginal rate; when load noise makes the larger run no costlier, the larger run's overall rate (a lower bound).
      cpu, wall = ingest[1]['cpu'] - ingest[0]['cpu'], ingest[1]['wall'] - ingest[0]['wall']
      row['ingest_cpu'] = extra / cpu if cpu > 0 else ingest[1]['images'] / ingest[1]['cpu']
      row['ingest_wall_core'] = (extra / wall if wall > 0 else ingest[1]['images'] / ingest[1]['wall']) / w
      rows.append(row)
  cols = [('workers', 'workers'), ('ours_cpu', 'ours'), ('tf_cpu', 'tf.data'), ('ratio', 'ours/tf.data'),
          ('tf_aa_cpu', 'tf.data antialias'), ('ratio_aa', 'ours/tf.data aa'),
          ('tf_crop_cpu', 'tf.data decode_and_crop'), ('ratio_crop', 'ours/tf.data crop'),
          ('ours_float_cpu', 'ours host float'), ('ratio_float_crop', 'host float/tf.data crop'),
          ('ours_shards_cpu', 'ours from shards'), ('ratio_shards', 'shards/folder'),
          ('ours_wall_core', 'ours wall/core'), ('tf_wall_core', 'tf.data wall/core'),
          ('ratio_wall', 'ours/tf.data wall')]
  load = os.getloadavg()
  print(f'load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs')
  print('training preprocessing: images per CPU-second (first columns), wall-clock images/s per pinned core '
        '(last three)')
  _table(rows, cols)
  print(f'ingest (prepare_data, DirectRunner): marginal images per CPU-second and per pinned core (wall); '
        f'hours for {I21K_IMAGES / 1e6:.0f} M images on N cores at that rate')
  cores = (16, 64, 256, 1024)
  for r in rows:
    r.update({f'ingest_hours_{n}': I21K_IMAGES / (r['ingest_cpu'] * n) / 3600 for n in cores})
  _table(rows, [('workers', 'workers'), ('ingest_cpu', 'ingest img/CPU-s'), ('ingest_wall_core', 'img/s/core')]
         + [(f'ingest_hours_{n}', f'h on {n}') for n in cores])
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=1)
  return rows


def _table(rows, cols):
  print(' | '.join(h for _, h in cols))
  for r in rows:
    print(' | '.join(f'{r[k]:>{len(h)}.2f}' if isinstance(r[k], float) else f'{r[k]:>{len(h)}}'
                     for k, h in cols))


if __name__ == '__main__':
  from vit_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  try:
    main()
  except config_checks.ConfigError as e:  # a user mistake (no such --config file): one line, no traceback
    print(f'bench_input.py: {e}', file=sys.stderr)
    sys.exit(2)
