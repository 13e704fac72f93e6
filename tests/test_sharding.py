"""Sharding rules on the 8 simulated devices: nothing large is left replicated."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from bigvis import config as config_lib, heads, optim, sharding


def _abstract_state(variant, name='vit', image_size=224):
  c = config_lib.defaults()
  c.model.name, c.model.variant = name, variant
  c.tasks.labels = config_lib.task('multilabel', 'tags', 1000)
  c.tasks.identity = config_lib.task('embedding', 'identity', 512)
  model = heads.build_model(c)
  tx, _ = optim.make_optimizer(c.optimizer, 100)

  def init(rng):
    params = model.init(rng, jnp.zeros((1, image_size, image_size, 3)))['params']
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return c, jax.eval_shape(init, jax.random.key(0))


@pytest.mark.parametrize('variant,name,mesh', [
    ('B/16', 'vit', (2, 2, 2)), ('B/16', 'vit', (1, 8, 1)), ('L/16', 'vit', (1, 4, 2)),
    ('50', 'resnet', (2, 4, 1))])
def test_no_large_tensor_replicated(variant, name, mesh):
  c, abstract = _abstract_state(variant, name)
  c.mesh.data, c.mesh.fsdp, c.mesh.model = mesh
  m = sharding.make_mesh(c.mesh)
  shardings = sharding.tree_shardings(abstract, m, c.sharding)
  total = per_device = 0
  for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(abstract),
                             jax.tree.leaves(shardings)):
    size = math.prod(leaf.shape)
    shard = math.prod(s.shard_shape(leaf.shape))
    if size >= c.sharding.fsdp_min_size:
      assert shard < size, f'{sharding.path_name(path)} {leaf.shape} is replicated: {s.spec}'
    total += size
    per_device += shard
  # Params + both Adam moments: each device holds about 1/(fsdp*model) of the state.
  assert per_device / total < 1.3 / (mesh[1] * mesh[2])


def test_rules_put_model_axis_on_attention_heads_and_mlp():
  c, abstract = _abstract_state('B/16')
  m = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, model=2)))
  specs = sharding.tree_shardings(abstract['params'], m, c.sharding)
  block = specs['trunk']['Transformer']['encoderblock_0']
  assert block['MlpBlock_0']['Dense_0']['kernel'].spec == P('fsdp', 'model')
  assert block['MultiHeadDotProductAttention_0']['query']['kernel'].spec == P('fsdp', 'model', None)
  # The Adam moments of a param get the param's spec.
  specs_opt = sharding.tree_shardings(abstract['opt_state'], m, c.sharding)
  leaves = jax.tree_util.tree_leaves_with_path(specs_opt)
  mlp = [s for p, s in leaves if sharding.path_name(p).endswith('MlpBlock_0/Dense_0/kernel')]
  assert mlp and all(s.spec == P('fsdp', 'model') for s in mlp)


def test_indivisible_axes_are_dropped_not_fatal():
  # ViT-Ti has 3 heads: the model axis of size 2 cannot split them, so that dim is replicated.
  c, abstract = _abstract_state('Ti/16')
  m = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, model=2)))
  specs = sharding.tree_shardings(abstract['params'], m, c.sharding)
  q = specs['trunk']['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']['query']
  assert q['kernel'].spec == P('fsdp', None, None)


def test_mesh_errors():
  with pytest.raises(ValueError, match='needs 16 devices'):
    sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=4, model=2)))
  with pytest.raises(ValueError, match='At most one'):
    sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=-1, model=1)))
  m = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=2, model=2)))
  assert dict(m.shape) == {'data': 2, 'fsdp': 2, 'model': 2}
