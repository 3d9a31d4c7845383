"""Vision Transformer (and hybrid R+ViT) in Flax linen.

Numerics follow the implementation that produced the published ViT/AugReg checkpoints: flax's tanh-approximate
GELU, LayerNorm eps 1e-6, queries scaled by 1/sqrt(head_dim), position embeddings added after the class token.
Parameter names use Linen numbering (`encoderblock_{i}/LayerNorm_0`, `MultiHeadDotProductAttention_0`,
`LayerNorm_1`, `MlpBlock_0`); `vit_jax.checkpoint` maps the published pre-Linen names onto them.

Weights carry logical axis names ('embed', 'mlp', 'heads', 'kv', 'classes', 'layers') so that the mapping of
parameters onto a device mesh is a table of rules (see `vit_jax.training.sharding`), not code. `model.init` returns
plain arrays, as google-research/vision_transformer's does; `init_with_axes` returns the same variables with each
weight in flax's `LogicallyPartitioned` box, which carries its names (what the sharding code reads).
"""
import functools
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import layers
from vit_jax.models import resnet

Array = jnp.ndarray
Dtype = Any
Axes = Tuple[Optional[str], ...]

CLASSIFIERS = ('token', 'gap', 'map', 'unpooled', 'token_unpooled')
ATTENTION_IMPLS = ('xla', 'dot_product', 'cudnn', 'auto')
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
POSEMBS = ('learn', 'sincos2d')


def _logical(init: Callable[..., Array], axes: Axes) -> Callable[..., Any]:
  return nn.with_logical_partitioning(init, axes)


class Module(nn.Module):
  """A linen Module whose `init`, `init_with_output` and `lazy_init` return plain arrays (see `init_with_axes`).

  flax keeps the logical axis names of `nn.with_logical_partitioning` as boxes inside the variables, one level
  above each array; generic code sees that level (`flax.serialization.to_state_dict` gives `kernel/value`, optax
  masks and `tree_map_with_path` see `.../value`), so the boxes come off at init and only the sharding code asks
  for them.
  """

  @nn.nowrap
  def init_with_output(self, rngs: Any, *args: Any, **kwargs: Any) -> Tuple[Any, Any]:
    """`nn.Module.init_with_output` (which `init` and `lazy_init` call) with the logical-axis boxes removed."""
    out, variables = super().init_with_output(rngs, *args, **kwargs)
    return out, nn.meta.unbox(variables)


