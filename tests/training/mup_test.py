"""muP's coordinate check ("Tensor Programs V", fig. 5): activation updates stay O(1) as the width grows 4x."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax import models
from vit_jax.models import vit
from vit_jax.training import losses
from vit_jax.training import optim

BASE_WIDTH = 32


def _activation_updates(width, mup, seeds=(0, 1), steps=3, lr=1e-2):
  """RMS of (activation after `steps` Adam steps - activation at init), per block output and for the logits.

  One compiled program per (width, mup); the head starts at zero (`head_zeroinit`, the default and muP's choice).
  """
  model = models.get_model('S/8', num_classes=10, hidden_size=width, mup_base_width=BASE_WIDTH if mup else None,
                           transformer={'num_layers': 2, 'mlp_dim': 4 * width, 'num_heads': 2})
  tx, _ = optim.make_optimizer({'optimizer': 'adam', 'base_lr': lr, 'total_steps': steps, 'decay_type': 'constant',
                                'mup_base_width': BASE_WIDTH if mup else None})

  def acts(p, images):
    logits, state = model.apply({'params': p}, images, train=False, mutable=['intermediates'],
                                capture_intermediates=lambda m, _: isinstance(m, vit.Encoder1DBlock))
    blocks = state['intermediates']['Transformer']
    return [blocks[f'encoderblock_{i}']['__call__'][0][0] for i in range(2)] + [logits]

  @jax.jit
  def run(key, images, labels):
    params = nn.meta.unbox(model.init(key, images[:1], train=False))['params']
    loss = lambda p: jnp.mean(losses.softmax_xent(model.apply({'params': p}, images, train=False), labels))

    def step(carry, _):
      p, state = carry
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      return (optax.apply_updates(p, updates), state), None
    (trained, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return jnp.stack([jnp.sqrt(jnp.mean((a - b) ** 2)) for a, b in zip(acts(trained, images), acts(params, images))])

  out = []
  for seed in seeds:
    rng = np.random.RandomState(seed)
    images = jnp.asarray(rng.uniform(-1, 1, (16, 16, 16, 3)), jnp.float32)
    labels = jax.nn.one_hot(rng.randint(0, 10, 16), 10)
    out.append(np.asarray(run(jax.random.PRNGKey(seed), images, labels)))
  return np.mean(out, axis=0)


@pytest.mark.slow
@pytest.mark.parametrize('mup', [True, False])
def test_coordinate_check(mup):
  small, large = _activation_updates(BASE_WIDTH, mup), _activation_updates(4 * BASE_WIDTH, mup)
  growth = large / small  # per layer: block 0, block 1, logits
  print(f'mup={mup}: |delta activations| RMS width {BASE_WIDTH} {np.round(small, 4)}, width {4 * BASE_WIDTH} '
        f'{np.round(large, 4)}, growth {np.round(growth, 2)}')
  # Measured (CPU, float32): muP 1.03 / 1.09 / 0.83, standard 2.01 / 2.26 / 3.08; at the base width both are the
  # same model, so `small` is identical for the two.
  if mup:
    assert np.all((growth > 0.7) & (growth < 1.4)), growth
  else:  # standard parametrisation: Adam's updates of the hidden matrices grow with the width
    assert np.all(growth > 1.8), growth


# docs/models.md's two commands (tests/docs_test.py checks that every documented command is in a test).
MUP_COMMANDS = [
    'python -m vit_jax.main --config=configs/default.py --workdir=/tmp/mup32 --config.model.hidden_size=32 '
    '--config.model.mlp_dim=128 --config.model.mup_base_width=32 --config.base_lr=3e-3',
    'python -m vit_jax.main --config=configs/default.py --workdir=/tmp/mup128 --config.model.hidden_size=128 '
    '--config.model.mlp_dim=512 --config.model.mup_base_width=32 --config.base_lr=3e-3',
]


def test_documented_mup_commands_give_the_same_lr_and_mup_scales():
  """docs/models.md's two commands: one base_lr, and the wider model's hidden matrices at base_width / width of it."""
  import loop_testlib  # pylint: disable=g-import-not-at-top
  from vit_jax.models import build  # pylint: disable=g-import-not-at-top
  from vit_jax.training import loop  # pylint: disable=g-import-not-at-top
  commands = MUP_COMMANDS
  ratios = []
  for command in commands:
    config = loop_testlib.load_config('default')
    flags = dict(arg[len('--config.'):].split('=', 1) for arg in command.split() if arg.startswith('--config.'))
    loop_testlib.apply(config, {k: type_cast(config, k, v) for k, v in flags.items()})
    model = build.build_model(config.model_name, config.model, 10)
    section = loop.optim_section(config)
    params = nn.meta.unbox(jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                                                  train=False))['params'])
    scales = optim.mup_lr_scales(params, section['mup_base_width'])
    ratios.append((section['base_lr'], model.hidden_size,
                   scales['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel'], scales['head']['kernel']))
  assert ratios == [(3e-3, 32, 1., 1.), (3e-3, 128, 0.25, 1.)]


def type_cast(config, key, text):
  """A flag's value as the config key's type (ints and floats here)."""
  node = config
  for part in key.split('.'):
    node = node[part]
  return type(node)(text) if node is not None else int(text)
