"""Dense and LayerNorm with flax's parameters and maths, laid out for XLA's CPU backend.

`Dense` and `LayerNorm` are drop-ins for `nn.Dense` and `nn.LayerNorm` (same parameter names,
shapes and initialisers, so checkpoints and sharding rules carry over). What differs is how the
work reaches XLA; on the 2-core dev CPU, at ViT-Ti/16 shapes:
- every matmul is one 2-D dot (`matmul`), so the weight gradients read activations in place,
  and a tall kernel's gradient is computed as its wide transpose, which XLA's CPU dot runs faster;
- per-channel sums over all rows (bias and scale gradients) are matrix-vector products
  (`colsum`). Written as reductions, XLA's CPU backend splits them into a strided, single-threaded
  reduce-window, several times slower than the dot;
- LayerNorm's backward pass is written out (custom_vjp) with its row means as dots too.
The measured figures are in bench/results/cpu_layers.md (GPU and TPU get the same dots; not
measured there). Statistics and gradient sums are float32 whatever the compute dtype.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def matmul(lhs, rhs, dimension_numbers, precision=None, **kw):
  """`lax.dot_general` for the dense layers, computed as one 2-D matmul.

  The layers contract the trailing axes of [B, N, ...] activations with the leading axes of the
  kernel. As written, each weight gradient is a dot over several axes (B and N), and XLA's CPU
  backend first copies one operand into a transposed buffer for it (ViT-Ti/16: 12 copies of
  [768, 6304] floats per step and 60 of [192, 6304]). Reshaped to matrices, which costs nothing,
  every dot of the forward and backward pass reads its operands in place.
  """
  (lhs_c, rhs_c), batch = dimension_numbers
  n = len(lhs_c)
  if (any(batch) or tuple(lhs_c) != tuple(range(lhs.ndim - n, lhs.ndim))
      or tuple(rhs_c) != tuple(range(n))):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, **kw)
  k = math.prod(rhs.shape[:n])
  x, w = lhs.reshape(-1, k), rhs.reshape(k, -1)
  if precision is None and not kw:
    out = _matmul2d(x, w)
  else:  # An explicit precision or output type: XLA's own dot and gradient.
    out = _dot(x, w, 1, 0, precision, **kw)
  return out.reshape(*lhs.shape[:lhs.ndim - n], *rhs.shape[n:])


def _dot(a, b, a_axis, b_axis, precision=None, **kw):
  """2-D matmul contracting axis `a_axis` of a with axis `b_axis` of b."""
  return jax.lax.dot_general(a, b, (((a_axis,), (b_axis,)), ((), ())), precision, **kw)


@jax.custom_vjp
def _matmul2d(x, w):
  """x [M, K] @ w [K, N], with the weight gradient computed in the faster orientation on CPU."""
  return _dot(x, w, 1, 0)


def _matmul2d_fwd(x, w):
  return _matmul2d(x, w), (x, w)


def _matmul2d_bwd(res, g):
  x, w = res
  dx = _dot(g, w, 1, 1)
  if w.shape[0] > w.shape[1] and jax.default_backend() == 'cpu':
    # XLA's CPU (Eigen) dot runs x^T g into a tall [K, N] output slower than into the wide
    # [N, K] one (bench/results/cpu_layers.md): so compute g^T x and transpose it (a [K, N]
    # copy). The barrier keeps XLA from folding the transpose back into the dot.
    dw = jax.lax.optimization_barrier(_dot(g, x, 0, 0)).T
  else:
    dw = _dot(x, g, 0, 0)
  return dx, dw


_matmul2d.defvjp(_matmul2d_fwd, _matmul2d_bwd)


def colsum(x, ndim=1):
  """Sum over all but the last `ndim` axes, float32, as a matrix-vector product (see above)."""
  x2 = x.reshape(-1, math.prod(x.shape[x.ndim - ndim:]))
  ones = jnp.ones((x2.shape[0],), x.dtype)
  s = jax.lax.dot_general(x2, ones, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return s.reshape(x.shape[x.ndim - ndim:])


def _rowmean(x):
  """float32 mean over the last axis, kept as a size-1 axis, as a matrix-vector product."""
  ones = jnp.full((x.shape[-1],), 1. / x.shape[-1], x.dtype)
  return jax.lax.dot_general(x, ones, (((x.ndim - 1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bias_add(y, bias, ndim):
  return y + bias


def _bias_add_fwd(y, bias, ndim):
  return y + bias, None


def _bias_add_bwd(ndim, _, g):
  return g, colsum(g, ndim).astype(g.dtype)


_bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


def bias_add(y, bias):
  """y + bias (bias over the trailing axes of y, same dtype); its gradient is a `colsum`."""
  return _bias_add(y, bias, bias.ndim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, eps, dtype):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, computed in float32."""
  return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _normalize(x, eps):
  x = x.astype(jnp.float32)
  mean = _rowmean(x)
  xc = x - mean
  rstd = jax.lax.rsqrt(_rowmean(xc * xc) + eps)
  return xc * rstd, mean, rstd


def _layer_norm_fwd(x, scale, bias, eps, dtype):
  xhat, mean, rstd = _normalize(x, eps)
  y = (xhat * scale + bias).astype(dtype)
  return y, (x, mean, rstd, scale)


def _layer_norm_bwd(eps, dtype, res, g):
  x, mean, rstd, scale = res
  xhat = (x.astype(jnp.float32) - mean) * rstd  # Recomputed in the fused pass: no [B, N, D] kept.
  g = g.astype(jnp.float32)
  gs = g * scale
  dx = rstd * (gs - _rowmean(gs) - xhat * _rowmean(gs * xhat))
  return dx.astype(x.dtype), colsum(g * xhat).astype(scale.dtype), colsum(g).astype(scale.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class Dense(nn.Module):
  """`nn.Dense`, or `nn.DenseGeneral` over the last `axes` input axes, via `matmul` and `bias_add`.

  Params 'kernel' [*in_shape[-axes:], *features] and 'bias' [*features], initialised as flax
  does: on the flattened [in, out] matrix, then reshaped.
  """
  features: int | tuple[int, ...]
  axes: int = 1
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = x.shape[x.ndim - self.axes:]
    def flat(init, shape):  # init on the flattened shape, reshaped to `shape`
      return lambda key, dtype: init(key, tuple(map(math.prod, shape)), dtype).reshape(
          tuple(d for part in shape for d in part))
    kernel = self.param('kernel', flat(self.kernel_init, (in_shape, features)), jnp.float32)
    bias = self.param('bias', flat(self.bias_init, (features,)), jnp.float32)
    x, kernel, bias = (jnp.asarray(a, self.dtype) for a in (x, kernel, bias))
    contract = tuple(range(x.ndim - self.axes, x.ndim))
    return bias_add(matmul(x, kernel, ((contract, tuple(range(self.axes))), ((), ()))), bias)


class LayerNorm(nn.Module):
  """`nn.LayerNorm` (params 'scale', 'bias' [features]; eps 1e-6) via `layer_norm`."""
  epsilon: float = 1e-6
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (d,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (d,), jnp.float32)
    return layer_norm(x, scale, bias, self.epsilon, jnp.dtype(self.dtype or x.dtype))
