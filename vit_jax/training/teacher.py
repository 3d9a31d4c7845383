"""The frozen teacher of distillation (`config.teacher`): its model, its params on the host, then on the mesh.

`config.teacher` is one of:
- our training workdir: its newest readable checkpoint, the EMA params when the run kept them
  (`config.ema_decay` > 0 in its config.json), else the params; the model is the workdir's own (config.json)
  unless `config.teacher_model_name` names another;
- a published `.npz`: `config.teacher_model_name` names its model (the file does not record it);
- a timm / HF file or folder (`vit_jax.interop`): the checkpoint describes its own model
  (`config.teacher_model_name`: the timm architecture of a bare state dict).
`config.teacher_model` overrides `config.model`-style keys of the first two. The teacher's head must have the
dataset's classes and its position embeddings the run's resolution (one-line error otherwise). It runs in
bfloat16 when the student does (`config.model.dtype`), its params stored in bfloat16 too.
"""
import json
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from vit_jax import interop
from vit_jax.models import build
from vit_jax.models import vit
from vit_jax.tools import inference
from vit_jax.training import config_checks
from vit_jax.training import sharding


class TeacherError(config_checks.ConfigError):
  """The teacher cannot be used as configured; the message is one line naming config.teacher and the fix."""


def _workdir(config: Any, path: epath.Path, num_classes: int) -> Tuple[vit.VisionTransformer, Dict[str, Any], str]:
  """(model, params, which params) of a training workdir."""
  record = json.loads((path / 'config.json').read_text())
  ema = float(record.get('ema_decay') or 0.) > 0
  params = inference.load_params(path, ema=ema)
  name = config.teacher_model_name or record['model_name']
  overrides = {} if config.teacher_model_name else dict(record['model'])
  overrides.update(config.teacher_model.to_dict())
  model = build.build_model(name, overrides, num_classes)
  return model, params, 'EMA params' if ema else 'params'


def load(config: Any, num_classes: int, image_size: int) -> Tuple[vit.VisionTransformer, Dict[str, Any]]:
  """(model, host params) of `config.teacher`, checked to fit the run; see the module docstring."""
  path = epath.Path(config.teacher)
  try:
    if interop.is_foreign(path):
      model, params, _ = interop.load(path, config.teacher_model_name, image_size=image_size)
      which = 'params'
    elif path.is_dir() and (path / 'config.json').exists():
      model, params, which = _workdir(config, path, num_classes)
    else:
      if not config.teacher_model_name:
        raise TeacherError(f'config.teacher={config.teacher!r} does not record its model; set '
                           'config.teacher_model_name.')
      params = inference.load_params(path)
      model = build.build_model(config.teacher_model_name, config.teacher_model.to_dict(), num_classes)
      which = 'params'
    model = model.clone(scan=False, remat_policy='none', attention_impl=config.model.attention_impl)
    inference.check_fits(model, params, image_size, what=f'teacher {config.teacher}')
  except (ValueError, OSError, KeyError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise TeacherError(f'config.teacher={config.teacher!r}: {message}') from None
  if model.num_classes != num_classes:
    raise TeacherError(f'config.teacher={config.teacher!r} has {model.num_classes} classes, the dataset '
                       f'{num_classes}; distil on a dataset with the teacher\'s label space.')
  if config.model.dtype == 'bfloat16':
    model = model.clone(dtype=jnp.bfloat16)
    params = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), params)
  print(f'Teacher: {config.teacher} ({which}).', flush=True)
  return model, params


def abstract_params(model: vit.VisionTransformer, params: Any, image_size: int, mesh: jax.sharding.Mesh,
                    rules: Any) -> Any:
  """ShapeDtypeStructs of the teacher's params, sharded by the same logical-axis rules as the student's."""
  boxed = jax.eval_shape(lambda: vit.init_with_axes(model, {'params': jax.random.PRNGKey(0)},
                                                    jnp.zeros((1, image_size, image_size, 3)), train=False)['params'])
  shardings = sharding.param_shardings(boxed, mesh, rules)
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sh),
                      dict(params), shardings)


def put(params: Any, abstract: Any) -> Any:
  """The host params on the mesh: every process fills its own shards, nothing is gathered."""
  return jax.tree.map(lambda host, a: jax.make_array_from_callback(
      a.shape, a.sharding, lambda index: np.asarray(host[index], a.dtype)), dict(params), abstract)
