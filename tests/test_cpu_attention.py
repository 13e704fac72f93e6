"""The fused CPU attention kernel (bigvis/kernels/cpu_attention.cc) against flax's attention."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvis.kernels import cpu_attention
from bigvis.models import attention, vit


@pytest.fixture(scope='module', autouse=True)
def kernel():
  assert cpu_attention.available(), (
      f'{cpu_attention.LIBRARY} is not built: `make test` builds it '
      '(or `python -m bigvis.kernels.cpu_attention`)')


def _qkvw(shape_q, shape_kv, seed=0):
  rng = np.random.default_rng(seed)
  q, w = (jnp.asarray(rng.standard_normal(shape_q), jnp.float32) for _ in range(2))
  k, v = (jnp.asarray(rng.standard_normal(shape_kv), jnp.float32) for _ in range(2))
  return q, k, v, w


@pytest.mark.parametrize('shape_q,shape_kv', [
    ((2, 17, 3, 8), (2, 17, 3, 8)),   # self-attention
    ((3, 1, 2, 8), (3, 17, 2, 8)),    # MAP head: one probe query
    ((1, 197, 3, 64), (1, 197, 3, 64)),  # ViT-Ti/16's shape, one image
])
def test_kernel_matches_flax_values_and_gradients(shape_q, shape_kv):
  q, k, v, w = _qkvw(shape_q, shape_kv)
  scale = shape_q[-1] ** -0.5

  def loss_and_grads(fn):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2)))(q, k, v)

  ref, ref_g = loss_and_grads(nn.dot_product_attention)
  out, out_g = loss_and_grads(lambda q, k, v: cpu_attention.attention(q, k, v, scale))
  np.testing.assert_allclose(out, ref, atol=5e-5)  # a sum of ~10^3 signed terms
  np.testing.assert_allclose(jax.jit(cpu_attention.attention, static_argnums=3)(q, k, v, scale),
                             nn.dot_product_attention(q, k, v), atol=1e-5)
  for a, b in zip(out_g, ref_g):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_kernel_is_deterministic_and_propagates_nan():
  q, k, v, _ = _qkvw((4, 33, 3, 16), (4, 33, 3, 16), seed=1)
  run = jax.jit(jax.grad(lambda q, k, v: jnp.sum(cpu_attention.attention(q, k, v, 0.25) ** 2),
                         argnums=(0, 1, 2)))
  first, again = run(q, k, v), run(q, k, v)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)  # tasks write disjoint slices: no order effects
  out = cpu_attention.attention(q.at[1, 5, 2, 0].set(jnp.nan), k, v, 0.25)
  assert np.isnan(out[1, 5, 2]).all()  # the poisoned query's row, and only that head's row
  assert np.isfinite(np.delete(np.asarray(out[1]), 5, axis=0)).all() and np.isfinite(out[0]).all()


def test_vit_with_kernel_equals_xla_attention(monkeypatch):
  model = vit.ViT(**vit.parse_variant('Ti/16'), num_classes=10, pool_type='map')
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 48, 48, 3)), jnp.float32)
  params = model.init(jax.random.key(0), x)

  def loss_and_grads():
    f = lambda p: jnp.sum(model.apply(p, x, train=True)[0] ** 2)
    return jax.jit(jax.value_and_grad(f))(params)

  monkeypatch.setattr(attention, 'use_cpu_kernel', lambda dtype: False)
  ref, ref_g = loss_and_grads()
  monkeypatch.setattr(attention, 'use_cpu_kernel', lambda dtype: True)
  hlo = jax.jit(lambda p: model.apply(p, x)).lower(params).as_text()
  assert 'BigvisAttentionForward' in hlo
  out, out_g = loss_and_grads()
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(out_g), jax.tree.leaves(ref_g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_kernel_only_for_float32_on_one_cpu_device(monkeypatch):
  # The suite runs with 8 simulated devices: sharded runs keep XLA's attention.
  assert jax.device_count() == 8 and not attention.use_cpu_kernel(jnp.float32)
  monkeypatch.setattr(jax, 'device_count', lambda: 1)
  assert attention.use_cpu_kernel(jnp.float32)
  assert not attention.use_cpu_kernel(jnp.bfloat16)