def init_with_axes(model: nn.Module, rngs: Any, *args: Any, **kwargs: Any) -> Any:
  """`model.init(rngs, *args, **kwargs)` with each weight in its `nn.LogicallyPartitioned` box (logical names).

  For the sharding code: `nn.get_partition_spec(jax.eval_shape(init_with_axes, model, ...))` is the logical
  PartitionSpec tree of the variables, and optax's init maps over the boxes so optimizer state inherits them.
  """
  return nn.Module.init_with_output(model, rngs, *args, **kwargs)[1]


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings, shape (1, h*w, width), as in big_vision."""
  if width % 4:
    raise ValueError(f'sincos2d position embeddings need hidden_size divisible by 4, got {width}.')
  y, x = np.mgrid[:h, :w]
  omega = np.arange(width // 4) / (width // 4 - 1)
  omega = 1. / (temperature**omega)
  y = np.einsum('m,d->md', y.flatten(), omega)
  x = np.einsum('m,d->md', x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


class AddPositionEmbs(Module):
  """Adds learned position embeddings `pos_embedding` of shape (1, tokens, dim)."""

  posemb_init: Callable[..., Array] = nn.initializers.normal(stddev=0.02)  # from BERT.
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    pe = self.param('pos_embedding', _logical(self.posemb_init, (None, None, 'embed')),
                    (1, inputs.shape[1], inputs.shape[2]), self.param_dtype)
    return inputs + pe.astype(inputs.dtype)


class MlpBlock(Module):
  """Transformer MLP: Dense -> GELU (tanh) -> dropout -> Dense (to `out_dim`, default the input width) -> dropout.

  `deterministic` is a field, or a call argument as google-research/vision_transformer passes it.
  """

  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.
  deterministic: bool = True
  use_bias: bool = True
  param_dtype: Dtype = jnp.float32
  out_dim: Optional[int] = None
  kernel_init: Callable[..., Array] = nn.initializers.xavier_uniform()
  bias_init: Callable[..., Array] = nn.initializers.normal(stddev=1e-6)
  activation: str = 'gelu_tanh'   # see `layers.ACTIVATIONS`

  @nn.compact
  def __call__(self, inputs: Array, *, deterministic: Optional[bool] = None) -> Array:
    deterministic = self.deterministic if deterministic is None else deterministic
    d = inputs.shape[-1] if self.out_dim is None else self.out_dim
    features = layers.mlp_hidden_features(self.mlp_dim, self.activation)
    x = nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias,
                 kernel_init=_logical(self.kernel_init, ('embed', 'mlp')),
                 bias_init=_logical(self.bias_init, ('mlp',)))(inputs)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'mlp'))
    x = layers.mlp_activate(x, self.activation)
    x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
    x = nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias,
                 kernel_init=_logical(self.kernel_init, ('mlp', 'embed')),
                 bias_init=_logical(self.bias_init, ('embed',)))(x)
    return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


@jax.custom_vjp
def _attention_logits(q: Array, k: Array) -> Array:
  """q k^T as float32 (BHQK) from BQHD / BKHD inputs; the backward's two matmuls stay in the inputs' dtype.

  Differentiating the einsum itself would meet the float32 cotangent with the 16-bit q and k and run both backward
  matmuls in float32 (TF32 on GPUs, 2 of every 8 matmuls per layer); this casts the cotangent instead, as PyTorch
  autocast does. (Float32 inputs take the plain einsum, whose gradient this equals up to rounding order.)
  """
  return jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)


def _attention_logits_fwd(q: Array, k: Array) -> Tuple[Array, Tuple[Array, Array]]:
  return _attention_logits(q, k), (q, k)


def _attention_logits_bwd(res: Tuple[Array, Array], g: Array) -> Tuple[Array, Array]:
  q, k = res
  g = g.astype(q.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', g, k), jnp.einsum('bhqk,bqhd->bkhd', g, q)


_attention_logits.defvjp(_attention_logits_fwd, _attention_logits_bwd)


def _attention_weights(q: Array, k: Array, key_mask: Optional[Array] = None,
                       scale: Optional[float] = None) -> Array:
  """softmax(q k^T * scale) (scale 1/sqrt(head_dim) unless given) with float32 statistics; q, k BQHD / BKHD."""
  if scale is None:
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  else:
    q = q * jnp.asarray(scale, q.dtype)
  if q.dtype == jnp.float32:  # nothing to cast: keep the einsum's own gradient
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k)
  else:
    logits = _attention_logits(q, k)
  if key_mask is not None:  # exp(-inf) is exactly 0: masked keys change nothing.
    logits = jnp.where(key_mask, logits, -jnp.inf)
  return jax.nn.softmax(logits, axis=-1).astype(q.dtype)


class Projection(Module):
  """`nn.DenseGeneral` over the last `in_dims` axes, with the kernel created at its stored rank.

  flax's DenseGeneral initialises a flat 2-D kernel and reshapes it, so 3-D logical axis names would be applied
  to a 2-D array under an active mesh; here the Xavier fan-in/fan-out are taken over the same axes directly.
  """

  features: Tuple[int, ...]
  in_dims: int
  kernel_axes: Axes
  bias_axes: Axes
  dtype: Dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.in_dims:]
    n_in, n_out = len(in_shape), len(self.features)
    init = nn.initializers.xavier_uniform(in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param('kernel', _logical(init, self.kernel_axes), in_shape + tuple(self.features))
    if not self.use_bias:
      x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      return jax.lax.dot_general(x, kernel, (((tuple(range(x.ndim - n_in, x.ndim))), tuple(range(n_in))), ((), ())))
    bias = self.param('bias', _logical(nn.initializers.zeros, self.bias_axes), tuple(self.features))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((tuple(range(x.ndim - n_in, x.ndim))), tuple(range(n_in))), ((), ())))
    return y + bias


def _pad_sequence(x: Array, multiple: int) -> Array:
  """Zero-pads axis 1 of a BTHD array up to a multiple of `multiple`."""
  pad = -x.shape[1] % multiple
  return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else x


def cudnn_attention_runs(dtype: Dtype, head_dim: int) -> bool:
  """Whether cuDNN's fused attention runs here, by jax's own checks: an NVIDIA GPU of compute capability >= 8.0,
  16-bit inputs, a head dim that is a multiple of 8 up to 128 (256 from Hopper on)."""
  if jax.default_backend() != 'gpu' or jnp.dtype(dtype).itemsize != 2 or head_dim % 8:
    return False
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  return fa.check_compute_capability('8.0') and head_dim <= (256 if fa.check_compute_capability('9.0') else 128)


class MultiHeadDotProductAttention(Module):
  """Multi-head attention with the published parameter layout and a selectable kernel.

  `impl`: 'xla' (einsum + softmax, returns weights), 'dot_product' (`jax.nn.dot_product_attention`, XLA picks the
  kernel), 'cudnn' (cuDNN fused attention; an error where cuDNN cannot run it), 'auto' (cuDNN where
  `cudnn_attention_runs`, else XLA: TPU, CPU, float32, GPUs before Ampere). All compute the same function within dtype tolerance. Attention dropout and attention-weight
  capture need the weights, so they always use the 'xla' path.

  `pad_to_multiple` > 1 pads queries, keys and values along the sequence to a multiple of it (a performance option
  for fused kernels with fixed tiles; 197 tokens -> 200/256), masks the padded keys and drops the padded outputs,
  so the result is the same function. The 'cudnn' path always pads to an even length (jax's cuDNN training rule
  needs one).

  `qk_norm`: LayerNorm over each head's queries and keys before the dot product (ViT-22B; timm's `qk_norm`), one
  scale and bias of size head_dim shared by the heads. `use_bias`: biases on the q/k/v/out projections.
  `logit_scale`: the factor on q k^T (None: 1/sqrt(head_dim); muP uses ~1/head_dim).
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.
  deterministic: bool = True
  impl: str = 'xla'
  pad_to_multiple: int = 0
  qk_norm: bool = False
  use_bias: bool = True
  logit_scale: Optional[float] = None

  def _resolve_impl(self, need_weights: bool, head_dim: int = 64) -> str:
    if need_weights or (self.dropout_rate > 0 and not self.deterministic):
      return 'xla'
    if self.impl == 'auto':
      return 'cudnn' if cudnn_attention_runs(self.dtype, head_dim) else 'xla'
    return self.impl

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array) -> Array:
    d = inputs_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'hidden_size {d} is not divisible by num_heads {self.num_heads}.')
    head_dim = d // self.num_heads
    qkv = functools.partial(Projection, features=(self.num_heads, head_dim), in_dims=1, dtype=self.dtype,
                            kernel_axes=('embed', 'heads', 'kv'), bias_axes=('heads', 'kv'), use_bias=self.use_bias)
    q = qkv(name='query')(inputs_q)
    k = qkv(name='key')(inputs_kv)
    v = qkv(name='value')(inputs_kv)
    if self.qk_norm:
      q = _head_norm(self.dtype, 'query_norm')(q)
      k = _head_norm(self.dtype, 'key_norm')(k)

    need_weights = self.is_mutable_collection('intermediates')
    impl = self._resolve_impl(need_weights, head_dim)
    q_len, kv_len = q.shape[1], k.shape[1]
    multiple = self.pad_to_multiple
    if impl == 'cudnn':
      # jax's cuDNN rule rejects odd lengths when differentiated ("Unsupported sequence length Q 197, KV 197":
      # its training check treats the placeholder bias as a bias), so 197 tokens go in as 198, the last masked.
      multiple = int(np.lcm(max(multiple, 1), 2))
    if multiple > 1:
      q, k, v = (_pad_sequence(t, multiple) for t in (q, k, v))
    padded = k.shape[1] != kv_len
    if impl == 'xla':
      mask = (jnp.arange(k.shape[1]) < kv_len) if padded else None
      weights = _attention_weights(q, k, mask, self.logit_scale)
      self.sow('intermediates', 'attention_weights', weights[:, :, :q_len, :kv_len])
      weights = nn.Dropout(rate=self.dropout_rate, broadcast_dims=())(
          weights, deterministic=self.deterministic)
      x = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    else:
      lengths = {}
      if padded:  # sharded like the batch: cuDNN's partitioner hands each shard its rows of q, k, v and lengths
        full = lambda n: nn.with_logical_constraint(jnp.full((k.shape[0],), n, jnp.int32), ('batch',))
        lengths = dict(query_seq_lengths=full(q.shape[1]), key_value_seq_lengths=full(kv_len))
      x = jax.nn.dot_product_attention(q, k, v, scale=self.logit_scale,
                                       implementation=None if impl == 'dot_product' else impl, **lengths)
    x = x[:, :q_len]

    return Projection(features=(d,), in_dims=2, dtype=self.dtype, kernel_axes=('heads', 'kv', 'embed'),
                      bias_axes=('embed',), use_bias=self.use_bias, name='out')(x)


