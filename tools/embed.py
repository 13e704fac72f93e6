"""Embeds one split of a corpus with a trained bigvis run: embeddings, binary codes, pooled
features, head predictions and ground truth, saved with the record ids in one .npz.
The embedding is the run's embedding head, or (`--features pooled`, the default for a run without
one, e.g. pretrained only) the trunk's pooled features L2-normalized.

  python tools/embed.py --workdir runs/finetune --split test_query --out runs/finetune/q.npz
  python tools/embed.py --workdir runs/finetune --split test_index --out runs/finetune/db.npz \\
      --corpus runs/data/emoji --step 400 --batch_size 256

The run's config.json gives the model; its latest checkpoint (or --step) the params. Inference is
sharded over every local device (set XLA_FLAGS=--xla_force_host_platform_device_count=N on a CPU)
and batched, with a progress bar. Output keys: see bigvis/retrieval.py (load_embeddings).
Then: tools/build_index.py and tools/eval_retrieval.py.

Past one machine, an embeddings set (bigvis/embedding_sets.py): --num_shards N makes --out a
folder of N shard files and a manifest; start the same command on P processes with
--process_index p --process_count P (or under jax.distributed, as the trainer is launched) and
each writes the shards i % P == p. Killed, the same command resumes: finished shards are kept.
  python tools/embed.py --workdir runs/finetune --split test_index --out runs/finetune/db_set \
      --num_shards 8 --process_index 0 --process_count 2
The tools that read embeddings files read a set folder the same way.
"""
import argparse
import json
import os
import sys
import time


import jax
import ml_collections
import numpy as np

from bigvis import config as config_lib, corpora, data, distributed, embedding_sets, fileio, heads
from bigvis import inference
from bigvis import records, retrieval, runs, sharding


def class_fields(corpus, config, multi_hot=()):
  """Ground-truth fields to save as label/<field>: the integer fields the corpus card names
  classes for (or, for a corpus without a card, those the run's class tasks trained on), and the
  list fields named in `multi_hot` as [N, classes] 0/1 rows (opt-in: a vocabulary is wide)."""
  if not fileio.path(fileio.join(corpus, corpora.writer.CARD_JSON)).exists():
    if multi_hot:
      raise ValueError(f'{corpus}: no dataset card, so no class list for {list(multi_hot)}')
    return {t.label_field: ('class', t.num_classes) for t in config.tasks.values()
            if t.head != 'multilabel'}
  card = corpora.read_card(corpus)
  kinds = card.get('fields', {}).get('labels', {})
  names = card.get('label_names', {})
  is_int = lambda f: kinds.get(f, {}).get('kind') == 'int'
  out = {f: ('class', len(n)) for f, n in names.items() if is_int(f)}
  for f in multi_hot:
    if f not in names or is_int(f):
      lists = sorted(k for k in names if not is_int(k))
      raise ValueError(f'--multi_hot {f!r}: not a list label field with classes in the card of '
                       f'{corpus}; those are {lists}')
    out[f] = ('multi_hot', len(names[f]))
  return out


