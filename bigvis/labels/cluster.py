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

  Parts may repeat keys and need not be sorted, but sorted runs (pair_counts'
  output) make the stable sort (timsort: merges the runs) near linear, faster than
  np.unique.
  """
  parts = [p for p in parts if p[0].size]
  if not parts:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  keys = np.concatenate([k for k, _ in parts])
  order = np.argsort(keys, kind="stable")
  keys, counts = keys[order], np.concatenate([c for _, c in parts])[order]
  starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
  return keys[starts], np.add.reduceat(counts, starts)


def cooccurrence(pairs: tuple[np.ndarray, np.ndarray], n: int) -> sp.csr_matrix:
  """Symmetric n x n int64 matrix from pair counts."""
  keys, counts = mirror(pairs)
  return _rows_csr(keys, counts, 0, n, n)


# ---- PPMI in row blocks: memory bounded by one block, not by the corpus ----
# Pair counts are split by row into blocks of ROWS_PER_BLOCK labels (mirrored, so a
# block holds whole rows of the symmetric matrix). A block's distinct pairs are at
# most ROWS_PER_BLOCK x n whatever the corpus size; each block is reduced and turned
# into its PPMI rows alone, given the row sums (`row_sums`, linear in the counts, so
# summed over any partial counts in any order). The PPMI values are the same floats
# as from the whole matrix at once, so the runners' artifacts do not depend on it.

ROWS_PER_BLOCK = 256


def num_blocks(n: int) -> int:
  return max(1, -(-n // ROWS_PER_BLOCK))


def mirror(pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Both orientations (i, j) and (j, i) of upper-triangle pairs, keys sorted."""
  keys, counts = pairs
  off = (keys >> _SHIFT) != (keys & 0xFFFFFFFF)
  flipped = ((keys[off] & 0xFFFFFFFF) << _SHIFT) | (keys[off] >> _SHIFT)
  keys = np.concatenate([keys, flipped])
  order = np.argsort(keys, kind="stable")
  return keys[order], np.concatenate([counts, counts[off]])[order]


def split_blocks(pairs: tuple[np.ndarray, np.ndarray],
                 n: int) -> list[tuple[int, tuple[np.ndarray, np.ndarray]]]:
  """[(block, mirrored pairs of its rows, sorted)] of upper-triangle pair counts."""
  keys, counts = mirror(pairs)
  block = (keys >> _SHIFT) // ROWS_PER_BLOCK
  cuts = np.flatnonzero(np.diff(block)) + 1
  return [(int(block[s]), (k, c)) for s, k, c in
          zip(np.concatenate([[0], cuts]), np.split(keys, cuts), np.split(counts, cuts)) if k.size]


def row_sums(pairs: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
  """int64 [n]: co-occurrences of each label with others (diagonal left out)."""
  keys, counts = pairs
  i, j = keys >> _SHIFT, keys & 0xFFFFFFFF
  off = i != j
  return (np.bincount(i[off], counts[off], minlength=n) +
          np.bincount(j[off], counts[off], minlength=n)).astype(np.int64)


def _rows_csr(keys: np.ndarray, counts: np.ndarray, lo: int, hi: int, n: int,
              dtype=np.int64) -> sp.csr_matrix:
  """Rows lo..hi-1 as a (hi - lo) x n CSR from sorted mirrored keys of those rows."""
  rows = (keys >> _SHIFT) - lo
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=hi - lo))])
  return sp.csr_matrix((counts.astype(dtype), (keys & 0xFFFFFFFF).astype(np.int32), indptr),
                       shape=(hi - lo, n))


def ppmi_block(block: int, pairs: tuple[np.ndarray, np.ndarray], rows: np.ndarray,
               alpha: float = 0.75) -> sp.csr_matrix:
  """PPMI rows of one block (mirrored, reduced pairs) given all labels' `row_sums`.

  PMI(i, j) = log(c_ij / T) - log(r_i / T) - log(ctx_j), with r the row sums, T their
  total and ctx = r^alpha / sum(r^alpha) (context-distribution smoothing); the
  diagonal (df) is not a co-occurrence; only positive values are kept.
  """
  n = rows.size
  lo, hi = block * ROWS_PER_BLOCK, min(n, (block + 1) * ROWS_PER_BLOCK)
  keys, counts = pairs
  i, j = keys >> _SHIFT, keys & 0xFFFFFFFF
  row = rows.astype(np.float64)
  total = row.sum()
  if total == 0:
    return sp.csr_matrix((hi - lo, n))
  ctx = row ** alpha
  ctx /= ctx.sum()
  off = i != j
  vals = counts[off].astype(np.float64)
  pmi = np.log(vals / total) - np.log(row[i[off]] / total) - np.log(ctx[j[off]])
  keep = pmi > 0
  return _rows_csr(keys[off][keep], pmi[keep], lo, hi, n, np.float64)


def ppmi(pairs: tuple[np.ndarray, np.ndarray], n: int) -> sp.csr_matrix:
  """n x n PPMI of upper-triangle pair counts held in memory (computed block by block)."""
  rows = row_sums(pairs, n)
  return stack_blocks({b: ppmi_block(b, p, rows) for b, p in split_blocks(pairs, n)}, n)


def stack_blocks(blocks: dict[int, sp.csr_matrix], n: int) -> sp.csr_matrix:
  """The n x n matrix of PPMI row blocks by block id (absent blocks: empty rows)."""
  parts = []
  for b in range(num_blocks(n)):
    lo, hi = b * ROWS_PER_BLOCK, min(n, (b + 1) * ROWS_PER_BLOCK)
    parts.append(blocks.get(b, sp.csr_matrix((hi - lo, n))))
  out = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, 0))
  out.sort_indices()
  return out


def embed(p: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
  """Unit-length label embeddings [n, k] of the PPMI matrix, k = min(dim, n - 1); zero rows
  for isolated labels."""
  n = p.shape[0]
  k = max(1, min(dim, n - 1))
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


def needs_cooccurrence(cfg: MinerConfig) -> bool:
  return cfg.label_embeddings in ("cooccurrence", "both")


def label_vectors(p: sp.csr_matrix | None, vocab: Vocab, cfg: MinerConfig) -> np.ndarray:
  """The [n, d] float rows k-means clusters, per `cfg.label_embeddings` (see the module doc);
  `p` is the PPMI matrix (None when only the text model is asked for)."""
  parts = []
  if needs_cooccurrence(cfg):
    parts.append(embed(p, cfg.embed_dim, cfg.seed))
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


def fit(p: sp.csr_matrix | None, vocab: Vocab, cfg: MinerConfig) -> Clusters:
  """Clusters of the vocabulary from its PPMI matrix (`ppmi`, `ppmi_block`) and/or label text."""
  n = len(vocab.labels)
  if n == 0:
    return Clusters((), (), ())
  k = min(cfg.clusters, n)
  x = label_vectors(p, vocab, cfg)
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
