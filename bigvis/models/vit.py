"""Vision Transformer trunk (Dosovitskiy et al. 2021; Zhai et al. 2022 sizes).

Two implementations of the same parameter tree (`impl`; checkpoints load into either):
  'flax': stock `nn.Dense`, `nn.LayerNorm` and `nn.MultiHeadDotProductAttention` with
    `jax.nn.dot_product_attention` (cuDNN flash attention on GPU where it applies; flax's
    dot_general, param_dtype and partitioning hooks keep working). For GPU and TPU.
  'cpu': bigvis's layers laid out for XLA's CPU backend (`layers.py`, `attention.py`, and the fused
    CPU attention kernel on one device).
`models.build_trunk` resolves the config's 'auto' to 'cpu' on the CPU backend, 'flax' elsewhere.

Parameter names follow big_vision's `vit.py` exactly, so its `.npz` checkpoints can map by path and
the sharding rules (regexes over these paths) apply unchanged:
  embedding, cls, pos_embedding, Transformer/encoderblock_{i}/..., Transformer/encoder_norm,
  MAPHead_0, head.
"""
import functools
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bigvis.models import attention, layers

# name -> (width, depth, mlp_dim, num_heads), Zhai et al. 2022 table 2.
VARIANTS = {
    'Ti': (192, 12, 768, 3),
    'S': (384, 12, 1536, 6),
    'B': (768, 12, 3072, 12),
    'L': (1024, 24, 4096, 16),
    'H': (1280, 32, 5120, 16),
    'g': (1408, 40, 6144, 16),
    'test': (32, 2, 64, 2),  # A toy size for tests and smoke runs, not a published model.
}


def parse_variant(variant: str) -> dict:
  """'B/16' -> dict(width, depth, mlp_dim, num_heads, patch_size)."""
  m = re.fullmatch(r'(\w+)/(\d+)', variant)
  if not m or m[1] not in VARIANTS:
    raise ValueError(f'Unknown ViT variant {variant!r}; want one of {list(VARIANTS)}/<patch>.')
  width, depth, mlp_dim, heads = VARIANTS[m[1]]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads, patch_size=int(m[2]))


