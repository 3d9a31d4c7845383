"""Masked autoencoder (He et al. 2022) on our ViT: per-example random masks, the encoder on the visible patches only,
a light decoder that predicts the pixels of every patch.

The encoder is the ordinary `VisionTransformer` (no head, unpooled) sharing this module's scope, so its params sit
in the ordinary ViT layout at the top level (`embedding`, `cls`, `Transformer/...`) and only `decoder` is added:
a workdir's params minus `decoder` load into a classifier (`config.model_init`) or export as a ViT `.npz`.

The decoder's position embeddings are the fixed 2-D sin-cos ones (as the paper's): nothing to learn or resample,
and the decoder is thrown away after pretraining.

Hybrids (ResNet stem + ViT): a token covers a square of `patch` pixels (the stem's stride times the patch size), and
the masked squares' pixels are set to 0 (the middle of our [-1, 1] range) before the stem, so that no visible token
sees a masked pixel through the stem's receptive field; the transformer still runs on the visible tokens only. The
stem itself runs on the whole (partly zeroed) image.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import resnet as resnet_lib
from vit_jax.models import vit

Array = jax.Array
_logical = nn.with_logical_partitioning  # logical axis names on each weight, as vit.py's (the sharding rules read them)


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """Patches each example keeps: max(1, int(n (1 - mask_ratio))) (the paper's `len_keep`)."""
  return max(1, int(num_patches * (1. - mask_ratio)))


def random_masks(rng: Array, batch: int, num_patches: int, mask_ratio: float) -> Tuple[Array, Array]:
  """(keep (B, K) int32 ascending indices of the visible patches, masked (B, N) bool), example i's drawn from
  `fold_in(rng, i)` alone, so a mask depends on (key, example index) and not on the batch's size or sharding."""
  k = num_visible(num_patches, mask_ratio)

  def one(i: Array) -> Array:
    noise = jax.random.uniform(jax.random.fold_in(rng, i), (num_patches,))
    return jnp.sort(jnp.argsort(noise)[:k]).astype(jnp.int32)

  keep = jax.vmap(one)(jnp.arange(batch))
  masked = jnp.ones((batch, num_patches), bool).at[jnp.arange(batch)[:, None], keep].set(False)
  return keep, masked


def pixel_visible(masked: Array, grid: Tuple[int, int], patch: int) -> Array:
  """(B, H, W, 1) bool: the pixels of the visible tokens, from `masked` (B, N) over a row-major `grid` of squares
  of `patch` pixels."""
  m = ~masked.reshape(masked.shape[0], grid[0], 1, grid[1], 1)
  m = jnp.broadcast_to(m, (masked.shape[0], grid[0], patch, grid[1], patch))
  return m.reshape(masked.shape[0], grid[0] * patch, grid[1] * patch, 1)


class Decoder(vit.Module):
  """Visible tokens -> pixels of every patch: linear embed, mask tokens at the masked places, fixed sin-cos position
  embeddings, `num_layers` blocks, LayerNorm, linear prediction of patch*patch*3 values per patch."""

  num_layers: int
  hidden_size: int
  num_heads: int
  patch: int
  num_prefix_tokens: int
  dtype: Any = jnp.float32
  attention_impl: str = 'xla'  # the encoder's (vit.ATTENTION_IMPLS)

  @nn.compact
  def __call__(self, tokens: Array, keep: Array, grid: Tuple[int, int], *, train: bool) -> Array:
    d, n = self.hidden_size, grid[0] * grid[1]
    x = nn.Dense(d, dtype=self.dtype, name='embed',
                 kernel_init=_logical(nn.initializers.xavier_uniform(), ('embed', None)),
                 bias_init=_logical(nn.initializers.zeros, (None,)))(tokens)
    mask_token = self.param('mask_token', _logical(nn.initializers.normal(0.02), (None, None, None)),
                            (1, 1, d))
    prefix, visible = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
    full = jnp.broadcast_to(mask_token.astype(x.dtype), (x.shape[0], n, d))
    full = jax.vmap(lambda f, i, v: f.at[i].set(v))(full, keep, visible)
    x = jnp.concatenate([prefix, full], axis=1)
    x = vit.Encoder(num_layers=self.num_layers, mlp_dim=4 * d, num_heads=self.num_heads, dtype=self.dtype,
                    attention_impl=self.attention_impl,
                    posemb='sincos2d', grid=grid, num_prefix_tokens=self.num_prefix_tokens,
                    name='Transformer')(x, train=train)
    x = nn.Dense(self.patch * self.patch * 3, dtype=jnp.float32, name='pred',
                 kernel_init=_logical(nn.initializers.xavier_uniform(), (None, None)),
                 bias_init=_logical(nn.initializers.zeros, (None,)))(x)
    return x[:, self.num_prefix_tokens:]


class MaskedAutoencoder(vit.Module):
  """`__call__(images, *, train, mask_rng=None)` -> (predicted pixels (B, N, p*p*3), masked (B, N) bool).

  `encoder` is a `VisionTransformer` without head whose classifier is 'token_unpooled' (a class token) or
  'unpooled'; its params are this module's top level. `mask_rng` None draws the masks from a fixed key (init,
  evaluation: the same masks at every eval).
  """

  encoder: vit.VisionTransformer
  mask_ratio: float = 0.75
  decoder_num_layers: int = 8
  decoder_hidden_size: int = 512
  decoder_num_heads: int = 16

  def setup(self):
    if not 0 < self.mask_ratio < 1:
      raise ValueError(f'mask_ratio={self.mask_ratio} must be in (0, 1).')
    nn.share_scope(self, self.encoder)  # the encoder's params at the top level: the ordinary ViT layout
    self.decoder = Decoder(num_layers=self.decoder_num_layers, hidden_size=self.decoder_hidden_size,
                           num_heads=self.decoder_num_heads, patch=self.patch,
                           num_prefix_tokens=int(self.encoder.classifier == 'token_unpooled'),
                           dtype=self.encoder.dtype, attention_impl=self.encoder.attention_impl)

  @property
  def patch(self) -> int:
    """The side in pixels of the square one token covers (and the decoder predicts): the patch size, times the
    ResNet stem's stride in a hybrid."""
    resnet = self.encoder.resnet
    stride = 1 if resnet is None else resnet_lib.root_stride(resnet['num_layers'])
    return int(tuple(self.encoder.patches['size'])[0]) * stride

  def __call__(self, images: Array, *, train: bool, mask_rng: Optional[Array] = None) -> Tuple[Array, Array]:
    b, h, w = images.shape[0], images.shape[1] // self.patch, images.shape[2] // self.patch
    rng = jax.random.PRNGKey(0) if mask_rng is None else mask_rng
    keep, masked = random_masks(rng, b, h * w, self.mask_ratio)
    if self.encoder.resnet is not None:  # the stem must not see masked pixels: zero them
      images = images * pixel_visible(masked, (h, w), self.patch).astype(images.dtype)
    tokens = self.encoder(images, train=train, keep=keep)
    return self.decoder(tokens, keep, (h, w), train=train), masked


def from_classifier(model: vit.VisionTransformer, section: Any) -> MaskedAutoencoder:
  """The MAE of a built classifier `model` (head dropped; a class token kept) with `config.model`'s MAE keys."""
  classifier = 'token_unpooled' if model.classifier in ('token', 'token_unpooled') else 'unpooled'
  get = lambda k, default: section.get(k, default) if section.get(k) is not None else default
  return MaskedAutoencoder(encoder=model.clone(num_classes=0, classifier=classifier, representation_size=None),
                           mask_ratio=get('mask_ratio', 0.75), decoder_num_layers=get('decoder_num_layers', 8),
                           decoder_hidden_size=get('decoder_hidden_size', 512),
                           decoder_num_heads=get('decoder_num_heads', 16))
