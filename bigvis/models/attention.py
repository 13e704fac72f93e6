"""Dot-product attention laid out for XLA's CPU and GPU dots, with a hand-written backward pass.

`MultiHeadDotProductAttention` is flax's module of that name (same parameters: query, key, value
and out, same initialisers) built from `layers.Dense`, whose weight and bias gradients are plain
dots (see layers.py). `dot_product_attention` is also a drop-in `attention_fn` for flax's module
(same [batch, tokens, heads, head_dim] inputs and output, same maths: softmax(q k^T / sqrt(d)) v).
In float32 on one CPU device it calls bigvis's fused kernel (bigvis/kernels/cpu_attention.cc,
faster than the XLA path below: bench/results/cpu_layers.md). Elsewhere (GPU/TPU, bf16, sharded
CPU runs), the XLA path; two things make it faster than flax's default on CPU:
- batch and heads are folded into one leading batch dim before the dots, so each dot is a plain
  batched matmul; flax's '...qhd,...khd->...hqk' layout made XLA's CPU forward slower;
- the backward pass is written out (custom_vjp) from the saved probabilities, with the score
  gradient formed in one fused elementwise pass, instead of autodiff through softmax.
Scores and softmax are float32 whatever the compute dtype (bf16 logits lose the small
differences softmax depends on); the probabilities are cast back for the second dot.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from bigvis.kernels import cpu_attention
from bigvis.models import layers


def _scores(q, k):
  return jnp.einsum('bqd,bkd->bqk', q, k, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _attend(q, k, v):
  """softmax(q k^T) v for [batch, tokens, dim] inputs, q already scaled."""
  return _attend_fwd(q, k, v)[0]


def _attend_fwd(q, k, v):
  p = jax.nn.softmax(_scores(q, k), axis=-1)
  return jnp.einsum('bqk,bkd->bqd', p.astype(v.dtype), v), (q, k, v, p)


def _attend_bwd(res, g):
  q, k, v, p = res
  g = g.astype(v.dtype)
  dv = jnp.einsum('bqk,bqd->bkd', p.astype(g.dtype), g, preferred_element_type=jnp.float32)
  dp = jnp.einsum('bqd,bkd->bqk', g, v, preferred_element_type=jnp.float32)
  ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))  # softmax's Jacobian-vector product
  dq = jnp.einsum('bqk,bkd->bqd', ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
  dk = jnp.einsum('bqk,bqd->bkd', ds.astype(q.dtype), q, preferred_element_type=jnp.float32)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attend.defvjp(_attend_fwd, _attend_bwd)


def use_cpu_kernel(dtype):
  """Whether attention runs in bigvis's fused CPU kernel (bigvis/kernels/cpu_attention.cc).

  Only in float32 on a one-device CPU backend: XLA cannot split the kernel's custom call across
  a device mesh, so sharded runs (and bf16, and GPU/TPU) keep the XLA path below.
  """
  return (jnp.dtype(dtype) == jnp.float32 and jax.device_count() == 1
          and cpu_attention.available())


def dot_product_attention(query, key, value, bias=None, mask=None, dropout_rate=0.0,
                          dtype=None, **unused):
  """[batch..., q, heads, d], [batch..., k, heads, d] x2 -> [batch..., q, heads, d].

  Accepts flax's attention_fn keywords; masks, biases and attention dropout are not
  supported (bigvis's ViT uses none) and raise rather than being ignored.
  """
  if bias is not None or mask is not None or dropout_rate:
    raise NotImplementedError('bigvis attention: no mask, bias or attention dropout')
  dtype = dtype or query.dtype
  *batch, nq, heads, d = query.shape
  nk = key.shape[-3]
  if use_cpu_kernel(dtype):
    flat = lambda x: x.astype(dtype).reshape(-1, *x.shape[-3:])
    out = cpu_attention.attention(flat(query), flat(key), flat(value), d ** -0.5)
    return out.reshape(*batch, nq, heads, d)

  def fold(x, n):  # [..., n, h, d] -> [prod(...) * h, n, d]
    x = jnp.moveaxis(x.astype(dtype), -2, -3)
    return x.reshape(-1, n, d)

  q = fold(query * jnp.asarray(d ** -0.5, query.dtype), nq)
  out = _attend(q, fold(key, nk), fold(value, nk))
  return jnp.moveaxis(out.reshape(*batch, heads, nq, d), -3, -2)


def flax_attention_fn(query, key, value, bias=None, mask=None, dropout_rate=0.0, dtype=None,
                      **unused):
  """An `attention_fn` for flax's own MultiHeadDotProductAttention: `jax.nn.dot_product_attention`,
  which picks cuDNN's fused (flash) attention on GPU where it applies and XLA's otherwise.
  Attention dropout is not supported (bigvis's ViT uses none) and raises."""
  if dropout_rate:
    raise NotImplementedError('bigvis attention: no attention dropout')
  dtype = dtype or query.dtype
  query, key, value = (x.astype(dtype) for x in (query, key, value))
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask)


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head attention of `inputs_q` over `inputs_kv`, as flax's module without masks or dropout.

  Params (flax's names and shapes): query, key, value {kernel [D, heads, D/heads], bias
  [heads, D/heads]}, out {kernel [heads, D/heads, D], bias [D]}.
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, inputs_q, inputs_kv):
    d = inputs_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'attention width {d} is not divisible by num_heads {self.num_heads}')
    proj = lambda name: layers.Dense((self.num_heads, d // self.num_heads), dtype=self.dtype,
                                     kernel_init=self.kernel_init, name=name)
    x = dot_product_attention(proj('query')(inputs_q), proj('key')(inputs_kv),
                              proj('value')(inputs_kv), dtype=self.dtype)
    return layers.Dense(d, axes=2, dtype=self.dtype, kernel_init=self.kernel_init, name='out')(x)
