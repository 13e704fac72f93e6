"""Each loss against values computed by hand, and the heads' contracts."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvis import heads, losses


def test_softmax_xent_normalizes_multi_hot_and_skips_unlabelled():
  logits = jnp.array([[0.0, 0.0, 0.0],                      # uniform: -log(1/3) for each label
                      [0.0, math.log(2.0), 0.0],            # probs .25/.5/.25
                      [5.0, -1.0, 2.0]])                    # no label: left out of the mean
  targets = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  expected = (math.log(3.0) + math.log(2.0)) / 2
  assert float(losses.softmax_xent(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_softmax_xent_weights_labels_equally_within_an_example():
  # Targets (1,1) on probs (.75, .25): -(.5 log .75 + .5 log .25).
  logits = jnp.array([[math.log(3.0), 0.0]])
  expected = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
  assert float(losses.softmax_xent(logits, jnp.array([[1.0, 1.0]]))) == pytest.approx(expected)


def test_sigmoid_bce():
  logits = jnp.array([[0.0, math.log(3.0)]])  # sigmoid: .5 and .75
  targets = jnp.array([[1.0, 0.0]])
  expected = (math.log(2.0) + math.log(4.0)) / 2  # -log .5, -log(1 - .75)
  assert float(losses.sigmoid_bce(logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_xent_integer_labels():
  logits = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0]])
  expected = (math.log(2.0) - math.log(0.75)) / 2
  assert float(losses.xent(logits, jnp.array([0, 0]))) == pytest.approx(expected, rel=1e-6)


def test_normalized_softmax_divides_cosines_by_temperature():
  cosines = jnp.array([[1.0, 0.0]])
  expected = math.log(1 + math.exp(-2.0))  # logits (2, 0) at temperature .5
  assert float(losses.normalized_softmax(cosines, jnp.array([0]), 0.5)) == pytest.approx(
      expected, rel=1e-6)


def test_embedding_head_is_normalized_and_binarizable():
  head = heads.EmbeddingHead(embed_dim=16, num_classes=5)
  x = jax.random.normal(jax.random.key(0), (4, 32)) * 3 + 7  # Offset: LayerNorm must remove it.
  params = head.init(jax.random.key(1), x)['params']
  # LayerNorm without affine has no params; the projection has no bias.
  assert set(params) == {'Dense_0', 'proxies'} and set(params['Dense_0']) == {'kernel'}
  out = head.apply({'params': params}, x)
  np.testing.assert_allclose(np.linalg.norm(out['embedding'], axis=-1), 1.0, rtol=1e-5)
  assert out['cosines'].shape == (4, 5) and np.all(np.abs(out['cosines']) <= 1 + 1e-5)
  codes = np.asarray(heads.binary_codes(out['embedding']))
  np.testing.assert_array_equal(codes, np.asarray(out['embedding']) > 0)
  assert 0.2 < codes.mean() < 0.8  # Zero-mean LayerNorm keeps signs balanced.
