"""Builds tiny timm and transformers models with random weights, saves them as their libraries do, and writes their
outputs; loads folders we exported and writes theirs. Runs in its own process (torch beside TensorFlow can crash
one): `python tests/interop/torch_reference.py SPEC.json`.

Spec: {"timm": [{name, arch, kwargs, stats, images, images_big}], "hf": [{name, cls, config_cls, config, output,
stats, images, images_big}], "exports": [{name, kind: timm|hf, folder, stats, images, output}], "out": folder};
images: .npy (N, H, W, 3) in [-1, 1] at the native size, images_big at the resampled one. Each model's outputs go
to out/<name>.npy and out/<name>_big.npy.
"""
import json
import pathlib
import sys

import numpy as np
import timm
import torch
import transformers

# Pixel statistics each family is trained with, as their model cards give them (independent of vit_jax's tables).
STATS = {'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 'half': ((0.5,) * 3, (0.5,) * 3),
         'clip': ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Non-trivial values for every parameter: kernels by fan-in, scales near 1, the rest small."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if p.ndim == 3:  # position embeddings, tokens, probes
        p.copy_(0.5 * r)
      elif p.ndim >= 2:
        p.copy_(r / np.sqrt(p[0].numel()))
      elif name.endswith(('norm1.weight', 'norm2.weight', 'norm.weight', 'norm_pre.weight', 'layernorm.weight',
                          'gamma', 'lambda1', 'layrnorm.weight', 'layer_norm1.weight', 'layer_norm2.weight',
                          'layernorm_before.weight', 'layernorm_after.weight', 'fc_norm.weight')):
        p.copy_(1 + 0.2 * r)
      else:
        p.copy_(0.2 * r)


def to_torch(images: np.ndarray, stats: str) -> torch.Tensor:
  mean, std = (np.asarray(v, np.float32) for v in STATS[stats])
  x = ((images + 1) / 2 - mean) / std
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))


def run_timm(s: dict, out: pathlib.Path) -> None:
  images, big = np.load(s['images']), np.load(s['images_big'])
  model = timm.create_model(s['arch'], pretrained=False, **s['kwargs']).eval()
  randomize(model, s.get('seed', 0))
  folder = out / s['name']
  timm.models.save_for_hf(model, folder, safe_serialization=True)
  if s.get('bare'):  # also a bare state dict beside the folder, for arch= loading
    import safetensors.torch  # pylint: disable=g-import-not-at-top
    safetensors.torch.save_file(model.state_dict(), out / f'{s["name"]}.safetensors')
  with torch.no_grad():
    np.save(out / f'{s["name"]}.npy', model(to_torch(images, s['stats'])).numpy())
    kwargs = {**s['kwargs'], 'img_size': big.shape[1]}
    resized = timm.create_model(s['arch'], pretrained=True, **kwargs,
                                pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors'),
                                                            num_classes=model.num_classes)).eval()
    np.save(out / f'{s["name"]}_big.npy', resized(to_torch(big, s['stats'])).numpy())


def hf_output(model: torch.nn.Module, x: torch.Tensor, output: str, **kw) -> np.ndarray:
  with torch.no_grad():
    return getattr(model(pixel_values=x, **kw), output).numpy()


def run_hf(s: dict, out: pathlib.Path) -> None:
  images, big = np.load(s['images']), np.load(s['images_big'])
  config = getattr(transformers, s['config_cls'])(**s['config'])
  model = getattr(transformers, s['cls'])(config).eval()
  randomize(model, s.get('seed', 0))
  model.save_pretrained(out / s['name'])
  np.save(out / f'{s["name"]}.npy', hf_output(model, to_torch(images, s['stats']), s['output']))
  kw = {} if s['config_cls'].startswith('Dinov2') else {'interpolate_pos_encoding': True}
  np.save(out / f'{s["name"]}_big.npy', hf_output(model, to_torch(big, s['stats']), s['output'], **kw))


def run_export(s: dict, out: pathlib.Path) -> None:
  images = np.load(s['images'])
  folder = pathlib.Path(s['folder'])
  if s['kind'] == 'timm':
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()  # config.json as it is
    with torch.no_grad():
      y = model(to_torch(images, s['stats'])).numpy()
  else:
    config = json.loads((folder / 'config.json').read_text())
    auto = transformers.AutoModelForImageClassification if config.get('id2label') else transformers.AutoModel
    model = auto.from_pretrained(folder).eval()
    y = hf_output(model, to_torch(images, s['stats']), s['output'])
  np.save(out / f'{s["name"]}.npy', y)


def main(spec_path: str) -> None:
  spec = json.loads(pathlib.Path(spec_path).read_text())
  out = pathlib.Path(spec['out'])
  for s in spec.get('timm', []):
    run_timm(s, out)
  for s in spec.get('hf', []):
    run_hf(s, out)
  for s in spec.get('exports', []):
    run_export(s, out)


if __name__ == '__main__':
  torch.manual_seed(0)
  main(sys.argv[1])
