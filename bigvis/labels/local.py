"""Label mining on one machine, all cores: three passes of `steps` over a process pool.

    from bigvis.labels import MinerConfig, local
    stats = local.run("runs/data/emoji", "runs/data/emoji_mined", MinerConfig(clusters=128))

Pass 1 counts document frequencies per chunk of records (fit splits); the main
process builds the vocabulary. Pass 2 counts label co-occurrence per chunk; the
main process spills each chunk's pair counts to disk by row block
(cluster.split_blocks), then reduces one block at a time into its PPMI rows, so
its memory is bounded by a block and the PPMI matrix, not by the corpus; then it
embeds and clusters the labels (pass 2 is skipped if only the text model embeds).
Pass 3 labels every shard (all splits) in parallel. Several corpora mined jointly
share passes 1 and 2 (all their fit splits); pass 3 writes each corpus's copy
(artifacts.output_names). Workers are spawned, not forked, so no thread state
(BLAS, OpenMP from k-means) leaks into them; each pass's pool gets the state it
needs once, through its initializer.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from bigvis.labels import artifacts, cluster, steps
from bigvis.labels import vocab as vocab_lib
from bigvis.labels.config import MinerConfig

_STATE: tuple = ()  # per-worker (cfg, vocab, clusters), set by _init


def _init(*state) -> None:
  global _STATE
  _STATE = state


def _count(chunk):
  return steps.count_chunk(chunk, _STATE[0]), chunk.end - chunk.begin


def _pairs(chunk):
  return cluster.pair_counts(steps.ids_chunk(chunk, _STATE[0], _STATE[1])), chunk.end - chunk.begin


def _label(task):
  path, out_dir = task
  cfg, vocab, clusters = _STATE
  return out_dir, steps.label_shard(path, out_dir, cfg, vocab, clusters)


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


class _PairSpill:
  """Pass 2's partial pair counts on disk, one append-only file per row block."""

  SLAB = 1 << 22  # pairs read at a time when reducing a block (64 MB)

  def __init__(self, folder: str, n: int):
    self.folder, self.n = folder, n
    self.rows = np.zeros(n, np.int64)
    self.files: dict = {}
    os.makedirs(folder)

  def add(self, pairs) -> None:
    self.rows += cluster.row_sums(pairs, self.n)
    for b, (keys, counts) in cluster.split_blocks(pairs, self.n):
      if b not in self.files:
        self.files[b] = open(os.path.join(self.folder, f"block-{b:05d}.bin"), "wb")
      np.stack([keys, counts], axis=1).tofile(self.files[b])

  def ppmi(self, progress: bool) -> sp.csr_matrix:
    """Reduces each block's file (in slabs) into its PPMI rows; deletes the files.

    Each block's rows go back to disk, and the matrix is assembled once all are
    known, so the peak holds the matrix once, not blocks and matrix together.
    """
    done = {}
    for b in tqdm(sorted(self.files), desc="pass 2: PPMI by row block", unit="block",
                  disable=not progress):
      self.files[b].close()
      path = self.files[b].name
      pairs = cluster.merge_pairs([])
      with open(path, "rb") as f:
        while (slab := np.fromfile(f, np.int64, 2 * self.SLAB).reshape(-1, 2)).size:
          pairs = cluster.merge_pairs([pairs, (slab[:, 0], slab[:, 1])])
      os.remove(path)
      block = cluster.ppmi_block(b, pairs, self.rows)
      del pairs
      done[b] = (path + ".ppmi.npz", block.shape[0], block.nnz)
      np.savez(done[b][0], data=block.data, indices=block.indices, indptr=block.indptr)
    nnz = sum(z for _, _, z in done.values())
    data, indices = np.empty(nnz, np.float64), np.empty(nnz, np.int32)
    indptr, at = [np.zeros(1, np.int64)], 0
    for b in range(cluster.num_blocks(self.n)):
      lo, hi = b * cluster.ROWS_PER_BLOCK, min(self.n, (b + 1) * cluster.ROWS_PER_BLOCK)
      if b not in done:
        indptr.append(np.full(hi - lo, at, np.int64))
        continue
      with np.load(done[b][0], allow_pickle=False) as z:
        m = z["indptr"][-1]
        data[at:at + m], indices[at:at + m] = z["data"], z["indices"]
        indptr.append(z["indptr"][1:] + at)
      os.remove(done[b][0])
      at += m
    return sp.csr_matrix((data, indices, np.concatenate(indptr)), shape=(self.n, self.n))

  def close(self) -> None:
    for f in self.files.values():
      f.close()
    shutil.rmtree(self.folder, ignore_errors=True)


def run(corpus: str | Sequence[str], out: str, cfg: MinerConfig, *, workers: int | None = None,
        chunk_size: int = 5000, progress: bool = True, timings: dict | None = None) -> dict:
  """Mines labels of `corpus` into the labelled copy `out`; returns stats.json's content.

  A list of corpora is mined jointly into out/<each one's folder name>; returns {folder name:
  its stats.json's content}.

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
  corpora = [corpus] if isinstance(corpus, str) else list(corpus)
  names = artifacts.output_names(corpora, joint=not isinstance(corpus, str))
  chunks = [c for x in corpora for c in steps.fit_chunks(x, cfg, chunk_size)]
  sizes = [c.end - c.begin for c in chunks]
  staging = artifacts.staging_dir(out, corpora, names)
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

    p = None
    if cluster.needs_cooccurrence(cfg):
      spill = _PairSpill(os.path.join(staging, ".pairs"), len(vocab.labels))
      try:
        for part, _ in _map(_pairs, chunks, (cfg, vocab), workers, "pass 2: co-occurrence",
                            sizes, progress):
          spill.add(part)
        p = spill.ppmi(progress)
      finally:
        spill.close()
    lap("pass2_cooccurrence")
    clusters = cluster.fit(p, vocab, cfg)
    del p  # pass 3 needs only the clusters
    lap("cluster_fit")

    dirs = [os.path.join(staging, name) for name in names]
    tasks = [(path, d) for x, d in zip(corpora, dirs) for path in steps.all_shards(x)]
    parts = {d: [] for d in dirs}
    for d, part in _map(_label, tasks, (cfg, vocab, clusters), workers, "pass 3: targets",
                        progress=progress):
      parts[d].append(part)
    lap("pass3_targets")
    stats = {name: artifacts.write(d, x, cfg, vocab, clusters, pass1, steps.merge_stats(parts[d]),
                                   [y for y in corpora if y != x])
             for x, name, d in zip(corpora, names, dirs)}
    artifacts.commit(staging, out)
    lap("write_artifacts")
    return stats[""] if isinstance(corpus, str) else stats
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
