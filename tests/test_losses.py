"""Each loss against values computed by hand, and the heads' contracts."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvis import config as config_lib, heads, losses

MULTILABEL = config_lib.task('multilabel', 'labels', 3)
BCE = config_lib.task('multilabel', 'labels', 2, loss='sigmoid_bce')
CLASSIFIER = config_lib.task('classifier', 'labels', 2)


def _loss(task, logits, targets, mask=None):
  key = 'cosines' if task.loss == 'normalized_softmax' else 'logits'
  return float(losses.task_loss(task, {key: logits}, targets, mask))


def test_softmax_xent_normalizes_multi_hot_and_skips_unlabelled():
  logits = jnp.array([[0.0, 0.0, 0.0],                      # uniform: -log(1/3) for each label
                      [0.0, math.log(2.0), 0.0],            # probs .25/.5/.25
                      [5.0, -1.0, 2.0]])                    # no label: left out of the mean
  targets = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  expected = (math.log(3.0) + math.log(2.0)) / 2
  assert float(_loss(MULTILABEL, logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_softmax_xent_weights_labels_equally_within_an_example():
  # Targets (1,1) on probs (.75, .25): -(.5 log .75 + .5 log .25).
  logits = jnp.array([[math.log(3.0), 0.0]])
  expected = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
  assert float(_loss(config_lib.task('multilabel', 'x', 2), logits, jnp.array([[1.0, 1.0]]))) == pytest.approx(expected)


def test_sigmoid_bce():
  logits = jnp.array([[0.0, math.log(3.0)]])  # sigmoid: .5 and .75
  targets = jnp.array([[1.0, 0.0]])
  expected = (math.log(2.0) + math.log(4.0)) / 2  # -log .5, -log(1 - .75)
  assert float(_loss(BCE, logits, targets)) == pytest.approx(expected, rel=1e-6)


def test_xent_integer_labels():
  logits = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0]])
  expected = (math.log(2.0) - math.log(0.75)) / 2
  assert float(_loss(CLASSIFIER, logits, jnp.array([0, 0]))) == pytest.approx(expected, rel=1e-6)


def test_normalized_softmax_divides_cosines_by_temperature():
  cosines = jnp.array([[1.0, 0.0]])
  expected = math.log(1 + math.exp(-2.0))  # logits (2, 0) at temperature .5
  assert float(_loss(config_lib.task('embedding', 'x', 2, temperature=0.5), cosines, jnp.array([0]))) == pytest.approx(
      expected, rel=1e-6)


@pytest.mark.parametrize('loss', ['softmax_xent', 'sigmoid_bce', 'xent', 'normalized_softmax'])
def test_masked_examples_change_nothing_and_no_example_gives_zero(loss):
  head = {'softmax_xent': 'multilabel', 'sigmoid_bce': 'multilabel', 'xent': 'classifier',
          'normalized_softmax': 'embedding'}[loss]
  task = config_lib.task(head, 'x', 4, loss=loss)
  key = 'cosines' if loss == 'normalized_softmax' else 'logits'
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  if head == 'multilabel':
    labels = (rng.random((6, 4)) < 0.5).astype(np.float32)
    labels[:, 0] = 1.0
    other = labels.copy()
    other[3:] = 1.0 - other[3:]
  else:
    labels = rng.integers(0, 4, 6).astype(np.int32)
    other = labels.copy()
    other[3:] = (other[3:] + 1) % 4
  mask = jnp.array([True, True, True, False, False, False])
  grad = jax.value_and_grad(lambda lg, y, m: losses.task_loss(task, {key: lg}, y, m))
  value, g = grad(logits, jnp.asarray(labels), mask)
  value2, g2 = grad(logits, jnp.asarray(other), mask)  # Only masked examples' labels differ.
  assert float(value) == float(value2)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(g2))
  assert not np.any(np.asarray(g)[3:])
  # The masked mean is the mean over the first three alone.
  alone = losses.task_loss(task, {key: logits[:3]}, jnp.asarray(labels[:3]))
  np.testing.assert_allclose(float(value), float(alone), rtol=1e-6)
  # No example has the label: loss 0 and zero gradients, not NaN.
  value, g = grad(logits, jnp.asarray(labels), jnp.zeros(6, bool))
  assert float(value) == 0.0 and not np.any(np.asarray(g))


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