def embed(workdir, corpus, split, out, *, step=None, task=None, pp=None, batch_size=256,
          features='auto', num_shards=0, process_index=None, process_count=None, multi_hot=()):
  """Embeds `split` into `out` batch by batch (memory does not grow with the split); returns
  (rows, meta).

  features 'embedding': the output of the embedding head `task`; 'pooled': the trunk's pooled
  features, L2-normalized (any run, a pretrained-only one too: for k-NN, retrieval and linear
  probes of the representation); 'auto': the embedding head if the run has one, else pooled.
  num_shards > 0: `out` is an embeddings set folder of that many shards (bigvis/embedding_sets.py)
  and this process writes its share (process_index of process_count; default: this JAX
  process's) on its local devices; rows is then the set's total once it is complete, else None.
  """
  if num_shards and process_index is None:  # Before anything touches JAX's backend.
    process_index, process_count = distributed.initialize()
  config = runs.load_run(workdir)
  corpus = corpus or config.input.data_dir
  if not corpus:
    raise ValueError(f'the run trained on several corpora ({sorted(config.input.sources)}); '
                     'pass --corpus')
  features, task = runs.resolve_features(config, features, task)
  pp = pp or runs.default_pp(config)
  paths = records.shard_paths(corpus, split)
  labels = class_fields(corpus, config, multi_hot)

  # A set's shards are embedded by each process alone, on its own devices.
  devices = jax.local_devices() if num_shards else None
  mesh = sharding.make_mesh(ml_collections.ConfigDict(
      dict(data=-1, fsdp=config.mesh.fsdp, model=config.mesh.model)), devices)
  model = heads.build_model(config)
  example = next(iter(data.make_eval_dataset(paths, pp=pp, labels={}, batch_size=1)))
  params = runs.restore_params(model, workdir, example['image'], step)
  checkpoint = runs.checkpoint_path(workdir, step)
  shardings = sharding.tree_shardings(params, mesh, config.sharding)
  params = jax.device_put(params, shardings)
  classifiers = [name for name, t in config.tasks.items() if t.head == 'classifier']
  predictor = inference.Predictor(model, mesh, shardings)
  meta = {'corpus': fileio.absolute(corpus), 'split': split,
          'checkpoint': fileio.absolute(checkpoint), 'step': int(runs.restored_step(workdir, step)),
          'task': task, 'features': features, 'pp': pp}

  def write(path, part=None, desc=f'embed {split}'):
    writer = retrieval.EmbeddingsWriter(path)
    rows, start = 0, time.perf_counter()
    try:
      for batch in predictor.iter_batches(params, paths, pp=pp, labels=labels,
                                          batch_size=batch_size, desc=desc, part=part):
        writer.append(_arrays(batch, features, task, classifiers))
        rows += len(batch['index'])
      writer.close({**meta, 'images_per_second': rows / (time.perf_counter() - start),
                    **({'part': list(part)} if part else {})})
    except BaseException:
      writer.abort()  # A failed or interrupted run publishes nothing.
      raise
    return rows

  if not num_shards:
    rows = write(out)
    return rows, {**meta, 'rows': rows}
  manifest = embedding_sets.write_set(
      out, num_shards, lambda i, path: write(path, (i, num_shards), f'embed {split} shard {i}'),
      {**meta, 'num_shards': num_shards, 'batch_size': batch_size},
      process_index=process_index, process_count=process_count, meta=meta)
  return (manifest['rows'] if manifest else None), {**meta, 'num_shards': num_shards,
                                                    'complete': manifest is not None}


def _arrays(batch, features, task, classifiers):
  """The embeddings-file fields of one predicted batch."""
  if features == 'embedding':
    embedding = batch[f'embedding/{task}'].astype(np.float32)
  else:
    pooled = batch['pooled'].astype(np.float32)
    embedding = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
  arrays = {'id': batch['id'], 'index': batch['index'].astype(np.int64),
            'embedding': embedding, 'codes': retrieval.binary_codes(embedding),
            'pooled': batch['pooled'].astype(np.float32)}
  arrays.update({k: v.astype(np.uint8 if v.ndim == 2 else np.int32)  # 2-D: multi-hot rows
                 for k, v in batch.items() if k.startswith('label/')})
  arrays.update({f'pred/{name}': batch[f'logits/{name}'].argmax(-1).astype(np.int32)
                 for name in classifiers})
  return arrays


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--workdir', required=True, help='a bigvis training run (config.json, checkpoints/)')
  p.add_argument('--split', required=True, help='split name, e.g. test_query')
  p.add_argument('--out', required=True, help='output .npz')
  p.add_argument('--corpus', default='', help="corpus folder (default: the run's input.data_dir)")
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  p.add_argument('--task', default=None, help='embedding task (default: the only one)')
  p.add_argument('--features', choices=runs.FEATURES, default='auto',
                 help="'embedding' (a head), 'pooled' (the trunk's features, L2-normalized: any "
                      "run), 'auto' (the head if the run has one)")
  p.add_argument('--pp', default=None, help="preprocessing (default: the run's eval pp)")
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--multi_hot', default='',
                 help='comma-separated list label fields (e.g. mined_labels) to save as multi-hot '
                      'label/<field> rows, for tools/probe.py on tail labels')
  p.add_argument('--num_shards', type=int, default=0,
                 help='> 0: --out is an embeddings set folder of this many shards, resumable, '
                      'written by every process started alike (--process_index/--process_count, '
                      'or jax.distributed as the trainer starts it)')
  p.add_argument('--process_index', type=int, default=None)
  p.add_argument('--process_count', type=int, default=None)
  a = p.parse_args(argv)
  try:
    if (a.process_index is None) != (a.process_count is None):
      raise ValueError('give both --process_index and --process_count, or neither')
    if not fileio.is_remote(a.out):
      os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    rows, meta = embed(a.workdir, a.corpus, a.split, a.out, step=a.step, task=a.task, pp=a.pp,
                       batch_size=a.batch_size, features=a.features, num_shards=a.num_shards,
                       process_index=a.process_index, process_count=a.process_count,
                       multi_hot=tuple(f for f in a.multi_hot.split(',') if f))
  except (OSError, ValueError, config_lib.ConfigError, records.RecordError) as e:
    sys.exit(f'embed.py: error: {e}')
  print(json.dumps({'out': a.out, 'records': rows, **meta}, indent=1))


if __name__ == '__main__':
  main()