def posemb_sincos_2d(h, w, width, temperature=10_000.):
  """Fixed 2D sin-cos position embedding [1, h*w, width] (a constant, not a parameter).

  A quarter of the channels each for sin/cos of the x and y coordinate, in big_vision's order,
  so models trained there with 'sincos2d' see the same embedding here.
  """
  if width % 4:
    raise ValueError(f'sincos2d needs width divisible by 4, got {width}.')
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature ** (np.arange(width // 4) / (width // 4 - 1))
  x = x.reshape(-1, 1) * omega
  y = y.reshape(-1, 1) * omega
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


# big_vision's initialisers: xavier kernels; tiny non-zero MLP biases.
_XAVIER = nn.initializers.xavier_uniform()
IMPLS = ('flax', 'cpu')


def _nn(impl):
  """(Dense, LayerNorm, MultiHeadDotProductAttention) classes of an implementation."""
  if impl == 'flax':
    return nn.Dense, nn.LayerNorm, functools.partial(nn.MultiHeadDotProductAttention,
                                                     attention_fn=attention.flax_attention_fn)
  if impl == 'cpu':
    return layers.Dense, layers.LayerNorm, attention.MultiHeadDotProductAttention
  raise ValueError(f'Unknown ViT impl {impl!r}; want one of {IMPLS}.')


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  impl: str = 'cpu'

  @nn.compact
  def __call__(self, x, deterministic=True):
    dense = lambda n: _nn(self.impl)[0](n, dtype=self.dtype, kernel_init=_XAVIER,
                                        bias_init=nn.initializers.normal(stddev=1e-6))
    d = x.shape[-1]
    x = nn.gelu(dense(self.mlp_dim)(x))
    x = nn.Dropout(self.dropout)(x, deterministic)
    return dense(d)(x)


def _attention(num_heads, dtype, impl):
  return _nn(impl)[2](num_heads, dtype=dtype, kernel_init=_XAVIER)


def _layer_norm(dtype, impl, **kw):
  return _nn(impl)[1](dtype=dtype, **kw)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  impl: str = 'cpu'

  @nn.compact
  def __call__(self, x, deterministic=True):
    y = _layer_norm(self.dtype, self.impl)(x)
    y = _attention(self.num_heads, self.dtype, self.impl)(y, y)
    x = x + nn.Dropout(self.dropout)(y, deterministic)
    y = _layer_norm(self.dtype, self.impl)(x)
    y = MlpBlock(self.mlp_dim, self.dropout, self.dtype, self.impl)(y, deterministic)
    return x + nn.Dropout(self.dropout)(y, deterministic)


class Encoder(nn.Module):
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  impl: str = 'cpu'

  @nn.compact
  def __call__(self, x, deterministic=True):
    block_cls = Encoder1DBlock
    if self.remat:  # Recompute activations in the backward pass; `deterministic` (arg 2) is static.
      block_cls = nn.remat(Encoder1DBlock, static_argnums=(2,))
    out = {}
    for i in range(self.depth):
      block = block_cls(self.mlp_dim, self.num_heads, self.dropout, self.dtype, self.impl,
                        name=f'encoderblock_{i}')
      x = out[f'block_{i}'] = block(x, deterministic)
    return _layer_norm(self.dtype, self.impl, name='encoder_norm')(x), out


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned query attends over all tokens."""
  mlp_dim: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  impl: str = 'cpu'

  @nn.compact
  def __call__(self, x):
    probe = self.param('probe', _XAVIER, (1, 1, x.shape[-1]), jnp.float32)
    probe = jnp.broadcast_to(probe.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = _attention(self.num_heads, self.dtype, self.impl)(probe, x)
    y = _layer_norm(self.dtype, self.impl)(x)
    x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, impl=self.impl)(y)
    return x[:, 0]


class ViT(nn.Module):
  """ViT trunk. Returns (pooled [B, D] float32, intermediates), or logits if num_classes > 0.

  intermediates: 'stem' [B,h,w,D] patch embeddings, 'block_{i}' [B,N,D] block outputs,
  'encoded' [B,N,D] after the final LayerNorm (includes the class token for pool 'tok'),
  'pre_logits' [B,D] = pooled features.
  A learned position embedding has the patch grid of the images seen at init; apply on that size.
  """
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  pool_type: str = 'tok'
  posemb: str = 'learn'
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  num_classes: int = 0
  impl: str = 'cpu'  # 'flax' | 'cpu': see the module docstring.

  @nn.compact
  def __call__(self, images, train=False):
    out = {}
    p, d = self.patch_size, self.width
    x = jnp.asarray(images, self.dtype)
    x = out['stem'] = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                              name='embedding')(x)
    n, h, w, _ = x.shape
    x = x.reshape(n, h * w, d)

    # Position embedding covers patches only; the class token (added after) has none.
    if self.posemb == 'learn':
      pe = self.param('pos_embedding', nn.initializers.normal(stddev=d**-0.5), (1, h * w, d),
                      jnp.float32)
    elif self.posemb == 'sincos2d':
      pe = posemb_sincos_2d(h, w, d)
    else:
      raise ValueError(f'Unknown posemb {self.posemb!r}.')
    x = x + jnp.asarray(pe, x.dtype)

    if self.pool_type == 'tok':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, d), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d)), x], axis=1)

    x = nn.Dropout(self.dropout)(x, not train)
    x, blocks = Encoder(self.depth, self.mlp_dim, self.num_heads, self.dropout, self.dtype,
                        self.remat, self.impl, name='Transformer')(x, not train)
    out.update(blocks)
    out['encoded'] = x

    if self.pool_type == 'tok':
      x = x[:, 0]
    elif self.pool_type == 'gap':
      x = jnp.mean(x, axis=1)
    elif self.pool_type == 'map':
      x = MAPHead(self.mlp_dim, self.num_heads, self.dtype, self.impl)(x)
    else:
      raise ValueError(f'Unknown pool_type {self.pool_type!r}.')
    x = out['pre_logits'] = x.astype(jnp.float32)

    if self.num_classes:  # Zero-init head (big_vision default): start from uniform logits.
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(x)
    return x, out
