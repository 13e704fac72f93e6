"""BiT-style ResNet v1.5 / ResNeXt trunk: GroupNorm + weight-standardized convolutions.

No BatchNorm (as in Kolesnikov et al. 2020, "Big Transfer"): GroupNorm needs no batch statistics,
so the train state stays params-only and the model behaves the same at any per-device batch size;
weight standardization (Qiao et al. 2019) lets GroupNorm networks train about as well as BatchNorm.
v1.5: the stride of a downsampling unit sits on its 3x3 conv, not the first 1x1.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
FEATURE_DIM = 2048  # 4 * 64 * 2**3: output width of the last stage for every variant here.


def parse_variant(variant: str) -> dict:
  """'50' -> ResNet-50; 'x50_32x4d' -> ResNeXt-50 with 32 groups of width 4."""
  m = re.fullmatch(r'(\d+)|x(\d+)_(\d+)x(\d+)d', str(variant))
  depth = m and int(m[1] or m[2])
  if depth not in STAGES:
    raise ValueError(f"Unknown ResNet variant {variant!r}; want e.g. '50' or 'x50_32x4d'.")
  if m[1]:
    return dict(stage_sizes=STAGES[depth], groups=1, group_width=64)
  return dict(stage_sizes=STAGES[depth], groups=int(m[3]), group_width=int(m[4]))


class StdConv(nn.Module):
  """Bias-free conv whose kernel is standardized (zero mean, unit variance per output channel)."""
  features: int
  kernel_size: int
  strides: int = 1
  groups: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    shape = (k, k, x.shape[-1] // self.groups, self.features)
    w = self.param('kernel', nn.initializers.he_normal(), shape, jnp.float32)
    # Standardize in float32 before the cast, so bf16 compute cannot spoil the statistics.
    w = w - w.mean(axis=(0, 1, 2), keepdims=True)
    w = w * jax.lax.rsqrt(w.var(axis=(0, 1, 2), keepdims=True) + 1e-8)
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), (self.strides,) * 2, 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=self.groups)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, grouped for ResNeXt) -> 1x1, each conv followed by GroupNorm."""
  mid: int
  out: int
  strides: int = 1
  groups: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **kw: StdConv(*a, dtype=self.dtype, **kw)
    norm = lambda **kw: nn.GroupNorm(num_groups=32, dtype=self.dtype, **kw)
    y = nn.relu(norm(name='gn1')(conv(self.mid, 1, name='conv1')(x)))
    y = conv(self.mid, 3, self.strides, self.groups, name='conv2')(y)
    y = nn.relu(norm(name='gn2')(y))
    # Zero-init the last scale so each unit starts as the identity (Goyal et al. 2017).
    y = norm(name='gn3', scale_init=nn.initializers.zeros)(conv(self.out, 1, name='conv3')(y))
    if x.shape[-1] != self.out or self.strides != 1:
      x = norm(name='gn_proj')(conv(self.out, 1, self.strides, name='conv_proj')(x))
    return nn.relu(x + y)


class Stage(nn.Module):
  """`size` bottleneck units; the first one changes width and stride."""
  size: int
  mid: int
  out: int
  strides: int = 1
  groups: int = 1
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    unit_cls = nn.remat(Bottleneck) if self.remat else Bottleneck  # Recompute in backward.
    for u in range(self.size):
      x = unit_cls(self.mid, self.out, self.strides if u == 0 else 1, self.groups, self.dtype,
                   name=f'unit{u + 1:02d}')(x)
    return x


class ResNet(nn.Module):
  """ResNet trunk. Returns (pooled [B, 2048] float32, intermediates), or logits if num_classes > 0.

  intermediates: 'stem' (after the max pool, stride 4), 'stage_1'..'stage_4' (strides 4..32),
  'pre_logits' [B, 2048] = pooled features. `dropout` applies to the pooled features in training.
  """
  stage_sizes: tuple
  groups: int = 1
  group_width: int = 64
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  dropout: float = 0.0
  num_classes: int = 0

  @nn.compact
  def __call__(self, images, train=False):
    out = {}
    x = StdConv(64, 7, 2, dtype=self.dtype, name='conv_root')(jnp.asarray(images, self.dtype))
    x = nn.relu(nn.GroupNorm(num_groups=32, dtype=self.dtype, name='gn_root')(x))
    x = out['stem'] = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')

    # Bottleneck width 64*2**s; ResNeXt instead uses groups*group_width*2**s (wider, grouped).
    for s, size in enumerate(self.stage_sizes):
      x = out[f'stage_{s + 1}'] = Stage(
          size, mid=self.groups * self.group_width * 2**s, out=256 * 2**s,
          strides=1 if s == 0 else 2, groups=self.groups, dtype=self.dtype, remat=self.remat,
          name=f'block{s + 1}')(x)

    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = out['pre_logits'] = nn.Dropout(self.dropout)(x, not train)
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name='head')(x)
    return x, out
