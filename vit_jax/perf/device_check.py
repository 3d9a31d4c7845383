"""Checks on a new accelerator before any timing: fused attention against XLA's, the cuDNN program, the matmul peak.

  python -m vit_jax.perf.device_check --attention cudnn --json $OUT/device.json

`attention_errors` runs a (2-layer) ViT-Ti/16 at 224 px (197 tokens: the odd length every published /16 model has)
in bf16 with `impl` attention and with the einsum ('xla') path from the same weights, and compares logits and
gradients. `train_step_counts` lowers the benchmark's train step with cuDNN attention for CUDA (on a GPU with its
real cuDNN version, elsewhere under `lowering.assume_gpu`) and counts the fused calls. Imports nothing from
TensorFlow, TFDS, ml_collections or clu (the GPU machine has none of them).
"""
import argparse
import json
import sys
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import models
from vit_jax.perf import benchmarking
from vit_jax.perf import lowering
from vit_jax.training import metric_logging

# bf16 noise between two attention kernels: logits elementwise (relative to their largest magnitude), gradients as
# one relative L2 norm over all leaves (single entries of near-zero gradients differ by more than they measure).
LOGITS_TOL, GRAD_TOL = 3e-2, 5e-2


def attention_errors(impl: str, batch: int = 4, resolution: int = 224, layers: int = 2) -> Dict[str, Any]:
  """Logits and gradient errors of `impl` attention against the 'xla' path on device 0, from the same weights."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1., 1., (batch, resolution, resolution, 3)), jnp.float32)
  kw = dict(num_classes=10, dtype=jnp.bfloat16, head_zeroinit=False,
            transformer=dict(models.get_config('Ti/16')['transformer'], num_layers=layers))
  xla = models.get_model('Ti/16', attention_impl='xla', **kw)
  fused = models.get_model('Ti/16', attention_impl=impl, **kw)
  # Random weights of the right shapes (no compiled init: this is a numerical comparison, not training).
  shapes = jax.eval_shape(lambda: xla.init(jax.random.PRNGKey(1), x, train=False))['params']
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray((path[-1].key == 'scale') + 0.05 * rng.standard_normal(s.shape), s.dtype), shapes)

  def logits_and_grads(model):
    apply = lambda p: model.apply({'params': p}, x, train=False)
    return jax.jit(lambda p: (apply(p), jax.grad(lambda q: jnp.mean(apply(q)**2))(p)))(params)

  (ref, ref_grads), (out, grads) = logits_and_grads(xla), logits_and_grads(fused)
  logits_err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
  diff = sum(float(jnp.sum((a - b)**2)) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
  norm = sum(float(jnp.sum(b**2)) for b in jax.tree.leaves(ref_grads))
  grad_err = float(np.sqrt(diff / norm))
  return {'impl': impl, 'tokens': (resolution // 16)**2 + 1, 'logits_rel_err': logits_err,
          'grad_rel_l2': grad_err, 'ok': logits_err < LOGITS_TOL and grad_err < GRAD_TOL}


def train_step_counts(layers: int = 2) -> Dict[str, Any]:
  """Fused-attention calls and matmul dtypes of the cuDNN train step of a `layers`-deep Ti/16, lowered for CUDA."""
  cfg = benchmarking.BenchConfig(model='Ti/16', num_layers=layers, batch=8, attention_impl='cudnn', num_classes=10)
  c = lowering.summarize(lowering.lower(cfg, ('train',))['train'])
  counts = {k: c[k] for k in ('fmha_fwd', 'fmha_bwd', 'dots_bf16_in', 'dots_f32_in')}
  counts['layers'] = layers
  counts['ok'] = (c['fmha_fwd'], c['fmha_bwd']) == (layers, layers)
  return counts


def run(attention: str, peak_n: Optional[int] = None, resolution: int = 224, layers: int = 2) -> Dict[str, Any]:
  """All checks on device 0: platform, attention, the cuDNN program, the measured and the table peak."""
  kind = jax.devices()[0].device_kind
  table = metric_logging.peak_flops(kind)
  peak_n = peak_n or (512 if jax.default_backend() == 'cpu' else 8192)
  return {
      'device_kind': kind, 'platform': jax.default_backend(), 'devices': len(jax.devices()),
      'jax': jax.__version__, 'attention': attention_errors(attention, resolution=resolution, layers=layers),
      'cudnn_program': train_step_counts(layers),
      'peak_measured_TFLOPs': benchmarking.measure_peak_tflops(peak_n), 'peak_n': peak_n,
      'peak_table_TFLOPs': None if table is None else table / 1e12,
  }


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the checks, prints and writes them; exit status 1 when an attention check fails."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--attention', default='cudnn', help="implementation checked against 'xla' (cudnn | dot_product)")
  p.add_argument('--peak_n', type=int, default=None, help='n of the n^3 bf16 matmul (default 8192; CPU 512)')
  p.add_argument('--resolution', type=int, default=224, help='image side of the attention check (a multiple of 16)')
  p.add_argument('--layers', type=int, default=2, help='depth of the Ti/16 of both checks')
  p.add_argument('--json', default=None, help='write the results to this path')
  args = p.parse_args(argv)
  result = run(args.attention, args.peak_n, args.resolution, args.layers)
  text = json.dumps(result, indent=1)
  print(text, flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      f.write(text)
  return 0 if result['attention']['ok'] and result['cudnn_program']['ok'] else 1


if __name__ == '__main__':
  sys.exit(main())
