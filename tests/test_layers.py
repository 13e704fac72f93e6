"""bigvis's Dense, LayerNorm and attention module against flax's: same params, values, gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvis.models import attention, layers
from tests import helpers

_XAVIER = nn.initializers.xavier_uniform()
_BIAS = nn.initializers.normal(stddev=0.5)  # Non-zero biases, so their init is compared too.


def _check_same(ours, theirs, inputs, dtype, atol):
  """Same param tree and init values; same outputs and gradients (params and inputs)."""
  p = ours.init(jax.random.key(3), *inputs)
  p_ref = theirs.init(jax.random.key(3), *inputs)
  assert jax.tree.structure(p) == jax.tree.structure(p_ref)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  out, out_ref = ours.apply(p, *inputs), theirs.apply(p_ref, *inputs)
  assert out.dtype == out_ref.dtype == dtype
  np.testing.assert_allclose(out.astype(np.float32), out_ref.astype(np.float32), atol=atol)

  w = jax.random.normal(jax.random.key(4), out.shape)
  loss = lambda m: lambda p, *x: jnp.sum(m.apply(p, *x).astype(jnp.float32) * w)
  argnums = tuple(range(len(inputs) + 1))
  got = jax.grad(loss(ours), argnums)(p, *inputs)
  want = jax.grad(loss(theirs), argnums)(p_ref, *inputs)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype, path
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=atol,
                               rtol=1e-2 if dtype == jnp.bfloat16 else 1e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('dtype,atol', [(jnp.float32, 2e-5), (jnp.bfloat16, 0.1)])
def test_dense_matches_flax(dtype, atol):
  x = jax.random.normal(jax.random.key(0), (3, 7, 16)).astype(dtype)
  kw = dict(dtype=dtype, kernel_init=_XAVIER, bias_init=_BIAS)
  _check_same(layers.Dense(24, **kw), nn.Dense(24, **kw), (x,), dtype, atol)
  _check_same(layers.Dense((4, 6), **kw), nn.DenseGeneral((4, 6), **kw), (x,), dtype, atol)
  heads = x.reshape(3, 7, 4, 4)
  _check_same(layers.Dense(10, axes=2, **kw), nn.DenseGeneral(10, axis=(-2, -1), **kw),
              (heads,), dtype, atol)


@pytest.mark.parametrize('dtype,atol', [(jnp.float32, 2e-5), (jnp.bfloat16, 0.1)])
def test_layer_norm_matches_flax(dtype, atol):
  # An offset mean and a spread-out scale, so centring and normalising both matter.
  x = (3. + 2. * jax.random.normal(jax.random.key(0), (2, 5, 32))).astype(dtype)
  ours, theirs = layers.LayerNorm(dtype=dtype), nn.LayerNorm(dtype=dtype)
  p = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(5), a.shape),
                   theirs.init(jax.random.key(3), x))
  _check_same(ours, theirs, (x,), dtype, atol)
  np.testing.assert_allclose(ours.apply(p, x).astype(np.float32),
                             theirs.apply(p, x).astype(np.float32), atol=atol)


def test_layer_norm_float32_statistics_for_bf16_inputs():
  # A large common offset: bf16 statistics would lose the small differences around it.
  x = 1000. + jnp.arange(64, dtype=jnp.float32).reshape(2, 32) / 8
  p = layers.LayerNorm().init(jax.random.key(0), x)
  y = layers.LayerNorm(dtype=jnp.bfloat16).apply(p, x.astype(jnp.bfloat16))
  ref = nn.LayerNorm().apply(p, x.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(y.astype(np.float32), ref, atol=0.02)


def test_colsum_and_bias_add_gradient():
  g = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))
  np.testing.assert_allclose(layers.colsum(g), g.sum((0, 1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.colsum(g, 2), g.sum((0, 1)), rtol=1e-5, atol=1e-5)
  assert layers.colsum(g.astype(jnp.bfloat16)).dtype == jnp.float32
  b = jnp.ones((4, 6))
  db = jax.grad(lambda b: jnp.sum(layers.bias_add(jnp.zeros_like(g), b) * g))(b)
  np.testing.assert_allclose(db, g.sum((0, 1)), rtol=1e-5, atol=1e-5)


def test_tall_kernel_gradient_is_one_wide_dot():
  """A [K, N] kernel with K > N gets its gradient from a [N, K] dot, transposed (on CPU).

  XLA's CPU dot ran the tall orientation ~1.5x slower at ViT-Ti/16's MLP output shapes.
  """
  x = jax.random.normal(jax.random.key(0), (40, 24))
  w = jax.random.normal(jax.random.key(1), (24, 8))
  g = jax.random.normal(jax.random.key(2), (40, 8))
  loss = lambda w, x, g: jnp.sum(layers.matmul(x, w, (((1,), (0,)), ((), ()))) * g)
  grad = jax.jit(jax.grad(loss))  # x and g as arguments: as constants XLA would fold the dot
  np.testing.assert_allclose(grad(w, x, g), x.T @ g, rtol=1e-5, atol=1e-5)
  hlo = grad.lower(w, x, g).compile().as_text()
  dot_shapes = [shape for shape, text in helpers.hlo_defs(hlo).values() if text.startswith('dot(')]
  assert (8, 24) in dot_shapes and (24, 8) not in dot_shapes, dot_shapes


@pytest.mark.parametrize('nq', [9, 1])  # self-attention; one query (MAP pooling)
def test_attention_module_matches_flax(monkeypatch, nq):
  # Compare the module, not the attention maths: both use bigvis's XLA attention path here.
  monkeypatch.setattr(attention, 'use_cpu_kernel', lambda dtype: False)
  x = jax.random.normal(jax.random.key(0), (2, 9, 24))
  q = x if nq == 9 else jax.random.normal(jax.random.key(1), (2, 1, 24))
  ours = attention.MultiHeadDotProductAttention(3, kernel_init=_XAVIER)
  theirs = nn.MultiHeadDotProductAttention(num_heads=3, kernel_init=_XAVIER,
                                           attention_fn=attention.dot_product_attention)
  # atol: the key bias's gradient is zero in exact arithmetic (softmax ignores a per-row shift),
  # so both sides hold only rounding there.
  _check_same(ours, theirs, (q, x), jnp.float32, 2e-5)
  with pytest.raises(ValueError, match='not divisible'):
    attention.MultiHeadDotProductAttention(5).init(jax.random.key(0), x, x)