def _layer_norm(dtype: Dtype, name: Optional[str] = None, eps: float = 1e-6) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                      scale_init=_logical(nn.initializers.ones, ('embed',)),
                      bias_init=_logical(nn.initializers.zeros, ('embed',)))


def _head_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
  """LayerNorm over the last (head_dim) axis of BTHD queries or keys."""
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name,
                      scale_init=_logical(nn.initializers.ones, ('kv',)),
                      bias_init=_logical(nn.initializers.zeros, ('kv',)))


class LayerScale(Module):
  """A learned per-channel scale on a residual branch (CaiT, DeiT III), initialised to `init_value`."""

  init_value: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param('scale', _logical(nn.initializers.constant(self.init_value), ('embed',)), (x.shape[-1],))
    return x * scale.astype(x.dtype)


def _patch_dropout(x: Array, rate: float, num_prefix_tokens: int, rng: jax.Array) -> Array:
  """Keeps a random max(1, int(n (1 - rate))) of each example's n patch tokens (FLIP); prefix tokens stay first."""
  prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
  keep = max(1, int(patches.shape[1] * (1. - rate)))
  _, idx = jax.lax.top_k(jax.random.uniform(rng, patches.shape[:2]), keep)  # a random subset, per example
  patches = jnp.take_along_axis(patches, idx[..., None], axis=1)
  return jnp.concatenate([prefix, patches], axis=1)


