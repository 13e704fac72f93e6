"""Label clusters: label embeddings (corpus co-occurrence, label text, or both) -> k-means.

Co-occurrence counts are pairs (i <= j) of vocabulary ids that share a record,
kept as sorted int64 keys i * 2**32 + j with counts, so partial counts from any
number of workers merge exactly (integer sums in any order).

Embedding (Levy, Goldberg & Dagan 2015): PPMI of the label-label matrix (diagonal
dropped) with context-distribution smoothing 0.75, then a rank-`embed_dim` SVD,
rows U * sqrt(S), L2-normalized so k-means groups by direction (cosine).

`cfg.label_embeddings` picks what k-means sees (`label_vectors`, the one code
path of both runners): 'cooccurrence' (default) the PPMI-SVD rows above;
'text_model' the all-MiniLM-L6-v2 sentence embedding of each label string
(`text_model.embed_texts`; unit length, 384-d; English-centred, so labels in
other languages embed less well); 'both' the two concatenated, each unit-length
and scaled by 1/sqrt(2), so squared distances are the mean of the two spaces'
and neither dominates by dimension (a label with no co-occurrence keeps only
its text half). bench/label_embeddings.py measures which serves better.
k-means is sklearn's, seeded (random_state=cfg.seed, n_init=4).
Cluster ids are ordered by the summed df of their members (0 = largest); a
cluster's name is its three most frequent members joined by ' / '.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from bigvis.labels.config import MinerConfig
from bigvis.labels.vocab import Vocab

_SHIFT = np.int64(32)
_DENSE_SVD_MAX = 2000  # below this many labels a dense SVD is fast and has no randomness


def pair_counts(id_lists: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """(sorted pair keys, counts) of the label pairs (i <= j, diagonal = df) in these records.

  Each list must hold distinct ids. Computed as the upper triangle of X^T X for
  the records x labels indicator matrix X (sparse, in C, not a Python pair loop).
  """
  lists = [np.asarray(ids, np.int64) for ids in id_lists]
  indices = np.concatenate(lists) if lists else np.zeros(0, np.int64)
  if not indices.size:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  indptr = np.concatenate([[0], np.cumsum([a.size for a in lists])])
  x = sp.csr_matrix((np.ones(indices.size, np.int64), indices, indptr),
                    shape=(len(lists), int(indices.max()) + 1))
  c = sp.triu(x.T @ x).tocoo()
  keys = (c.row.astype(np.int64) << _SHIFT) | c.col.astype(np.int64)
  order = np.argsort(keys, kind="stable")
  return keys[order], c.data[order].astype(np.int64)


def merge_pairs(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
  """Sum of pair counts; exact and independent of the order of `parts`.

  Each part is sorted, so a stable sort (timsort: merges the sorted runs) of
  their concatenation is near linear; 5x faster than np.unique here.
  """
  parts = [p for p in parts if p[0].size]
  if not parts:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  if len(parts) == 1:
    return parts[0]
  keys = np.concatenate([k for k, _ in parts])
  order = np.argsort(keys, kind="stable")
  keys, counts = keys[order], np.concatenate([c for _, c in parts])[order]
  starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
  return keys[starts], np.add.reduceat(counts, starts)


def cooccurrence(pairs: tuple[np.ndarray, np.ndarray], n: int) -> sp.csr_matrix:
  """Symmetric n x n int64 matrix from pair counts."""
  keys, counts = pairs
  i, j = (keys >> _SHIFT).astype(np.int64), (keys & 0xFFFFFFFF).astype(np.int64)
  off = i != j
  rows = np.concatenate([i, j[off]])
  cols = np.concatenate([j, i[off]])
  vals = np.concatenate([counts, counts[off]])
  m = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.int64)
  m.sum_duplicates()
  m.sort_indices()
  return m


def ppmi(cooc: sp.csr_matrix, alpha: float = 0.75) -> sp.csr_matrix:
  coo = cooc.tocoo()
  off = coo.row != coo.col  # the diagonal (df) is not a co-occurrence
  rows, cols, vals = coo.row[off], coo.col[off], coo.data[off].astype(np.float64)
  n = cooc.shape[0]
  total = vals.sum()
  if total == 0:
    return sp.csr_matrix((n, n))
  row = np.bincount(rows, weights=vals, minlength=n)
  ctx = row ** alpha
  ctx /= ctx.sum()
  pmi = np.log(vals / total) - np.log(row[rows] / total) - np.log(ctx[cols])
  keep = pmi > 0
  out = sp.csr_matrix((pmi[keep], (rows[keep], cols[keep])), shape=(n, n))
  out.sort_indices()
  return out


def embed(cooc: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
  """Unit-length label embeddings [n, k], k = min(dim, n - 1); zero rows for isolated labels."""
  n = cooc.shape[0]
  k = max(1, min(dim, n - 1))
  p = ppmi(cooc)
  if n <= _DENSE_SVD_MAX:
    u, s, _ = np.linalg.svd(p.toarray())
    u, s = u[:, :k], s[:k]
  else:
    from sklearn.utils.extmath import randomized_svd
    u, s, _ = randomized_svd(p, k, n_iter=7, random_state=seed)
  u = u * np.sqrt(s)
  # SVD signs are arbitrary; fix them so embeddings are comparable across runs.
  u *= np.where(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])] < 0, -1.0, 1.0)
  norm = np.linalg.norm(u, axis=1, keepdims=True)
  return np.divide(u, norm, out=np.zeros_like(u), where=norm > 0)


def label_vectors(pairs: tuple[np.ndarray, np.ndarray], vocab: Vocab,
                  cfg: MinerConfig) -> np.ndarray:
  """The [n, d] float rows k-means clusters, per `cfg.label_embeddings` (see the module doc)."""
  n = len(vocab.labels)
  parts = []
  if cfg.label_embeddings in ("cooccurrence", "both"):
    parts.append(embed(cooccurrence(pairs, n), cfg.embed_dim, cfg.seed))
  if cfg.label_embeddings in ("text_model", "both"):
    from bigvis.labels import text_model  # lazily: jax and 90 MB of weights, only when asked
    parts.append(text_model.embed_texts(list(vocab.labels)).astype(np.float64))
  if len(parts) == 1:
    return parts[0]
  return np.concatenate(parts, axis=1) / np.sqrt(len(parts))


@dataclasses.dataclass(frozen=True)
class Clusters:
  assign: tuple[int, ...]          # cluster id per cluster-vocabulary label
  names: tuple[str, ...]
  members: tuple[tuple[int, ...], ...]  # vocabulary ids, most frequent first

  def to_json(self, vocab: Vocab) -> dict:
    return {"num_clusters": len(self.names),
            "clusters": [{"id": c, "name": name, "df_sum": sum(vocab.df[i] for i in mem),
                          "members": [vocab.labels[i] for i in mem]}
                         for c, (name, mem) in enumerate(zip(self.names, self.members))],
            "label_to_cluster": {vocab.labels[i]: c for i, c in enumerate(self.assign)}}


def fit(pairs: tuple[np.ndarray, np.ndarray], vocab: Vocab, cfg: MinerConfig) -> Clusters:
  """Clusters of the vocabulary from its co-occurrence pair counts and/or its label text."""
  n = len(vocab.labels)
  if n == 0:
    return Clusters((), (), ())
  k = min(cfg.clusters, n)
  x = label_vectors(pairs, vocab, cfg)
  if k == n:
    raw = np.arange(n)
  else:
    from sklearn.cluster import KMeans
    with warnings.catch_warnings():  # fewer distinct points than k: some clusters duplicate
      warnings.simplefilter("ignore")
      raw = KMeans(n_clusters=k, n_init=4, random_state=cfg.seed).fit_predict(x)
  groups = [np.flatnonzero(raw == c) for c in range(k)]  # ids ascend = most frequent first
  groups = [g for g in groups if g.size]
  df = np.asarray(vocab.df, np.int64)
  groups.sort(key=lambda g: (-int(df[g].sum()), int(g[0])))
  assign = np.empty(n, np.int64)
  for c, g in enumerate(groups):
    assign[g] = c
  names = tuple(" / ".join(vocab.labels[i] for i in g[:3]) for g in groups)
  return Clusters(tuple(int(a) for a in assign), names, tuple(tuple(int(i) for i in g) for g in groups))
