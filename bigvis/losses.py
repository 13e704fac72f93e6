"""Task losses. Each takes logits and targets for a batch and returns a scalar mean."""
import jax
import jax.numpy as jnp
import optax


def softmax_xent(logits, multi_hot):
  """Softmax cross-entropy against multi-hot targets normalized to sum 1 (Mahajan et al. 2018).

  Examples with no positive label carry no signal and are left out of the mean.
  """
  counts = multi_hot.sum(-1)
  targets = multi_hot / jnp.maximum(counts, 1)[:, None]
  per_example = -(targets * jax.nn.log_softmax(logits.astype(jnp.float32))).sum(-1)
  has_label = (counts > 0).astype(jnp.float32)
  return (per_example * has_label).sum() / jnp.maximum(has_label.sum(), 1)


def sigmoid_bce(logits, multi_hot):
  """Per-class sigmoid binary cross-entropy, averaged over classes and examples."""
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), multi_hot).mean()


def xent(logits, labels):
  """Softmax cross-entropy with integer class labels."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def normalized_softmax(cosines, labels, temperature):
  """Normalized-softmax proxy loss (Zhai & Wu 2019): cosine similarities to the class proxies,
  divided by a temperature, then softmax cross-entropy against the true class."""
  return xent(cosines / temperature, labels)


def task_loss(task, outputs, targets):
  """The loss a task config names, on that task's head outputs."""
  if task.loss == 'normalized_softmax':
    return normalized_softmax(outputs['cosines'], targets, task.temperature)
  fn = {'softmax_xent': softmax_xent, 'sigmoid_bce': sigmoid_bce, 'xent': xent}[task.loss]
  return fn(outputs['logits'], targets)
