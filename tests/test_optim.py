"""Schedules, weight-decay masks and optimizers from configs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bigvis import config as config_lib, optim


def _opt(**fields):
  o = config_lib.defaults().optimizer
  o.update(fields)
  return o


def test_warmup_then_cosine_and_linear():
  lr = optim.schedule(_opt(lr=1.0, warmup_steps=10, schedule='cosine', end_lr_factor=0.0), 110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  assert float(lr(60)) == pytest.approx(0.5, abs=1e-6)  # Half-way down the cosine.
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-6)
  lin = optim.schedule(_opt(lr=2.0, warmup_steps=0, schedule='linear', end_lr_factor=0.5), 100)
  assert float(lin(50)) == pytest.approx(1.5)


def test_decay_mask_kernels_only():
  params = {'Dense_0': {'kernel': 1, 'bias': 2}, 'LayerNorm_0': {'scale': 3}, 'pos_embedding': 4}
  mask = optim.decay_mask(params, 'kernels')
  assert mask == {'Dense_0': {'kernel': True, 'bias': False}, 'LayerNorm_0': {'scale': False},
                  'pos_embedding': False}


@pytest.mark.parametrize('name', ['adamw', 'lamb', 'sgd'])
def test_each_optimizer_decreases_a_quadratic(name):
  tx, _ = optim.make_optimizer(
      _opt(name=name, lr=0.1, warmup_steps=0, schedule='constant', clip_norm=1.0), 100)
  params = {'w': {'kernel': jnp.full((4,), 3.0), 'bias': jnp.full((4,), -2.0)}}
  loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))
  state = tx.init(params)
  start = float(loss(params))
  for _ in range(20):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.7 * start


def test_weight_decay_only_touches_kernels():
  tx, _ = optim.make_optimizer(
      _opt(name='sgd', lr=1.0, momentum=0.0, weight_decay=0.5, warmup_steps=0,
           schedule='constant', clip_norm=0.0), 10)
  params = {'kernel': jnp.ones(2), 'bias': jnp.ones(2)}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['bias'], 0.0)
