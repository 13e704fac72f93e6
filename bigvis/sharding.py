"""Device mesh and sharding rules: which mesh axes each param, optimizer state and batch use."""
import logging
import math
import re

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')  # The batch is split over both; fsdp gathers params, not examples.


def make_mesh(mesh_config, devices=None):
  """A (data, fsdp, model) mesh; one axis may be -1 to take the remaining devices."""
  devices = jax.devices() if devices is None else devices
  sizes = [int(mesh_config[a]) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got {dict(zip(AXES, sizes))}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices do not divide into mesh {dict(zip(AXES, sizes))}')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'Mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, '
                     f'there are {len(devices)}')
  # Auto axes: XLA's sharding propagation places intermediates from the param/batch shardings.
  return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def path_name(path):
  """'a/b/c' from a jax tree path. An optimizer moment's name ends like its param's
  ('0/mu/trunk/.../kernel'), so `$`-anchored rules place both the same way."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
  return '/'.join(parts)


def _fit(spec, shape, mesh):
  """Drops axes that do not divide their dim, so every rule is safe for every model size."""
  out = []
  for axis, dim in zip(tuple(spec) + (None,) * (len(shape) - len(spec)), shape):
    out.append(axis if axis is None or dim % mesh.shape[axis] == 0 else None)
  return P(*out)


def spec_for(name, shape, mesh, rules, fsdp_min_size):
  """The first rule whose regex finds `name` decides; otherwise FSDP on the largest dim."""
  size = math.prod(shape)
  for pattern, axes in rules:
    if re.search(pattern, name) and len(axes) <= len(shape):
      return _fit(axes, shape, mesh)
  if size < fsdp_min_size or not shape:
    return P()
  for dim in np.argsort(shape)[::-1]:  # Largest dim that `fsdp` divides.
    if shape[dim] % mesh.shape['fsdp'] == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


def tree_shardings(abstract_tree, mesh, sharding_config):
  """NamedShardings for a tree of arrays (params, optimizer state, or the whole train state)."""
  rules = [(p, tuple(a)) for p, a in sharding_config.rules]

  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_name(path), tuple(leaf.shape), mesh, rules,
                                        sharding_config.fsdp_min_size))
  return jax.tree_util.tree_map_with_path(one, abstract_tree)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def log_shardings(shardings, abstract_tree, top=4):
  """Logs the largest params and their specs, so a bad rule shows up in the first lines."""
  flat = jax.tree_util.tree_leaves_with_path(abstract_tree)
  specs = jax.tree.leaves(shardings)
  rows = sorted(zip(flat, specs), key=lambda r: -math.prod(r[0][1].shape))[:top]
  for (path, leaf), s in rows:
    logging.info('sharding %-60s %-20s %s', path_name(path), leaf.shape, s.spec)


def local_batch_to_global(batch, sharding):
  """Host numpy batch (this process's slice) -> one global jax.Array per leaf."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
