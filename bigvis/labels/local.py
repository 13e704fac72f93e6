"""Label mining on one machine, all cores: three passes of `steps` over a process pool.

    from bigvis.labels import MinerConfig, local
    stats = local.run("runs/data/emoji", "runs/data/emoji_mined", MinerConfig(clusters=128))

Pass 1 counts document frequencies per chunk of records (fit splits); the main
process builds the vocabulary. Pass 2 counts label co-occurrence per chunk; the
main process embeds and clusters the labels. Pass 3 labels every shard (all
splits) in parallel. Workers are spawned, not forked, so no thread state (BLAS,
OpenMP from k-means) leaks into them; each pass's pool gets the state it needs
once, through its initializer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from collections import Counter

from tqdm import tqdm

from bigvis.labels import artifacts, cluster, steps
from bigvis.labels import vocab as vocab_lib
from bigvis.labels.config import MinerConfig

_STATE: tuple = ()  # per-worker (cfg, vocab, clusters, out_dir), set by _init


def _init(*state) -> None:
  global _STATE
  _STATE = state


def _count(chunk):
  return steps.count_chunk(chunk, _STATE[0]), chunk.end - chunk.begin


def _pairs(chunk):
  return cluster.pair_counts(steps.ids_chunk(chunk, _STATE[0], _STATE[1])), chunk.end - chunk.begin


def _label(path):
  cfg, vocab, clusters, out_dir = _STATE
  return steps.label_shard(path, out_dir, cfg, vocab, clusters)


def _map(fn, tasks, state, workers, desc, sizes=None, progress=True):
  """Yields fn(task) for each task (any order), on `workers` processes (1: inline)."""
  bar = tqdm(total=sum(sizes) if sizes else len(tasks), desc=desc, unit="rec" if sizes else "shard",
             disable=not progress)
  if workers <= 1:
    _init(*state)
    results = map(fn, tasks)
    pool = None
  else:
    pool = mp.get_context("spawn").Pool(min(workers, len(tasks)), _init, state)
    results = pool.imap_unordered(fn, tasks)
  try:
    for r in results:
      bar.update(r[1] if sizes else 1)
      yield r
  finally:
    bar.close()
    if pool is not None:
      pool.close()
      pool.join()


def run(corpus: str, out: str, cfg: MinerConfig, *, workers: int | None = None,
        chunk_size: int = 5000, progress: bool = True, timings: dict | None = None) -> dict:
  """Mines labels of `corpus` into the labelled copy `out`; returns stats.json's content.

  timings: if given, filled with seconds per phase (kept out of the artifacts, which
  must not depend on the machine).
  """
  timings = {} if timings is None else timings
  clock = time.perf_counter()

  def lap(name):
    nonlocal clock
    now = time.perf_counter()
    timings[name] = round(now - clock, 3)
    clock = now

  workers = workers or os.cpu_count() or 1
  chunks = steps.fit_chunks(corpus, cfg, chunk_size)
  sizes = [c.end - c.begin for c in chunks]
  staging = artifacts.staging_dir(out, corpus)
  try:
    totals: dict = {}
    for part, _ in _map(_count, chunks, (cfg,), workers, "pass 1: counts", sizes, progress):
      for key, (a, b) in part.items():
        t = totals.get(key)
        totals[key] = (a, b) if t is None else (t[0] + a, t[1] + b)
    items = [(k[1], a, b) for k, (a, b) in totals.items() if k[0] == "label"]
    vocab = vocab_lib.select(items, cfg)
    pass1 = {"issues": {k[1]: a for k, (a, _) in totals.items() if k[0] == "issue"},
             "df_hist": dict(Counter(vocab_lib.df_bin(d) for _, d, _ in items))}
    del totals, items
    lap("pass1_counts_and_vocab")

    pairs, pending = (cluster.merge_pairs([]), [])
    for part, _ in _map(_pairs, chunks, (cfg, vocab), workers, "pass 2: co-occurrence", sizes,
                        progress):
      pending.append(part)
      if sum(p[0].size for p in pending) > 20_000_000:  # bound memory: fold in as we go
        pairs, pending = cluster.merge_pairs([pairs, *pending]), []
    pairs = cluster.merge_pairs([pairs, *pending])
    lap("pass2_cooccurrence")
    clusters = cluster.fit(pairs, vocab, cfg)
    del pairs, pending  # Pass 3 needs only the clusters; the pairs grow with the corpus.
    lap("cluster_fit")

    shards = steps.all_shards(corpus)
    pass3 = steps.merge_stats(_map(_label, shards, (cfg, vocab, clusters, staging), workers,
                                   "pass 3: targets", progress=progress))
    lap("pass3_targets")
    stats = artifacts.write(staging, corpus, cfg, vocab, clusters, pass1, pass3)
    artifacts.commit(staging, out)
    lap("write_artifacts")
    return stats
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
