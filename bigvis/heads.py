"""Task heads on a shared trunk, and the multi-task model that composes them from a config."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from bigvis import models


def l2_normalize(x, eps=1e-6):
  return x / jnp.sqrt(jnp.maximum((x * x).sum(-1, keepdims=True), eps * eps))


class LinearHead(nn.Module):
  """Logits for a multi-label or classification task."""
  num_classes: int

  @nn.compact
  def __call__(self, features):
    return {'logits': nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)(features)}


class EmbeddingHead(nn.Module):
  """Retrieval embedding (Zhai & Wu 2019): LayerNorm without affine, linear without bias, L2.

  The zero-mean LayerNorm output makes the sign of each dimension balanced, so `binary_codes`
  (the sign) is a good Hamming code. `cosines` are similarities to L2-normalized class proxies,
  for the normalized-softmax loss.
  """
  embed_dim: int
  num_classes: int

  @nn.compact
  def __call__(self, features):
    x = nn.LayerNorm(use_bias=False, use_scale=False)(features)
    projected = nn.Dense(self.embed_dim, use_bias=False)(x)
    embedding = l2_normalize(projected)
    proxies = self.param('proxies', nn.initializers.normal(1.0), (self.num_classes, self.embed_dim))
    cosines = embedding @ l2_normalize(proxies).T
    return {'embedding': embedding, 'cosines': cosines}


def binary_codes(embedding):
  """Binary codes by sign at 0, as bool [..., D]; pack with np.packbits for storage."""
  return embedding > 0


class MultiTaskModel(nn.Module):
  """Trunk + one head per task. Returns ({task: head outputs}, trunk intermediates).

  Params: `trunk/...` (the trunk's own tree, big_vision names for ViT) and `head_<task>/...`.
  """
  model_config: Any  # FrozenConfigDict
  tasks: Any  # FrozenConfigDict: name -> task config

  def setup(self):
    self.trunk = models.build_trunk(self.model_config)  # Named 'trunk' by this attribute.
    self.task_heads = {
        name: (EmbeddingHead(t.embed_dim, t.num_classes, name=f'head_{name}')
               if t.head == 'embedding' else LinearHead(t.num_classes, name=f'head_{name}'))
        for name, t in self.tasks.items()}

  def __call__(self, images, *, train=False):
    features, intermediates = self.trunk(images, train=train)
    return {name: head(features) for name, head in self.task_heads.items()}, intermediates


def build_model(config):
  return MultiTaskModel(ml_collections.FrozenConfigDict(config.model),
                        ml_collections.FrozenConfigDict(config.tasks))
