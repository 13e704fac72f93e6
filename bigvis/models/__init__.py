"""Model trunks: `build_trunk(config.model)` -> a linen Module.

A trunk is applied as `trunk.apply({'params': p}, images, train=..., rngs=...)` on float NHWC
images and returns `(pooled [B, D] float32, intermediates)`; task heads live elsewhere and pick
intermediates by name. Params are always float32; `dtype` only sets the compute dtype.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvis.models import resnet, vit

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_COMMON = {'name': None, 'variant': None, 'dtype': 'float32', 'remat': False, 'dropout': 0.0,
           'impl': 'auto'}
IMPLS = ('auto',) + vit.IMPLS
# Every field each trunk reads, with its default. Unknown keys are rejected once, for the whole
# config, by bigvis.config.validate; the ResNet ignores the ViT-only pool_type and posemb, and
# `impl` (it is built from stock flax layers on every backend).
_FIELDS = {
    'vit': dict(_COMMON, pool_type='tok', posemb='learn'),
    'resnet': dict(_COMMON),
}


def _fields(model_config) -> dict:
  """Reads the model fields (ConfigDict, dict or plain object) and checks their values."""
  get = getattr(model_config, 'get', None) or (lambda k, d: getattr(model_config, k, d))
  name = get('name', None)
  if name not in _FIELDS:
    raise ValueError(f'Unknown model name {name!r}; want one of {list(_FIELDS)}.')
  f = {k: get(k, d) for k, d in _FIELDS[name].items()}
  if f['variant'] is None:
    raise ValueError('model config needs a `variant`.')
  if f['dtype'] not in _DTYPES:
    raise ValueError(f"Unknown dtype {f['dtype']!r}; want one of {list(_DTYPES)}.")
  f['dtype'] = _DTYPES[f['dtype']]
  if f['impl'] not in IMPLS:
    raise ValueError(f"Unknown model impl {f['impl']!r}; want one of {list(IMPLS)}.")
  return f


def resolve_impl(impl):
  """'auto' -> 'cpu' when JAX computes on the CPU, 'flax' on GPU and TPU; others unchanged."""
  if impl == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'flax'
  return impl


def build_trunk(model_config, num_classes: int = 0) -> nn.Module:
  """Builds the trunk named by `model_config.name` ('vit' or 'resnet').

  num_classes > 0 adds a zero-init Dense `head` (for published parameter counts and classifier
  checkpoints); the trunk then returns logits in place of the pooled features.
  """
  f = _fields(model_config)
  common = dict(dtype=f['dtype'], remat=bool(f['remat']), dropout=float(f['dropout']),
                num_classes=num_classes)
  if f['name'] == 'vit':
    if f['pool_type'] not in ('tok', 'gap', 'map'):
      raise ValueError(f"Unknown pool_type {f['pool_type']!r}; want 'tok', 'gap' or 'map'.")
    if f['posemb'] not in ('learn', 'sincos2d'):
      raise ValueError(f"Unknown posemb {f['posemb']!r}; want 'learn' or 'sincos2d'.")
    return vit.ViT(**vit.parse_variant(f['variant']), pool_type=f['pool_type'],
                   posemb=f['posemb'], impl=resolve_impl(f['impl']), **common)
  return resnet.ResNet(**resnet.parse_variant(f['variant']), **common)


def feature_dim(model_config) -> int:
  """Width D of the pooled features the trunk returns."""
  f = _fields(model_config)
  if f['name'] == 'vit':
    return vit.parse_variant(f['variant'])['width']
  resnet.parse_variant(f['variant'])  # Validates the variant.
  return resnet.FEATURE_DIM
