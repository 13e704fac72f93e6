"""Sharded inference over a split, in record order: pooled trunk features and every head's output.

Shared by the evaluators that run during training and by tools/embed.py. Each process reads its
slice of the records (padded to full batches); the outputs are gathered on every process, the
padding dropped, and the rows sorted by record number.

Result keys: 'index' int64 [N] (record number in the split's shards), 'pooled' [N, F],
'embedding/<task>' [N, D] (embedding heads), 'logits/<task>' [N, C] (other heads),
'label/<field>' for each requested label field, and 'id' str [N] when one process runs.
"""
import functools

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from bigvis import data, sharding


def _predict(model, params, images):
  outputs, intermediates = model.apply({'params': params}, images, train=False)
  out = {'pooled': intermediates['pre_logits']}
  for name, head_out in outputs.items():
    if 'embedding' in head_out:
      out[f'embedding/{name}'] = head_out['embedding']
    else:
      out[f'logits/{name}'] = head_out['logits']
  return out


class Predictor:
  """A jitted forward pass of `model` with params laid out by `param_shardings` on `mesh`."""

  def __init__(self, model, mesh, param_shardings):
    self.batch_sharding = sharding.batch_sharding(mesh)
    self._forward = jax.jit(functools.partial(_predict, model),
                            in_shardings=(param_shardings, self.batch_sharding),
                            out_shardings=self.batch_sharding)

  def iter_batches(self, params, paths, *, pp, labels, batch_size, desc=None, worker_count=0,
                   part=None):
    """Yields the outputs batch by batch as host numpy arrays, padding dropped: the module
    docstring's keys. One process yields rows in record order; with several, each batch holds
    every process's rows (gathered) and the order follows the processes' slices.

    labels: field -> ('class' | 'multi_hot', num_classes), the ground truth to return beside.
    batch_size: global; must divide over processes and the mesh's batch axes.
    part: (i, n) runs this process alone (its mesh must hold only local devices) over the
      records i, i + n, ... of the split: one shard of an embeddings set (bigvis/embedding_sets.py).
    """
    count, index = jax.process_count(), jax.process_index()
    slice_index, slice_count = index, count
    if part is not None:
      count, index, (slice_index, slice_count) = 1, 0, part
    ds = data.make_eval_dataset(paths, pp=pp, labels=labels, batch_size=batch_size // count,
                                process_index=slice_index, process_count=slice_count,
                                with_ids=count == 1, worker_count=worker_count)
    seen = False
    for batch in tqdm(ds, desc=desc, disable=index != 0 or desc is None, leave=False):
      host = {'index': batch['index'], 'mask': batch['mask'],
              **{f'label/{f}': v for f, v in batch['labels'].items()}}
      out = self._forward(params, sharding.local_batch_to_global(batch['image'],
                                                                 self.batch_sharding))
      if count == 1:
        out, host['id'] = jax.device_get(out), batch['id']
      else:  # Every process gets every row; host-side fields travel the same way.
        out = multihost_utils.process_allgather(out, tiled=True)
        host = multihost_utils.process_allgather(host, tiled=True)
      keep = host.pop('mask').astype(bool)
      seen = True
      yield {k: np.asarray(v)[keep] for k, v in {**out, **host}.items()}
    if not seen:
      raise ValueError(f'{paths[0]}...: no records to run the model on')

  def predict_split(self, params, paths, **kwargs):
    """All of `iter_batches`' rows in one dict of arrays, sorted by record number."""
    parts = list(self.iter_batches(params, paths, **kwargs))
    result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(result['index'], kind='stable')
    return {k: v[order] for k, v in result.items()}