def _drop_path(x: Array, rate: Array, rng: jax.Array) -> Array:
  """Stochastic depth: zeroes whole examples' residual branches with probability `rate`, rescales the rest."""
  keep = 1. - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class Encoder1DBlock(Module):
  """Pre-LayerNorm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)), with optional drop-path.

  `parallel`: x + MHA(LN(x)) + MLP(LN(x)) from one LayerNorm (ViT-22B; timm's `ParallelScalingBlock`).
  `layer_scale_init`: a learned per-channel scale on each residual branch (one on the sum when parallel), from
  this value (None: none).
  """

  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  attention_impl: str = 'xla'
  attention_pad_to_multiple: int = 0
  deterministic: bool = True
  drop_path: bool = False   # static: no rng draws at all when stochastic depth is off
  qk_norm: bool = False
  use_bias: bool = True
  layer_scale_init: Optional[float] = None
  parallel: bool = False
  attention_logit_scale: Optional[float] = None
  mlp_activation: str = 'gelu_tanh'
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, inputs: Array, droppath_rate: Array) -> Tuple[Array, None]:
    x = nn.with_logical_constraint(inputs, ('batch', 'length', 'embed'))
    y = _layer_norm(self.dtype, eps=self.norm_eps)(x)
    a = MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.attention_dropout_rate,
        deterministic=self.deterministic, impl=self.attention_impl,
        pad_to_multiple=self.attention_pad_to_multiple, qk_norm=self.qk_norm, use_bias=self.use_bias,
        logit_scale=self.attention_logit_scale)(y, y)
    a = nn.Dropout(rate=self.dropout_rate)(a, deterministic=self.deterministic)
    if self.parallel:
      y = a + MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate,
                       deterministic=self.deterministic, use_bias=self.use_bias, activation=self.mlp_activation)(y)
      x = x + self._maybe_drop_path(self._maybe_layer_scale(y), droppath_rate)
      return nn.with_logical_constraint(x, ('batch', 'length', 'embed')), None
    x = x + self._maybe_drop_path(self._maybe_layer_scale(a), droppath_rate)

    y = _layer_norm(self.dtype, eps=self.norm_eps)(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate,
                 deterministic=self.deterministic, use_bias=self.use_bias, activation=self.mlp_activation)(y)
    x = x + self._maybe_drop_path(self._maybe_layer_scale(y), droppath_rate)
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed')), None

  def _maybe_layer_scale(self, y: Array) -> Array:
    return y if self.layer_scale_init is None else LayerScale(self.layer_scale_init)(y)

  def _maybe_drop_path(self, y: Array, rate: Array) -> Array:
    if self.deterministic or not self.drop_path:
      return y
    return _drop_path(y, rate, self.make_rng('dropout'))


