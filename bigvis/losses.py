"""Task losses, per example, and the example weights that say which examples a task trains on.

A task's loss is the mean of `per_example_loss` over the examples whose `example_weights` is 1:
those that carry the task's label (the batch's `label_mask`, when the input mixes corpora that
label different fields) and, for softmax over multi-hot targets, have at least one positive.
The trainer divides by the count over the whole batch (so gradient accumulation gives the
full-batch mean); a batch with none of a task's examples gives it loss 0 and no gradient.
"""
import jax
import jax.numpy as jnp
import optax


def _softmax_xent_per_example(logits, multi_hot):
  # Softmax cross-entropy against multi-hot targets normalized to sum 1 (Mahajan et al. 2018).
  targets = multi_hot / jnp.maximum(multi_hot.sum(-1), 1)[:, None]
  return -(targets * jax.nn.log_softmax(logits.astype(jnp.float32))).sum(-1)


def _sigmoid_bce_per_example(logits, multi_hot):
  # Per-class sigmoid binary cross-entropy, averaged over classes.
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), multi_hot).mean(-1)


def _xent_per_example(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def per_example_loss(task, outputs, targets):
  """[B] losses of the task config `task` on its head's outputs.

  normalized_softmax (Zhai & Wu 2019): cosine similarities to the class proxies divided by a
  temperature, then softmax cross-entropy against the true class.
  """
  if task.loss == 'normalized_softmax':
    return _xent_per_example(outputs['cosines'] / task.temperature, targets)
  fn = {'softmax_xent': _softmax_xent_per_example, 'sigmoid_bce': _sigmoid_bce_per_example,
        'xent': _xent_per_example}[task.loss]
  return fn(outputs['logits'], targets)


def example_weights(task, targets, mask=None):
  """[B] float32, 1 where the example counts for the task: it has the label (`mask`, bool [B],
  None = all do) and, for softmax_xent, a positive (a multi-hot row of zeros carries no signal)."""
  weights = jnp.ones(targets.shape[:1], jnp.float32)
  if task.loss == 'softmax_xent':
    weights = (targets.sum(-1) > 0).astype(jnp.float32)
  if mask is not None:
    weights = jnp.where(mask, weights, 0.0)
  return weights


def weighted_sum(per_example, weights):
  """Sum over the counted examples; `where` keeps a masked example's value (even inf) out."""
  return jnp.where(weights > 0, per_example * weights, 0.0).sum()


def task_loss(task, outputs, targets, mask=None):
  """The task's mean loss over the examples that count (0 when none does)."""
  weights = example_weights(task, targets, mask)
  return weighted_sum(per_example_loss(task, outputs, targets), weights) / jnp.maximum(
      weights.sum(), 1)
