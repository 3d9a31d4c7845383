"""Our ViT train step against big_vision's, compiled by the same TPU compiler for the same slice, model and batch.

  python scripts/compare_big_vision.py --big_vision=/path/to/big_vision_checkout --variant=B/16 --topology=v4-8 \
      --batch=256 [--scan]

Ours: configs/vit_{b16,l16}_i21k.py as `vit_jax.compile_check` builds it. Theirs: big_vision's `models/vit.py` and
`optax.py` set up as its `configs/vit_i21k.py` does (GAP head, no pre-logits, scale_by_adam with a bf16 first moment,
grad clip 1, decoupled weight decay 1e-4, float32 matmul inputs: big_vision's default `dtype_mm`), and its
`train.py` update step (loss, grads, optimizer, the three logged norms), jitted with the state replicated and the
batch split over the devices, the state donated. big_vision is imported from the checkout given (it needs
TensorFlow, einops and flax's legacy checkpoints module importable); it is never copied into vit_jax.
Prints each side's compile_check report and one JSON line per side.
"""
import argparse
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

PRESETS = {'B/16': 'vit_b16_i21k', 'L/16': 'vit_l16_i21k', 'S/16': 'vit_s16_i21k'}
NUM_CLASSES, IMAGE = 21843, 224


def ours(variant: str, topology, batch: int, scan: bool):
  """vit_jax's preset step on `topology`."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from vit_jax.perf import tpu_compile  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('_preset', os.path.join(ROOT, 'configs', PRESETS[variant] + '.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.batch, config.model.scan = batch, scan
  return tpu_compile.topology_report(config, topology)


def theirs(variant: str, topology, batch: int, scan: bool, big_vision: str):
  """big_vision's vit_i21k step on `topology`."""
  sys.path.insert(0, big_vision)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from big_vision import optax as bv_optax  # pylint: disable=g-import-not-at-top
  from big_vision import utils as u  # pylint: disable=g-import-not-at-top
  from big_vision.models import vit as bv_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.models import flops, registry  # pylint: disable=g-import-not-at-top
  from vit_jax.perf import tpu_compile  # pylint: disable=g-import-not-at-top

  devices = tpu_compile.topology_devices(topology)
  mesh = Mesh(np.asarray(devices), ('data',))
  config = ml_collections.ConfigDict(dict(
      optax_name='scale_by_adam', optax=dict(mu_dtype='bfloat16'), grad_clip_norm=1.0, lr=0.001, wd=0.0001,
      schedule=dict(warmup_steps=10_000, decay_type='cosine'), loss='sigmoid_xent'))
  model = bv_vit.Model(num_classes=NUM_CLASSES, variant=variant, pool_type='gap', posemb='learn', scan=scan)
  images = jax.ShapeDtypeStruct((batch, IMAGE, IMAGE, 3), jnp.float32, sharding=NamedSharding(mesh, P('data')))
  labels = jax.ShapeDtypeStruct((batch, NUM_CLASSES), jnp.float32, sharding=NamedSharding(mesh, P('data')))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMAGE, IMAGE, 3)))['params'])
  tx, _ = bv_optax.make(config, params, sched_kw=dict(total_steps=100_000, batch_size=batch, data_size=14_000_000))
  opt = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, P())
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                       {'params': params, 'opt': opt})
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)

  def update_fn(train_state, rng, batch):  # big_vision/train.py's update_fn without mixup
    step_count = bv_optax.get_count(train_state['opt'], jittable=True)
    rng = jax.random.fold_in(rng, step_count)
    rng, rng_model = jax.random.split(rng, 2)

    def loss_fn(params):
      logits, _ = model.apply({'params': params}, batch['image'], train=True, rngs={'dropout': rng_model})
      return getattr(u, config.loss)(logits=logits, labels=batch['labels'])
    loss, grads = jax.value_and_grad(loss_fn)(train_state['params'])
    updates, opt = tx.update(grads, train_state['opt'], train_state['params'])
    params = optax.apply_updates(train_state['params'], updates)
    norm = lambda tree: jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))
    return {'params': params, 'opt': opt}, {'training_loss': loss, 'l2_grads': norm(grads),
                                             'l2_params': norm(params), 'l2_updates': norm(updates)}

  step = jax.jit(update_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))
  start = time.time()
  compiled = step.lower(state, rng, {'image': images, 'labels': labels}).compile()
  seconds = time.time() - start
  mc = {**registry.get_config('ViT-' + variant.replace('/', '_')), 'classifier': 'gap', 'representation_size': None}
  model_flops = 3 * flops.forward_flops(mc, IMAGE, NUM_CLASSES) * batch / len(devices)
  counted = model_flops
  if scan:
    one = {**mc, 'transformer': {**mc['transformer'], 'num_layers': 1}}
    counted *= flops.forward_flops(one, IMAGE, NUM_CLASSES) / flops.forward_flops(mc, IMAGE, NUM_CLASSES)
  return tpu_compile.report_of(compiled, devices, topology=topology.name + ' (big_vision)',
                               libtpu_name=topology.libtpu_name, mesh={'data': len(devices)}, global_batch=batch,
                               image_size=IMAGE, num_classes=NUM_CLASSES, model_flops=model_flops,
                               counted_model_flops=counted, compile_seconds=seconds)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--big_vision', required=True, help='a directory holding the big_vision package (a checkout)')
  p.add_argument('--variant', default='B/16', choices=sorted(PRESETS))
  p.add_argument('--topology', default='v4-8')
  p.add_argument('--batch', type=int, default=256, help='global batch')
  p.add_argument('--scan', action='store_true', help='scan the layers on both sides (compile time independent of depth)')
  p.add_argument('--sides', default='ours,theirs')
  args = p.parse_args()
  from vit_jax.perf import tpu_compile  # pylint: disable=g-import-not-at-top
  topology = tpu_compile.parse_topology(args.topology)
  for side in args.sides.split(','):
    if side == 'ours':
      report = ours(args.variant, topology, args.batch, args.scan)
    else:
      report = theirs(args.variant, topology, args.batch, args.scan, args.big_vision)
    print(f'--- {side}: {args.variant}', flush=True)
    print(tpu_compile.format_report(report), flush=True)
    print(json.dumps({'side': side, 'variant': args.variant, 'scan': args.scan, **report.as_dict()}), flush=True)


if __name__ == '__main__':
  main()
