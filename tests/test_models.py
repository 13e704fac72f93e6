"""Trunk tests: published parameter counts (abstractly, via eval_shape) and tiny real forwards."""
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bigvis.models import build_trunk, feature_dim, layers, vit
from tests import helpers


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def _n_params(cfg, px=224):
  trunk = build_trunk(cfg, num_classes=1000)
  shapes = jax.eval_shape(trunk.init, jax.random.key(0), jnp.zeros((1, px, px, 3)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


# Published counts, 224 px, 1000-way head, exact. ViT: timm's counts (vit_{tiny,small,base,large}
# _patch16_224, vit_base_patch32_224, vit_huge_patch14_224), which include a position embedding
# for the class token; big_vision (and bigvis) have none, so ours are exactly D fewer, by design.
# ViT-g/14: Zhai et al. 2022 "Scaling Vision Transformers", table 2, gives only 1011M (rounded,
# without a 1000-way head; we add 1.4M, hence the 2% tolerance there alone). ResNet:
# torchvision's num_params (resnet50 25,557,032; resnext50_32x4d 25,028,904); GroupNorm has the
# same scale+bias per channel as BatchNorm, so the counts match exactly.
@pytest.mark.parametrize('name,variant,published,by_design', [
    ('vit', 'Ti/16', 5_717_416, -192),
    ('vit', 'S/16', 22_050_664, -384),
    ('vit', 'B/16', 86_567_656, -768),
    ('vit', 'L/16', 304_326_632, -1024),
    ('vit', 'H/14', 632_045_800, -1280),
    ('vit', 'B/32', 88_224_232, -768),
    ('resnet', '50', 25_557_032, 0),
    ('resnet', 'x50_32x4d', 25_028_904, 0),
])
def test_param_count(name, variant, published, by_design):
  assert _n_params(_cfg(name=name, variant=variant)) == published + by_design


def test_vit_g_param_count():
  assert _n_params(_cfg(name='vit', variant='g/14')) == pytest.approx(1011e6, rel=0.02)


def test_vit_param_tree_names():
  """big_vision checkpoint paths and shapes, which loading and sharding rules rely on."""
  trunk = build_trunk(_cfg(name='vit', variant='Ti/16'), num_classes=10)
  p = jax.eval_shape(trunk.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
  assert set(p) == {'embedding', 'cls', 'pos_embedding', 'Transformer', 'head'}
  assert p['embedding']['kernel'].shape == (16, 16, 3, 192)
  assert p['cls'].shape == (1, 1, 192) and p['pos_embedding'].shape == (1, 16, 192)
  t = p['Transformer']
  assert set(t) == {f'encoderblock_{i}' for i in range(12)} | {'encoder_norm'}
  blk = t['encoderblock_11']
  assert set(blk) == {'LayerNorm_0', 'MultiHeadDotProductAttention_0', 'LayerNorm_1', 'MlpBlock_0'}
  attn = blk['MultiHeadDotProductAttention_0']
  assert attn['query']['kernel'].shape == (192, 3, 64)
  assert attn['out']['kernel'].shape == (3, 64, 192)
  assert set(blk['MlpBlock_0']) == {'Dense_0', 'Dense_1'}

  map_trunk = build_trunk(_cfg(name='vit', variant='Ti/16', pool_type='map', posemb='sincos2d'))
  p = jax.eval_shape(map_trunk.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))['params']
  assert set(p) == {'embedding', 'Transformer', 'MAPHead_0'}  # No cls, posemb or head params.


def _images(px=32, batch=2):
  return jax.random.uniform(jax.random.key(1), (batch, px, px, 3))


# Real forwards run under jit on random params in the init's shapes: on this CPU, compiling a
# ViT-Ti init takes ~11 s, compiling its forward ~1 s.
def _random_params(module, x):
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.mark.parametrize('pool_type', ['tok', 'gap', 'map'])
@pytest.mark.parametrize('posemb', ['learn', 'sincos2d'])
def test_vit_forward(pool_type, posemb):
  cfg = _cfg(name='vit', variant='Ti/16', pool_type=pool_type, posemb=posemb)
  trunk, images = build_trunk(cfg), _images()
  pooled, inter = jax.jit(trunk.apply)({'params': _random_params(trunk, images)}, images)
  assert pooled.shape == (2, feature_dim(cfg)) == (2, 192) and pooled.dtype == jnp.float32
  assert np.all(np.isfinite(pooled))
  n_tokens = 4 + (pool_type == 'tok')
  assert inter['stem'].shape == (2, 2, 2, 192)
  assert {f'block_{i}' for i in range(12)} <= set(inter)
  assert inter['block_11'].shape == inter['encoded'].shape == (2, n_tokens, 192)
  np.testing.assert_array_equal(inter['pre_logits'], pooled)
  # The two images differ, so their features must too: the trunk really reads its input.
  assert not np.allclose(pooled[0], pooled[1])


def test_vit_bf16_gives_float32_features_and_params():
  trunk = build_trunk(_cfg(name='vit', variant='Ti/16', dtype='bfloat16', pool_type='map'))
  images = _images()
  params = _random_params(trunk, images)  # Keeps the dtypes the init declares.
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  pooled, inter = jax.jit(trunk.apply)({'params': params}, images)
  assert pooled.dtype == jnp.float32 and inter['encoded'].dtype == jnp.bfloat16
  assert np.all(np.isfinite(pooled)) and not np.allclose(pooled[0], pooled[1])


def test_resnet_forward():
  cfg = _cfg(name='resnet', variant='x50_32x4d', dtype='bfloat16')
  trunk, images = build_trunk(cfg), _images()
  pooled, inter = jax.jit(trunk.apply)({'params': _random_params(trunk, images)}, images)
  assert pooled.shape == (2, feature_dim(cfg)) == (2, 2048) and pooled.dtype == jnp.float32
  assert inter['stem'].shape == (2, 8, 8, 64) and inter['stem'].dtype == jnp.bfloat16
  assert [inter[f'stage_{k}'].shape for k in (1, 2, 3, 4)] == [
      (2, 8, 8, 256), (2, 4, 4, 512), (2, 2, 2, 1024), (2, 1, 1, 2048)]
  np.testing.assert_array_equal(inter['pre_logits'], pooled)
  assert np.all(np.isfinite(pooled)) and not np.allclose(pooled[0], pooled[1])


def test_vit_remat_same_outputs():
  cfg = dict(name='vit', variant='Ti/16', pool_type='gap', posemb='sincos2d')
  trunks = [build_trunk(_cfg(remat=r, **cfg)) for r in (False, True)]
  images = _images()
  params = {'params': _random_params(trunks[0], images)}
  plain, remat = jax.jit(lambda p: [t.apply(p, images)[0] for t in trunks])(params)
  np.testing.assert_allclose(remat, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name,variant,n_blocks', [('vit', 'Ti/16', 12), ('resnet', '50', 16)])
def test_remat_wraps_every_block(name, variant, n_blocks):
  """Tracing only (no compile): remat=True puts each block in its own checkpoint."""
  images = jnp.zeros((1, 32, 32, 3))
  trunk = build_trunk(_cfg(name=name, variant=variant, remat=True))
  params = jax.eval_shape(trunk.init, jax.random.key(0), images)
  eqns = jax.make_jaxpr(trunk.apply)(params, images).eqns
  # jax names its checkpoint primitive 'remat2' (in some versions 'checkpoint').
  assert sum(e.primitive.name in ('remat2', 'checkpoint') for e in eqns) == n_blocks


def test_remat_same_gradients_with_dropout():
  """remat acts in the backward pass, where the recomputed blocks must replay the same dropout
  masks. Checked on a one-block encoder: whole trunks take too long to compile on this CPU."""
  x = jax.random.normal(jax.random.key(1), (2, 5, 32))
  encoders = [vit.Encoder(depth=1, mlp_dim=64, num_heads=2, dropout=0.1, remat=r)
              for r in (False, True)]
  params = {'params': _random_params(encoders[0], x)}

  def grad(enc, p):  # deterministic=False, and a fixed key so both draw the same masks.
    apply = lambda p: enc.apply(p, x, False, rngs={'dropout': jax.random.key(2)})[0]
    return jax.grad(lambda p: jnp.sum(jnp.sin(apply(p))))(p)

  # One jit for both: a single compile is markedly cheaper here than two.
  plain, remat = jax.jit(lambda p: [grad(enc, p) for enc in encoders])(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), plain, remat)


def test_dropout_is_used_in_training_only():
  """Tracing only: compiling the ~40 dropout masks' RNG would cost seconds on this CPU."""
  trunk, images = build_trunk(_cfg(name='vit', variant='Ti/16', dropout=0.5)), _images()
  params = jax.eval_shape(trunk.init, jax.random.key(0), images)
  trace = lambda train: str(jax.make_jaxpr(lambda p: trunk.apply(
      p, images, train=train, rngs={'dropout': jax.random.key(2)}))(params))
  assert 'random_bits' in trace(True) and 'random_bits' not in trace(False)


@pytest.mark.parametrize('bad', [
    dict(name='vit', variant='X/16'),
    dict(name='vit', variant='Ti/16', pool_type='cls'),
    dict(name='vit', variant='Ti/16', dtype='float16'),
    dict(name='resnet', variant='34'),
    dict(name='mlp', variant='1'),
])
def test_bad_config_fails_loudly(bad):
  with pytest.raises(ValueError):
    build_trunk(_cfg(**bad))


def test_plain_object_config():
  class Cfg:
    name, variant = 'resnet', 'x101_32x8d'
  assert feature_dim(Cfg()) == 2048
  assert build_trunk(Cfg()).groups == 32


@pytest.mark.parametrize('shape_q,shape_kv', [
    ((2, 17, 3, 8), (2, 17, 3, 8)),    # self-attention
    ((2, 1, 3, 8), (2, 17, 3, 8)),     # MAP head: one probe query
    ((2, 2, 5, 2, 4), (2, 2, 7, 2, 4)),  # extra batch dims
])
def test_attention_matches_flax_values_and_gradients(shape_q, shape_kv):
  import flax.linen as nn
  from bigvis.models.attention import dot_product_attention
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal(shape_q), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal(shape_kv), jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.standard_normal(shape_q), jnp.float32)  # a non-trivial cotangent

  def loss_and_grads(fn):
    return jax.value_and_grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2))(q, k, v)

  (ref, ref_g), (out, out_g) = loss_and_grads(nn.dot_product_attention), loss_and_grads(
      dot_product_attention)
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  np.testing.assert_allclose(dot_product_attention(q, k, v), nn.dot_product_attention(q, k, v),
                             atol=1e-6)
  for a, b in zip(out_g, ref_g):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # bf16 compute: float32 scores and softmax keep it within bf16 rounding of the float32 result.
  lo = dot_product_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                             v.astype(jnp.bfloat16))
  assert lo.dtype == jnp.bfloat16
  np.testing.assert_allclose(lo.astype(jnp.float32), nn.dot_product_attention(q, k, v), atol=0.05)
  with pytest.raises(NotImplementedError):
    dot_product_attention(q, k, v, mask=jnp.ones(shape_q[:-3] + (3, shape_q[-3], shape_kv[-3])))