class Encoder(Module):
  """Position embeddings, `num_layers` blocks (looped or `nn.scan`ned, optionally rematerialised), final norm."""

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  dtype: Dtype = jnp.float32
  attention_impl: str = 'xla'
  attention_pad_to_multiple: int = 0
  scan: bool = False
  remat_policy: str = 'none'
  stochastic_depth: float = 0.
  posemb: str = 'learn'
  grid: Tuple[int, int] = (0, 0)   # patch grid (h, w), for sincos2d embeddings
  num_prefix_tokens: int = 0       # class and register tokens in front of the grid (sincos2d, patch dropout)
  train: bool = False
  patch_dropout: float = 0.        # training only: drop this fraction of the patch tokens after the posemb
  block_options: Optional[Mapping[str, Any]] = None  # Encoder1DBlock's qk_norm, use_bias, layer_scale_init, ...
  add_position_embedding: bool = True  # False: the caller has added them (and their dropout)
  pre_norm: bool = False           # LayerNorm after the position embeddings, before the blocks (CLIP)
  final_norm: bool = True          # False: no encoder_norm (the model normalises after pooling: fc_norm)
  norm_eps: float = 1e-6           # of pre_norm and encoder_norm (the blocks' is in block_options)

  @nn.compact
  def __call__(self, x: Array, *, train: Optional[bool] = None, keep: Optional[Array] = None) -> Array:
    """`keep` (B, K) int: run only these patch tokens (MAE's visible ones), picked after the position embeddings."""
    train = self.train if train is None else train  # a field, or a call argument as in the reference
    if self.add_position_embedding:
      if self.posemb == 'learn':
        x = AddPositionEmbs(name='posembed_input')(x)
      else:
        pe = posemb_sincos_2d(*self.grid, x.shape[-1])
        pe = np.concatenate([np.zeros((1, self.num_prefix_tokens, x.shape[-1]), np.float32), pe], axis=1)
        x = x + jnp.asarray(pe, x.dtype)
      x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=not train)
    if keep is not None:
      patches = jnp.take_along_axis(x[:, self.num_prefix_tokens:], keep[..., None], axis=1)
      x = jnp.concatenate([x[:, :self.num_prefix_tokens], patches], axis=1)
    if train and self.patch_dropout > 0:
      x = _patch_dropout(x, self.patch_dropout, self.num_prefix_tokens, self.make_rng('dropout'))
    if self.pre_norm:
      x = _layer_norm(self.dtype, name='pre_norm', eps=self.norm_eps)(x)

    # Linearly increasing stochastic depth over the layers (0 for the first, `stochastic_depth` for the last).
    rates = jnp.asarray(np.linspace(0., self.stochastic_depth, self.num_layers), jnp.float32)
    block_kwargs = dict(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, attention_impl=self.attention_impl,
        attention_pad_to_multiple=self.attention_pad_to_multiple, deterministic=not train,
        drop_path=self.stochastic_depth > 0, **(self.block_options or {}))
    block = Encoder1DBlock
    if self.remat_policy != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan)
    if self.scan:
      scanned = nn.scan(
          block, variable_axes={'params': 0, 'intermediates': 0},
          split_rngs={'params': True, 'dropout': True}, in_axes=0, length=self.num_layers,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = scanned(name='encoderblock', **block_kwargs)(x, rates)
    else:
      for i in range(self.num_layers):
        x, _ = block(name=f'encoderblock_{i}', **block_kwargs)(x, rates[i])
    return _layer_norm(jnp.float32, name='encoder_norm', eps=self.norm_eps)(x) if self.final_norm else x


class MAPHead(Module):
  """Multihead attention pooling: a learned probe attends over the tokens (big_vision's MAPHead)."""

  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  attention_impl: str = 'xla'
  mlp_activation: str = 'gelu_tanh'
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    probe = self.param('probe', _logical(nn.initializers.xavier_uniform(), (None, None, 'embed')),
                       (1, 1, x.shape[-1]))
    probe = jnp.tile(probe.astype(x.dtype), [x.shape[0], 1, 1])
    x = MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                     impl=self.attention_impl)(probe, x)
    y = _layer_norm(self.dtype, eps=self.norm_eps)(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, activation=self.mlp_activation)(y)
    return x[:, 0]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  """Reads `key` from a dict, FrozenDict or ConfigDict."""
  return cfg[key] if key in cfg else default


