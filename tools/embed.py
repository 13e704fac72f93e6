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
"""
import argparse
import json
import os
import sys
import time


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bigvis import config as config_lib, corpora, data, fileio, heads, inference
from bigvis import pretrained, records, retrieval, sharding


def load_run(workdir):
  path = fileio.join(workdir, 'config.json')
  if not fileio.path(path).exists():
    raise FileNotFoundError(f'{path}: not found; --workdir must be a bigvis training run')
  return ml_collections.ConfigDict(json.loads(fileio.read_text(path)))


def default_pp(config):
  """The run's evaluation preprocessing (from its evaluators), else one derived from training's."""
  for e in config.get('evals', {}).values():
    if e.pp:
      return e.pp
  raise ValueError('the run has no evaluator with a pp to copy; pass --pp, e.g. '
                   "'decode|resize(224)|value_range(-1,1)'")


def class_fields(corpus, config):
  """Integer ground-truth fields to save as label/<field>: those the corpus card names classes
  for, or, for a corpus without a card, those the run's class tasks trained on."""
  if not fileio.path(fileio.join(corpus, corpora.writer.CARD_JSON)).exists():
    return {t.label_field: ('class', t.num_classes) for t in config.tasks.values()
            if t.head != 'multilabel'}
  card = corpora.read_card(corpus)
  kinds = card.get('fields', {}).get('labels', {})
  return {f: ('class', len(names)) for f, names in card.get('label_names', {}).items()
          if kinds.get(f, {}).get('kind') == 'int'}


FEATURES = ('auto', 'embedding', 'pooled')


def embed(workdir, corpus, split, out, *, step=None, task=None, pp=None, batch_size=256,
          features='auto'):
  """Embeds `split` into `out` batch by batch (memory does not grow with the split); returns
  (rows, meta).

  features 'embedding': the output of the embedding head `task`; 'pooled': the trunk's pooled
  features, L2-normalized (any run, a pretrained-only one too: for k-NN, retrieval and linear
  probes of the representation); 'auto': the embedding head if the run has one, else pooled.
  """
  if features not in FEATURES:
    raise ValueError(f'--features {features!r}: choose from {FEATURES}')
  config = load_run(workdir)
  corpus = corpus or config.input.data_dir
  if not corpus:
    raise ValueError(f'the run trained on several corpora ({sorted(config.input.sources)}); '
                     'pass --corpus')
  embedding_tasks = [n for n, t in config.tasks.items() if t.head == 'embedding']
  if features == 'auto':
    features = 'embedding' if task or embedding_tasks else 'pooled'
  if features == 'embedding':
    task = task or (embedding_tasks[0] if len(embedding_tasks) == 1 else None)
    if task not in embedding_tasks:
      raise ValueError(f'--task {task!r}: the run\'s embedding tasks are {embedding_tasks} '
                       '(--features pooled embeds any run with its trunk\'s pooled features)')
  elif task:
    raise ValueError(f'--task {task!r} names an embedding head; --features pooled uses none')
  pp = pp or default_pp(config)
  paths = records.shard_paths(corpus, split)
  labels = class_fields(corpus, config)

  mesh = sharding.make_mesh(ml_collections.ConfigDict(
      dict(data=-1, fsdp=config.mesh.fsdp, model=config.mesh.model)))
  model = heads.build_model(config)
  example = next(iter(data.make_eval_dataset(paths, pp=pp, labels={}, batch_size=1)))
  fresh = jax.jit(model.init, static_argnames='train')(
      jax.random.key(0), jnp.asarray(example['image']), train=False)['params']
  checkpoint = fileio.join(workdir, 'checkpoints', str(step)) if step is not None else workdir
  params = pretrained.load(jax.device_get(fresh), checkpoint, skip=r'^$')
  shardings = sharding.tree_shardings(params, mesh, config.sharding)
  params = jax.device_put(params, shardings)
  classifiers = [name for name, t in config.tasks.items() if t.head == 'classifier']

  writer = retrieval.EmbeddingsWriter(out)
  rows, start = 0, time.perf_counter()
  try:
    for batch in inference.Predictor(model, mesh, shardings).iter_batches(
        params, paths, pp=pp, labels=labels, batch_size=batch_size, desc=f'embed {split}'):
      if features == 'embedding':
        embedding = batch[f'embedding/{task}'].astype(np.float32)
      else:
        pooled = batch['pooled'].astype(np.float32)
        embedding = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
      arrays = {'id': batch['id'], 'index': batch['index'].astype(np.int64),
                'embedding': embedding, 'codes': retrieval.binary_codes(embedding),
                'pooled': batch['pooled'].astype(np.float32)}
      arrays.update({k: v.astype(np.int32) for k, v in batch.items() if k.startswith('label/')})
      arrays.update({f'pred/{name}': batch[f'logits/{name}'].argmax(-1).astype(np.int32)
                     for name in classifiers})
      writer.append(arrays)
      rows += len(embedding)
    meta = {'corpus': fileio.absolute(corpus), 'split': split,
            'checkpoint': fileio.absolute(checkpoint), 'step': int(_restored_step(workdir, step)),
            'task': task or '', 'features': features, 'pp': pp, 'images_per_second': rows / (time.perf_counter() - start)}
    writer.close(meta)
  except BaseException:
    writer.abort()  # A failed or interrupted run publishes nothing.
    raise
  return rows, meta


def _restored_step(workdir, step):
  if step is not None:
    return step
  steps = [int(d.name) for d in (fileio.path(workdir) / 'checkpoints').iterdir()
           if d.name.isdigit()]
  return max(steps)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--workdir', required=True, help='a bigvis training run (config.json, checkpoints/)')
  p.add_argument('--split', required=True, help='split name, e.g. test_query')
  p.add_argument('--out', required=True, help='output .npz')
  p.add_argument('--corpus', default='', help="corpus folder (default: the run's input.data_dir)")
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  p.add_argument('--task', default=None, help='embedding task (default: the only one)')
  p.add_argument('--features', choices=FEATURES, default='auto',
                 help="'embedding' (a head), 'pooled' (the trunk's features, L2-normalized: any "
                      "run), 'auto' (the head if the run has one)")
  p.add_argument('--pp', default=None, help="preprocessing (default: the run's eval pp)")
  p.add_argument('--batch_size', type=int, default=256)
  a = p.parse_args(argv)
  try:
    if not fileio.is_remote(a.out):
      os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    rows, meta = embed(a.workdir, a.corpus, a.split, a.out, step=a.step, task=a.task, pp=a.pp,
                       batch_size=a.batch_size, features=a.features)
  except (OSError, ValueError, config_lib.ConfigError, records.RecordError) as e:
    sys.exit(f'embed.py: error: {e}')
  print(json.dumps({'out': a.out, 'records': rows, **meta}, indent=1))


if __name__ == '__main__':
  main()