@pytest.mark.parametrize('lhs_shape,rhs_shape,dims', [
    ((2, 5, 8), (8, 6), (((2,), (0,)), ((), ()))),           # Dense on [B, N, D]
    ((2, 5, 8), (8, 3, 4), (((2,), (0,)), ((), ()))),        # q/k/v projection to heads
    ((2, 5, 3, 4), (3, 4, 8), (((2, 3), (0, 1)), ((), ()))),  # heads back to D
    ((6, 8), (6, 5), (((0,), (0,)), ((), ()))),             # other layouts: plain dot_general
    ((4, 5, 8), (4, 8, 6), (((2,), (1,)), ((0,), (0,)))),
])
def test_matmul_equals_dot_general_values_and_gradients(lhs_shape, rhs_shape, dims):
  rng = np.random.default_rng(0)
  lhs, rhs = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (lhs_shape, rhs_shape))
  ref = jax.lax.dot_general(lhs, rhs, dims)
  w = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
  grads = lambda f: jax.grad(lambda a, b: jnp.sum(f(a, b, dims) * w), argnums=(0, 1))(lhs, rhs)
  np.testing.assert_allclose(layers.matmul(lhs, rhs, dims), ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(grads(layers.matmul), grads(jax.lax.dot_general)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _weight_gradient_dots(hlo, rows):
  """(lhs, rhs) producer names of each dot in compiled HLO text that contracts `rows` rows."""
  defs = helpers.hlo_defs(hlo)
  def producer(name):  # Looks through bitcasts, which are free.
    while (m := re.match(r'bitcast\((%[\w.-]+)\)', defs[name][1])):
      name = m[1]
    return name
  dots = []
  for m in re.finditer(r'dot\((%[\w.-]+), (%[\w.-]+)\), lhs_contracting_dims=\{([\d,]*)\}', hlo):
    lhs_shape = defs[m[1]][0]
    if math.prod(lhs_shape[int(d)] for d in m[3].split(',')) == rows:
      dots.append((producer(m[1]), producer(m[2])))
  return dots


def test_vit_gradient_makes_no_transposed_copy_of_activations():
  """Each weight-gradient dot reads the activations and their gradient in place.

  On [B, N, D] operands, XLA's CPU backend copied one of them into a transposed buffer first
  (~1.7x the dot's own time at ViT-Ti/16 shapes); layers.matmul hands it 2-D operands instead.
  """
  # One head: the XLA attention path's head transposes are then free bitcasts, not copies.
  trunk = vit.ViT(width=32, depth=2, mlp_dim=64, num_heads=1, patch_size=8, pool_type='gap')
  images = _images(px=32, batch=3)
  params = _random_params(trunk, images)
  loss = lambda p: jnp.sum(trunk.apply({'params': p}, images)[0] ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  dots = _weight_gradient_dots(hlo, rows=3 * (32 // 8) ** 2)  # B*N rows
  assert len(dots) >= 2 * 6, dots  # q, k, v, out and two MLP kernels in each of 2 blocks
  copied = [op for dot in dots for op in dot if re.search('copy|transpose', op)]
  assert not copied, copied


def _row_reductions(hlo, batch, tokens):
  """Reduce / reduce-window ops in compiled HLO text that sum [batch, tokens, ...] over both."""
  defs = helpers.hlo_defs(hlo)
  found = []
  for m in re.finditer(r'(%[\w.-]+) = \S+ (reduce(?:-window)?)\((%[\w.-]+),[^\n]*', hlo):
    if defs[m[3]][0][:2] != (batch, tokens):
      continue
    if m[2] == 'reduce':
      dims = {int(d) for d in re.search(r'dimensions=\{([\d,]*)\}', m[0])[1].split(',') if d}
      over_rows = {0, 1} <= dims
    else:
      size = [int(s) for s in re.search(r'size=([\dx]+)', m[0])[1].split('x')]
      over_rows = size[0] > 1 and size[1] > 1
    if over_rows:
      found.append(m[0][:120])
  return found


def test_vit_gradient_sums_rows_with_dots(monkeypatch):
  """Bias and LayerNorm-scale gradients (sums over all B*N rows) are matrix-vector products.

  As reductions, XLA's CPU backend splits them into a strided, single-threaded reduce-window
  (~6x slower than the dot at ViT-Ti/16 shapes); bigvis.models.layers writes them as dots.
  """
  trunk = vit.ViT(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8, pool_type='gap')
  images = _images(px=64, batch=3)
  params = _random_params(trunk, images)
  def row_reductions():
    grads = jax.jit(jax.grad(lambda p: jnp.sum(trunk.apply({'params': p}, images)[0] ** 2)))
    return _row_reductions(grads.lower(params).compile().as_text(), 3, (64 // 8) ** 2)
  found = row_reductions()
  # One is left: the patch-embedding conv's bias (flax's nn.Conv; ~1.5 ms of a ViT-Ti/16 step).
  assert len(found) == 1, found
  # The check sees such sums: flax's LayerNorm in the same model adds two per block LayerNorm.
  monkeypatch.setattr(layers, 'LayerNorm', nn.LayerNorm)
  assert len(row_reductions()) >= 1 + 2 * 4


@pytest.mark.parametrize('pool_type,dtype,atol', [('map', 'float32', 2e-5), ('gap', 'bfloat16', 0.1)])
def test_flax_and_cpu_impls_agree(pool_type, dtype, atol):
  """Same param tree and init values; outputs and gradients equal within float rounding."""
  cfg = lambda impl: _cfg(name='vit', variant='test/8', pool_type=pool_type, dtype=dtype, impl=impl)
  cpu, flax_impl = build_trunk(cfg('cpu')), build_trunk(cfg('flax'))
  assert (cpu.impl, flax_impl.impl) == ('cpu', 'flax')
  x = _images()
  p, p_flax = jax.jit(cpu.init)(jax.random.key(1), x), jax.jit(flax_impl.init)(jax.random.key(1), x)
  assert jax.tree.structure(p) == jax.tree.structure(p_flax)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_flax)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  p = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(2), a.shape), p)

  w = jax.random.normal(jax.random.key(3), (x.shape[0], 32))
  def loss(module):
    return lambda params, x: jnp.sum(module.apply(params, x)[0] * w)
  # Jitted, as training runs them (op by op, the test took ~4x as long).
  np.testing.assert_allclose(jax.jit(cpu.apply)(p, x)[0], jax.jit(flax_impl.apply)(p, x)[0],
                             atol=atol, rtol=atol)
  got = jax.jit(jax.grad(loss(cpu), (0, 1)))(p, x)
  want = jax.jit(jax.grad(loss(flax_impl), (0, 1)))(p, x)
  # Relative to the largest gradient: some are zero but for rounding (the key bias: softmax does
  # not see a shift common to a row), and bf16's rounding grows with the gradient's size.
  scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(want))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a / scale, b / scale, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_auto_impl_is_the_cpu_layers_on_the_cpu_backend(monkeypatch):
  assert build_trunk(_cfg(name='vit', variant='test/8')).impl == 'cpu'
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert build_trunk(_cfg(name='vit', variant='test/8')).impl == 'flax'
  with pytest.raises(ValueError, match='impl'):
    build_trunk(_cfg(name='vit', variant='test/8', impl='cuda'))