class VisionTransformer(Module):
  """Vision Transformer; `VisionTransformer(num_classes=1000, **MODEL_CONFIGS['ViT-B_16'])`.

  `__call__(images NHWC in [-1, 1], *, train)` returns float32 logits (B, num_classes), or the pre-logits features
  when `num_classes` is 0/None; for 'unpooled'/'token_unpooled' one output per token.

  Options of current ViT research, all off by default (the published function):
  `num_registers` learned tokens `reg` after the class token (posemb added, dropped before pooling; "Vision
  Transformers Need Registers"); `layer_scale_init` (CaiT / DeiT III LayerScale); `qk_norm` and `parallel_block`
  (ViT-22B); `use_bias=False` drops the q/k/v/out and MLP biases; `patch_dropout` keeps a random
  1 - patch_dropout of the patch tokens in training (FLIP); `mup_base_width` switches on muP's forward pass (see
  `vit_jax.training.optim.mup_lr_scales` for the table); `distill_token` (DeiT, classifier 'token'): a second
  learned token whose output feeds its own head; the logits are the two heads' mean, or with
  `distill_heads=True` the pair (class head, distillation head) that `vit_jax.training.distill` trains.
  """

  num_classes: Optional[int]
  patches: Mapping[str, Any]
  transformer: Optional[Mapping[str, Any]]
  hidden_size: int
  resnet: Optional[Mapping[str, Any]] = None
  representation_size: Optional[int] = None
  classifier: str = 'token'
  head_bias_init: float = 0.
  head_zeroinit: bool = True
  model_name: Optional[str] = None
  posemb: str = 'learn'
  dtype: Dtype = jnp.float32
  attention_impl: str = 'xla'
  attention_pad_to_multiple: int = 0   # pad the attention sequence (197 -> 200, 256, ...) for fused kernels
  scan: bool = False
  remat_policy: str = 'none'
  stochastic_depth: float = 0.
  num_registers: int = 0
  layer_scale_init: Optional[float] = None
  qk_norm: bool = False
  parallel_block: bool = False
  use_bias: bool = True
  patch_dropout: float = 0.
  mup_base_width: Optional[int] = None
  encoder: Type[nn.Module] = Encoder  # another class is built as the reference's: (name, **transformer)(x, train=)
  mlp_activation: str = 'gelu_tanh'    # layers.ACTIVATIONS: 'gelu' (timm, HF), 'quick_gelu' (CLIP), 'swiglu'
  norm_eps: float = 1e-6               # every LayerNorm's epsilon (CLIP 1e-5, HF ViT 1e-12)
  pre_norm: bool = False               # LayerNorm before the blocks (CLIP)
  fc_norm: bool = False                # LayerNorm after pooling instead of before it (timm's fc_norm)
  projection_dim: Optional[int] = None  # bias-free linear map of the pooled features (CLIP's projection)
  pixel_mean: Optional[Tuple[float, float, float]] = None  # [-1, 1] inputs re-normalised to (x01 - mean) / std
  pixel_std: Optional[Tuple[float, float, float]] = None
  distill_token: bool = False          # DeiT: a learned `dist` token after `cls`, with its own head `head_dist`

  def _check(self) -> None:
    for name, value, allowed in (('classifier', self.classifier, CLASSIFIERS),
                                 ('attention_impl', self.attention_impl, ATTENTION_IMPLS),
                                 ('remat_policy', self.remat_policy, tuple(REMAT_POLICIES)),
                                 ('posemb', self.posemb, POSEMBS)):
      if value not in allowed:
        raise ValueError(f'Unknown {name}={value!r}; choose one of {", ".join(allowed)}.')
    if not 0 <= self.patch_dropout < 1:
      raise ValueError(f'patch_dropout={self.patch_dropout} must be in [0, 1); it is the fraction of patch tokens '
                       'dropped in training.')
    if self.mlp_activation not in layers.ACTIVATIONS:
      raise ValueError(f'Unknown mlp_activation={self.mlp_activation!r}; choose one of '
                       f'{", ".join(layers.ACTIVATIONS)}.')
    if self.num_registers < 0:
      raise ValueError(f'num_registers={self.num_registers} must be >= 0.')
    if self.distill_token and self.classifier != 'token':
      raise ValueError(f"distill_token needs classifier='token', got {self.classifier!r}.")

  def _mup_attention_logit_scale(self) -> Optional[float]:
    """muP: q k^T / head_dim instead of / sqrt(head_dim), equal to the standard scale at the base width."""
    if not self.mup_base_width:
      return None
    heads = _get(self.transformer, 'num_heads')
    head_dim, base_head_dim = self.hidden_size / heads, self.mup_base_width / heads
    return float(np.sqrt(base_head_dim) / head_dim)

  @nn.compact
  def __call__(self, inputs: Array, *, train: bool, keep: Optional[Array] = None, distill_heads: bool = False
               ) -> Any:
    """`keep` (B, K) int: the encoder runs on these patch tokens only (MAE's visible patches; `models.mae`).
    `distill_heads`: with `distill_token`, the class and distillation heads' logits apart (else their mean at eval)."""
    self._check()
    x = jnp.asarray(inputs, self.dtype)
    if self.pixel_mean is not None:  # checkpoints trained on mean/std-normalised pixels take our [-1, 1] images
      mean, std = (jnp.asarray(v, jnp.float32) for v in (self.pixel_mean, self.pixel_std))
      x = (((jnp.asarray(inputs, jnp.float32) + 1) * 0.5 - mean) / std).astype(self.dtype)
    if self.resnet is not None:
      x = resnet.resnet_root(x, tuple(_get(self.resnet, 'num_layers')),
                             _get(self.resnet, 'width_factor', 1), dtype=self.dtype)

    patch = tuple(_get(self.patches, 'size'))
    h, w = x.shape[1] // patch[0], x.shape[2] // patch[1]
    if h * patch[0] != x.shape[1] or w * patch[1] != x.shape[2]:
      raise ValueError(f'Image size {inputs.shape[1:3]} (after any ResNet root: {x.shape[1:3]}) is not divisible '
                       f'by the patch size {patch}; resize the images or change the patch size.')
    x = nn.Conv(self.hidden_size, kernel_size=patch, strides=patch, padding='VALID', dtype=self.dtype,
                kernel_init=_logical(nn.initializers.lecun_normal(), (None, None, None, 'embed')),
                bias_init=_logical(nn.initializers.zeros, ('embed',)), name='embedding')(x)
    n, h, w, c = x.shape
    x = jnp.reshape(x, [n, h * w, c])

    if self.transformer is not None:
      prefix = 0
      if self.classifier in ('token', 'token_unpooled'):
        cls = self.param('cls', _logical(nn.initializers.zeros, (None, None, 'embed')), (1, 1, c))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], axis=1)
        prefix = 1
      if self.distill_token:  # DeiT's init: truncated normal 0.02 (ours: normal 0.02), distinct from cls
        dist = self.param('dist', _logical(nn.initializers.normal(stddev=0.02), (None, None, 'embed')), (1, 1, c))
        x = jnp.concatenate([x[:, :1], jnp.tile(dist.astype(x.dtype), [n, 1, 1]), x[:, 1:]], axis=1)
        prefix = 2
      num_cls = prefix
      if self.num_registers:
        # DINOv2's (and timm's) init; the position embedding gives each register its own start.
        reg = self.param('reg', _logical(nn.initializers.normal(stddev=1e-6), (None, None, 'embed')),
                         (1, self.num_registers, c))
        x = jnp.concatenate([x[:, :num_cls], jnp.tile(reg.astype(x.dtype), [n, 1, 1]), x[:, num_cls:]], axis=1)
        prefix += self.num_registers
      block_options = dict(qk_norm=self.qk_norm, use_bias=self.use_bias, layer_scale_init=self.layer_scale_init,
                           parallel=self.parallel_block, attention_logit_scale=self._mup_attention_logit_scale(),
                           mlp_activation=self.mlp_activation, norm_eps=self.norm_eps)
      if not (isinstance(self.encoder, type) and issubclass(self.encoder, Encoder)):
        x = self.encoder(name='Transformer', **self.transformer)(x, train=train)
      else:
        x = self.encoder(name='Transformer', **self.transformer, dtype=self.dtype,
                         attention_impl=self.attention_impl, attention_pad_to_multiple=self.attention_pad_to_multiple,
                         scan=self.scan, remat_policy=self.remat_policy,
                         stochastic_depth=self.stochastic_depth, posemb=self.posemb, grid=(h, w),
                         num_prefix_tokens=prefix, train=train, patch_dropout=self.patch_dropout,
                         block_options=block_options, pre_norm=self.pre_norm, final_norm=not self.fc_norm,
                         norm_eps=self.norm_eps)(x, keep=keep)
      if self.num_registers:  # registers only carry computation: no output, no pooling
        x = jnp.concatenate([x[:, :num_cls], x[:, num_cls + self.num_registers:]], axis=1)

    if self.classifier == 'token' and self.distill_token:
      x = x[:, :2]  # (cls, dist): the layers below act on the last axis, both tokens through the same ones
    elif self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x, axis=1)
    elif self.classifier == 'map':
      x = MAPHead(mlp_dim=_get(self.transformer, 'mlp_dim'), num_heads=_get(self.transformer, 'num_heads'),
                  dtype=self.dtype, attention_impl=self.attention_impl, mlp_activation=self.mlp_activation,
                  norm_eps=self.norm_eps)(x)
    x = jnp.asarray(x, jnp.float32)
    if self.fc_norm:
      x = _layer_norm(jnp.float32, name='fc_norm', eps=self.norm_eps)(x)
    if self.projection_dim:
      x = nn.Dense(self.projection_dim, use_bias=False, name='projection',
                   kernel_init=_logical(nn.initializers.lecun_normal(), ('embed', None)))(x)

    if self.representation_size is not None:
      x = nn.Dense(self.representation_size, name='pre_logits',
                   kernel_init=_logical(nn.initializers.lecun_normal(), ('embed', None)),
                   bias_init=_logical(nn.initializers.zeros, (None,)))(x)
      x = nn.tanh(x)

    if self.num_classes:
      if self.mup_base_width:  # muP's output multiplier (1 at the base width)
        x = x * (self.mup_base_width / self.hidden_size)
      kernel_init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
      def head(name):
        return nn.Dense(self.num_classes, name=name, dtype=jnp.float32,
                        kernel_init=_logical(kernel_init, ('embed', 'classes')),
                        bias_init=_logical(nn.initializers.constant(self.head_bias_init), ('classes',)))
      if self.distill_token:
        class_logits, distill_logits = head('head')(x[:, 0]), head('head_dist')(x[:, 1])
        return (class_logits, distill_logits) if distill_heads else (class_logits + distill_logits) / 2
      x = head('head')(x)
    elif self.distill_token:
      x = x[:, 0]  # features: the class token's
    return x


def stack_encoder_blocks(params: Mapping[str, Any]) -> Dict[str, Any]:
  """Looped params (`encoderblock_{i}`) -> scanned params (`encoderblock` with a leading layer axis)."""
  params = dict(params)
  enc = dict(params['Transformer'])
  names = sorted((k for k in enc if re.fullmatch(r'encoderblock_\d+', k)), key=lambda k: int(k.split('_')[1]))
  if not names:
    return params
  enc['encoderblock'] = jax.tree.map(lambda *xs: jnp.stack(xs), *[enc.pop(k) for k in names])
  params['Transformer'] = enc
  return params


def unstack_encoder_blocks(params: Mapping[str, Any]) -> Dict[str, Any]:
  """Scanned params (`encoderblock` with a leading layer axis) -> looped params (`encoderblock_{i}`)."""
  params = dict(params)
  enc = dict(params['Transformer'])
  if 'encoderblock' not in enc:
    return params
  stacked = enc.pop('encoderblock')
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(num_layers):
    enc[f'encoderblock_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  params['Transformer'] = enc
  return params
