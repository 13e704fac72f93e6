"""Sharded ScaNN indexes: one index per shard of an embeddings set, searched together with an
exact merge of the shards' top k.

    OUT/shard-00000-of-00004/     a ScaNN index folder (retrieval.save_index) over set shard 0
    OUT/sharded_index.json        written last: metric, k, dim, rows, the shards in set order and
                                  the sha256 of the embeddings shard each was built from

`build` builds the missing shard indexes in `workers` local processes, or as an Apache Beam
pipeline (`runner='beam'`: Dataflow, Flink, Spark, or the DirectRunner) mapping the same
`build_shard` over the shards, and skips shards already built from the same embeddings. `load` returns a searcher with ScaNN's
`search_batched(queries, final_num_neighbors=k)`: every shard is searched for k, ids become rows
of the whole set, and the top k by score are kept, ties to the lower row (as exact search does),
so `retrieval.load_index` / `evaluate` / tools/eval_retrieval.py take a sharded index as one.
With brute-force shards the merged result is the single brute-force index's.
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import sys
import time

import numpy as np
from tqdm import tqdm

from bigvis import embedding_sets, fileio

MANIFEST = 'sharded_index.json'
FORMAT = 1


def is_sharded(directory) -> bool:
  return fileio.path(fileio.join(directory, MANIFEST)).exists()


def build_shard(embeddings_path: str, index_dir: str, k: int, binary: bool,
                params: dict | None) -> dict:
  """Builds and saves the ScaNN index of one embeddings shard; returns its meta.json content."""
  from bigvis import retrieval
  emb = retrieval.load_embeddings(embeddings_path)
  dim = emb['embedding'].shape[1]
  vectors = retrieval.codes_to_signs(emb['codes'], dim) if binary else emb['embedding']
  resolved = retrieval.resolve_scann_params(len(vectors), dim, k, params)
  start = time.perf_counter()
  searcher = retrieval.build_scann(vectors, k, resolved)
  meta = {'params': resolved, 'metric': 'hamming' if binary else 'dot', 'k': k,
          'num_points': len(vectors), 'dim': dim, 'build_seconds': time.perf_counter() - start,
          'ids': emb['id'], 'embeddings': fileio.absolute(embeddings_path),
          'embeddings_sha256': embedding_sets.sha256(embeddings_path)[1]}
  retrieval.save_index(searcher, index_dir, meta)
  return {k_: v for k_, v in meta.items() if k_ != 'ids'}


def _shard_dir(i: int, n: int) -> str:
  return f'shard-{i:05d}-of-{n:05d}'


def _built(index_dir: str, embeddings_sha256: str, k: int, binary: bool) -> bool:
  meta = fileio.path(fileio.join(index_dir, 'meta.json'))
  if not meta.exists():
    return False
  m = json.loads(meta.read_text())
  return (m.get('embeddings_sha256') == embeddings_sha256 and m.get('k') == k
          and m.get('metric') == ('hamming' if binary else 'dot'))


def _build_with_beam(jobs, pipeline_args):
  """`build_shard` over `jobs` on Beam; every worker must reach the set and `out_dir` (a bucket
  on a cluster), and the driver writes the manifest after the pipeline."""
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  with beam.Pipeline(options=PipelineOptions(pipeline_args or ['--runner=DirectRunner'])) as p:
    _ = (p | 'shards' >> beam.Create(jobs) | 'spread' >> beam.Reshuffle()
         | 'build' >> beam.MapTuple(build_shard))


def build(set_dir: str, out_dir: str, *, k: int = 10, binary: bool = False,
          params: dict | None = None, workers: int = 1, runner: str = 'local',
          pipeline_args: list[str] | None = None) -> dict:
  """One index per shard of the embeddings set `set_dir` into `out_dir`; returns the manifest.

  runner 'local' builds in `workers` processes; 'beam' runs `build_shard` per shard on Apache Beam
  with `pipeline_args` (default: the DirectRunner)."""
  if runner not in ('local', 'beam'):
    raise ValueError(f'runner={runner!r}: choose local or beam')
  manifest = embedding_sets.read_manifest(set_dir)
  shards = embedding_sets.shard_files(set_dir)  # Checked against the set's manifest.
  n = len(shards)
  jobs = []
  for i, (path, s) in enumerate(zip(shards, manifest['shards'])):
    index_dir = fileio.join(out_dir, _shard_dir(i, n))
    if not _built(index_dir, s['sha256'], k, binary):
      jobs.append((path, index_dir, k, binary, params))
  start = time.perf_counter()
  bar = tqdm(total=len(jobs), desc=f'index shards ({workers} workers)', unit='shard',
             disable=None if runner == 'local' else True, file=sys.stderr)
  if runner == 'beam' and jobs:
    _build_with_beam(jobs, pipeline_args)
  elif workers > 1 and len(jobs) > 1:
    ctx = multiprocessing.get_context('spawn')  # No forked copies of a parent's threads.
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
      for future in concurrent.futures.as_completed([pool.submit(build_shard, *j) for j in jobs]):
        future.result()
        bar.update(1)
  else:
    for job in jobs:
      build_shard(*job)
      bar.update(1)
  bar.close()
  metas = [json.loads(fileio.read_text(fileio.join(out_dir, _shard_dir(i, n), 'meta.json')))
           for i in range(n)]
  out = {'format': FORMAT, 'metric': 'hamming' if binary else 'dot', 'k': k,
         'dim': metas[0]['dim'], 'num_points': sum(m['num_points'] for m in metas),
         'embeddings': fileio.absolute(set_dir),
         'build_seconds': sum(m['build_seconds'] for m in metas),
         'wall_seconds': time.perf_counter() - start, 'workers': workers, 'runner': runner,
         'params': metas[0]['params'],
         'shards': [{'dir': _shard_dir(i, n), 'rows': m['num_points'],
                     'embeddings_sha256': m['embeddings_sha256'], 'params': m['params']}
                    for i, m in enumerate(metas)]}
  fileio.write_text_atomic(fileio.join(out_dir, MANIFEST), json.dumps(out, indent=1) + '\n')
  return out


class ShardedSearcher:
  """ScaNN's search_batched over several shard searchers, merged exactly."""

  def __init__(self, searchers, offsets):
    self.searchers, self.offsets = list(searchers), np.asarray(offsets, np.int64)

  def search_batched(self, queries, final_num_neighbors):
    k = final_num_neighbors
    ids, scores = [], []
    for searcher, offset in zip(self.searchers, self.offsets):
      i, s = searcher.search_batched(queries, final_num_neighbors=k)
      i, s = np.asarray(i).astype(np.int64), np.asarray(s, np.float32)
      found = ~np.isnan(s)
      ids.append(np.where(found, i + offset, -1))
      scores.append(np.where(found, s, -np.inf))
    ids, scores = np.concatenate(ids, axis=1), np.concatenate(scores, axis=1)
    # Highest score first; among equal scores the lower row; rows not found last.
    rows = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    return ids, np.where(np.isinf(scores), np.nan, scores).astype(np.float32)


def load(directory: str):
  """(ShardedSearcher, meta) with meta as retrieval.load_index gives it: ids in set order."""
  from bigvis import retrieval
  path = fileio.join(directory, MANIFEST)
  try:
    manifest = json.loads(fileio.read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: corrupt ({e})') from e
  if manifest.get('format') != FORMAT:
    raise ValueError(f'{path}: format {manifest.get("format")!r}, this code reads {FORMAT}')
  searchers, ids, offsets = [], [], []
  for s in manifest['shards']:
    searcher, meta = retrieval.load_index(fileio.join(directory, s['dir']))
    if meta.get('embeddings_sha256') != s['embeddings_sha256'] or meta['num_points'] != s['rows']:
      raise ValueError(f'{fileio.join(directory, s["dir"])}: not the shard index {MANIFEST} lists')
    offsets.append(sum(len(x) for x in ids))
    searchers.append(searcher)
    ids.append(meta['ids'])
  meta = {**manifest, 'ids': [i for part in ids for i in part]}
  return ShardedSearcher(searchers, offsets), meta
