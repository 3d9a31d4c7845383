"""Stands in for timm_baseline.py in CPU tests: its command line, its one JSON line, fixed speeds, an OOM at batch 13."""
import json
import sys

mode, variant, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == 'infer' and batch == 13:
  sys.exit('CUDA out of memory')
print('compiling...')
print(json.dumps({'system': 'timm stand-in', 'mode': mode, 'variant': variant, 'batch': batch,
                  'img_s': 1000.0 if mode == 'train' else 4000.0, 'tflops': 100.0, 'mfu': 0.126}))
