"""Retrieval evaluation: exact and ScaNN nearest neighbours, binary codes, metrics, files.

    ids, scores = exact_search(queries, database, k)                   # dot product, float32
    ids, dists = exact_search(q_codes, db_codes, k, metric="hamming")  # packed binary codes
    retrieval_metrics(ids, query_labels, database_labels, ks=(1, 10))  # R@k, P@k, mAP@k
    searcher = build_scann(database, k)                                # params from the data size
    save_index(searcher, directory, meta); searcher, meta = load_index(directory)
    evaluate(queries, database, "identity")       # what tools/eval_retrieval.py reports

Embeddings files (tools/embed.py writes them with `save_embeddings`, the tools here read them
with `load_embeddings`) are .npz files, read without pickle:

    id          str [N]            record id
    index       int64 [N]          record number within the split's shards
    embedding   float32 [N, D]     L2-normalized
    codes       uint8 [N, ceil(D/8)]   np.packbits(embedding > 0, axis=-1) (`binary_codes`)
    pooled      float32 [N, F]     optional: trunk features
    label/<f>   int32 [N]          ground-truth classes (negative: unknown, never relevant)
                or uint8 [N, C]    0/1 rows of a list field (tools/embed.py --multi_hot)
    pred/<t>    int32 [N]          classifier predictions
    meta        0-d str            JSON {"corpus", "split", "checkpoint", "step", "task", ...}

Ties are broken by the lower database row everywhere, so every result here is deterministic.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
import zipfile

import numpy as np
from tqdm import tqdm

from bigvis import fileio

# A score block of queries x database is kept near this size (the top-k bookkeeping needs a few
# temporaries of the same shape), so exact search runs in bounded memory on any database size.
_BLOCK_BYTES = 64 << 20

# ---------------------------------------------------------------------------------------------
# Exact search


def _top_k_smallest(cost: np.ndarray, k: int) -> np.ndarray:
  """Columns of the k smallest entries of each row, ascending; ties go to the lower column.

  Split each row into m >= k chunks; the k-th smallest chunk minimum t bounds the k-th smallest
  entry from above (k chunks each hold an entry <= t), so the entries <= t are a short candidate
  list holding the whole top k and everything tied with it. Sorting the candidates by (row,
  cost, column) then settles ties by column. This is several times faster than
  np.argpartition, which would also pick an arbitrary subset of the entries tied with the k-th.
  """
  rows, n = cost.shape
  m = min(n, max(4 * k, 256))
  minima = np.minimum.reduceat(cost, (np.arange(m) * n) // m, axis=1)
  t = np.partition(minima, k - 1, axis=1)[:, k - 1:k]
  r, c = np.nonzero(cost <= t)  # >= k per row
  order = np.lexsort((c, cost[r, c], r))
  r, c = r[order], c[order]
  rank = np.arange(len(r)) - np.searchsorted(r, np.arange(rows))[r]  # position within its row
  return c[rank < k].reshape(rows, k).astype(np.int64)


def _check_matrix(x, name: str, kind: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f"{name}: expected a non-empty 2-D array [rows, dim], got shape {x.shape}")
  if kind == "float":
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"{name}: expected float vectors, got dtype {x.dtype}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
      raise ValueError(f"{name}: row {int(np.argmin(finite))} has a non-finite value "
                       f"({int((~finite).sum())} such rows)")
  elif x.dtype != np.uint8:
    raise ValueError(f"{name}: expected packed binary codes (uint8, np.packbits), "
                     f"got dtype {x.dtype}")
  return x


def _as_words(codes: np.ndarray) -> np.ndarray:
  """Packed uint8 codes as uint64 words: 8 bytes per XOR + popcount instead of 1."""
  pad = -codes.shape[1] % 8  # zero bytes in both codes add nothing to a Hamming distance
  codes = np.pad(codes, ((0, 0), (0, pad)))
  return np.ascontiguousarray(codes).view(np.uint64)


def exact_search(queries, database, k: int, metric: str = "dot", *, progress: bool = False):
  """The exact top k of the database for each query: (ids int64 [Q, k], scores [Q, k]).

  metric 'dot': float vectors, scores are dot products, best (largest) first. 'hamming': packed
  binary codes (np.packbits output, [rows, ceil(D/8)] uint8), scores are Hamming distances
  (int32), nearest (smallest) first. Equal scores are ordered by database row. A k larger than
  the database is clipped to its size (a warning says so): the result then has N columns.
  """
  if metric not in ("dot", "hamming"):
    raise ValueError(f"metric must be 'dot' or 'hamming', got {metric!r}")
  kind = "float" if metric == "dot" else "codes"
  queries = _check_matrix(queries, "queries", kind)
  database = _check_matrix(database, "database", kind)
  if queries.shape[1] != database.shape[1]:
    unit = "dims" if metric == "dot" else "bytes per code"
    raise ValueError(f"queries have {queries.shape[1]} {unit} but the database has "
                     f"{database.shape[1]}")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be an int >= 1, got {k!r}")
  n = database.shape[0]
  if k > n:
    warnings.warn(f"exact_search: k={k} is larger than the database ({n} rows); clipped to {n}")
    k = n

  if metric == "dot":
    # float32 like the embeddings (and ScaNN); BLAS does the work.
    q, db = queries.astype(np.float32, copy=False), database.astype(np.float32, copy=False)
    def cost(block):
      return -(block @ db.T)
    pair_bytes = 8  # scores, a mask, candidates
  else:
    q, db = _as_words(queries), _as_words(database)
    def cost(block):
      return np.bitwise_count(block[:, None, :] ^ db[None, :, :]).sum(-1, dtype=np.int32)
    pair_bytes = 8 + 9 * db.shape[1]  # + the XOR words and their popcounts
  rows = max(1, _BLOCK_BYTES // (n * pair_bytes))
  ids, scores = [], []
  starts = range(0, len(q), rows)
  for start in tqdm(starts, desc=f"exact {metric}", unit="block",
                    disable=not (progress and sys.stderr.isatty())):
    c = cost(q[start:start + rows])
    top = _top_k_smallest(c, k)
    best = np.take_along_axis(c, top, 1)
    ids.append(top)
    scores.append(-best if metric == "dot" else best)
  return np.concatenate(ids), np.concatenate(scores)


# ---------------------------------------------------------------------------------------------
# Metrics against ground-truth labels. A database item is relevant to a query when their labels
# are equal and not negative (negative = unknown). Queries with no relevant item in the database
# can score nothing; they are left out of every mean and counted instead.


def num_relevant(query_labels, database_labels) -> np.ndarray:
  """int64 [Q]: how many database items share each query's label (0 for negative labels)."""
  q, db = np.asarray(query_labels), np.asarray(database_labels)
  values, counts = np.unique(db[db >= 0], return_counts=True)
  if not len(values):
    return np.zeros(q.shape, np.int64)
  pos = np.clip(np.searchsorted(values, q), 0, len(values) - 1)
  return np.where((values[pos] == q) & (q >= 0), counts[pos], 0).astype(np.int64)


def _relevance(retrieved_labels, query_labels, k: int) -> np.ndarray:
  r, q = np.asarray(retrieved_labels), np.asarray(query_labels)
  if r.ndim != 2 or q.shape != (r.shape[0],):
    raise ValueError(f"retrieved_labels must be [Q, k'] and query_labels [Q]; got {r.shape} "
                     f"and {q.shape}")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= r.shape[1]:
    raise ValueError(f"k must be an int in [1, {r.shape[1]}] (the columns retrieved), got {k!r}")
  return (r[:, :k] == q[:, None]) & (q[:, None] >= 0)


def _kept(query_labels, database_labels):
  """(mask of queries that have a relevant item or None to keep all, n_relevant or None)."""
  if database_labels is None:
    return None, None
  n_rel = num_relevant(query_labels, database_labels)
  return n_rel > 0, n_rel


def _mean(values) -> float:
  return float(np.mean(values)) if len(values) else float("nan")


def recall_at_k(retrieved_labels, query_labels, k: int, database_labels=None) -> float:
  """Share of queries with at least one relevant item in their top k (R@k of Zhai & Wu).

  With `database_labels`, queries that have no relevant item in the database are left out. NaN
  when no query is left.
  """
  rel = _relevance(retrieved_labels, query_labels, k)
  keep, _ = _kept(query_labels, database_labels)
  return _mean(rel.any(axis=1) if keep is None else rel[keep].any(axis=1))


def precision_at_k(retrieved_labels, query_labels, k: int, database_labels=None) -> float:
  """Mean share of the top k that is relevant (queries left out as in `recall_at_k`)."""
  rel = _relevance(retrieved_labels, query_labels, k)
  keep, _ = _kept(query_labels, database_labels)
  return _mean((rel if keep is None else rel[keep]).mean(axis=1))


def map_at_k(retrieved_labels, query_labels, k: int, database_labels) -> float:
  """Mean over queries of AP@k = sum_{i<=k} P@i * rel_i / min(k, n_relevant(query)).

  The denominator needs the number of relevant items in the whole database, hence
  `database_labels`; queries with none are left out.
  """
  if database_labels is None:
    raise ValueError("map_at_k needs database_labels to count each query's relevant items")
  rel = _relevance(retrieved_labels, query_labels, k)
  keep, n_rel = _kept(query_labels, database_labels)
  precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
  ap = (precision_at_i * rel).sum(axis=1)[keep] / np.minimum(k, n_rel[keep])
  return _mean(ap)


def labels_of(ids, database_labels) -> np.ndarray:
  """Labels of retrieved ids; -1 where the id is -1 (a searcher found fewer than k)."""
  ids, labels = np.asarray(ids), np.asarray(database_labels)
  return np.where(ids >= 0, labels[np.clip(ids, 0, None)], -1)


def retrieval_metrics(ids, query_labels, database_labels, ks=(1, 10)) -> dict:
  """recall@k, precision@k, map@k for each k over the queries that have a relevant item.

  'queries' is how many queries the means are over; 'queries_without_relevant' how many were
  left out because the database holds nothing with their label.
  """
  retrieved = labels_of(ids, database_labels)
  keep, _ = _kept(query_labels, database_labels)
  out = {"queries": int(keep.sum()), "queries_without_relevant": int((~keep).sum())}
  for k in ks:
    out[f"recall@{k}"] = recall_at_k(retrieved, query_labels, k, database_labels)
    out[f"precision@{k}"] = precision_at_k(retrieved, query_labels, k, database_labels)
    out[f"map@{k}"] = map_at_k(retrieved, query_labels, k, database_labels)
  return out


def ann_recall(ann_ids, exact_ids, k: int) -> float:
  """Mean |ANN top k ∩ exact top k| / k over queries: how much of the exact answer ANN found."""
  a, e = np.asarray(ann_ids), np.asarray(exact_ids)
  if a.ndim != 2 or a.shape[0] != e.shape[0] or min(a.shape[1], e.shape[1]) < k or k < 1:
    raise ValueError(f"ann_ids {a.shape} and exact_ids {e.shape} must be [Q, >= k] with k={k} >= 1")
  hits = (a[:, :k, None] == e[:, None, :k]).any(axis=2) & (a[:, :k] >= 0)
  return float(hits.sum(axis=1).mean() / k)


def ann_recall_ties(ann_costs, exact_costs, k: int, atol: float = 0.0) -> float:
  """Share of the ANN top k as good as the exact k-th result (costs: smaller is better).

  `ann_recall` counts a result tied with the exact k-th one as a miss when the exact search
  happened to keep another of the tied items; with Hamming distances (a few dozen values) ties
  are the rule, so this is the fair measure there. `ann_costs` must be the exact costs of the
  ANN's results (np.inf where it found nothing); `atol` absorbs float rounding.
  """
  a, e = np.asarray(ann_costs), np.asarray(exact_costs)
  if a.ndim != 2 or a.shape[0] != e.shape[0] or min(a.shape[1], e.shape[1]) < k or k < 1:
    raise ValueError(f"ann_costs {a.shape} and exact_costs {e.shape} must be [Q, >= k] "
                     f"with k={k} >= 1")
  return float((a[:, :k] <= e[:, k - 1:k] + atol).mean())


# ---------------------------------------------------------------------------------------------
# Binary codes


def binary_codes(embeddings) -> np.ndarray:
  """Packed sign codes: bit = x > 0, np.packbits along the last axis -> uint8 [..., ceil(D/8)]."""
  return np.packbits(np.asarray(embeddings) > 0, axis=-1)


def codes_to_signs(packed, dim: int) -> np.ndarray:
  """±1 float32 [..., dim] from packed codes, for dot-product search over binary codes.

  For ±1 vectors a.b = D - 2 * Hamming(a, b), so the largest dot product is the smallest
  Hamming distance: the same ranking, which lets ScaNN (dot product only) search binary codes.
  """
  packed = np.asarray(packed)
  if packed.dtype != np.uint8 or packed.shape[-1] != -(-dim // 8):
    raise ValueError(f"codes must be uint8 [..., ceil({dim}/8) = {-(-dim // 8)}], got "
                     f"{packed.dtype} {packed.shape}")
  bits = np.unpackbits(packed, axis=-1, count=dim)
  return bits.astype(np.float32) * 2 - 1


# ---------------------------------------------------------------------------------------------
# ScaNN

BRUTE_FORCE_BELOW = 5000
SCANN_ALGORITHMS = ("brute_force", "tree_ah")
# key -> type; `--param key=value` values are parsed with it.
SCANN_PARAM_TYPES = {"algorithm": str, "num_leaves": int, "num_leaves_to_search": int,
                     "training_sample_size": int, "dims_per_block": int,
                     "anisotropic_quantization_threshold": float, "reorder": int}


def _leaves_to_search(num_leaves: int) -> int:
  # A tenth of the leaves, at least 10 (a few percent, ScaNN's usual advice, loses too much for
  # an evaluation). On 100k clustered 64-d points: ANN recall@10 0.947; a fifth gave 0.977 at
  # 3/4 of the speed. Diffuse embeddings need more leaves for the same recall (README).
  return min(num_leaves, max(math.ceil(num_leaves / 10), 10))


def default_scann_params(num_points: int, dim: int, k: int) -> dict:
  """ScaNN settings from the data size; every key can be overridden (`build_scann(params=)`).

  - algorithm: 'brute_force' below BRUTE_FORCE_BELOW points (a tree buys nothing there),
    else 'tree_ah' (k-means tree, anisotropic hashing, exact re-ordering).
  - num_leaves: round(sqrt(N)), the usual balance between centroid and leaf scoring cost.
  - num_leaves_to_search: max(ceil(num_leaves / 10), 10), at most num_leaves.
  - training_sample_size: min(N, 250,000) points for the k-means and the AH codebooks.
  - dims_per_block 2 and anisotropic_quantization_threshold 0.2 (ScaNN's recommendation).
  - reorder: max(10 k, 100) candidates re-scored exactly, at most N.
  """
  if num_points < 1 or dim < 1 or k < 1:
    raise ValueError(f"num_points, dim and k must be >= 1, got {num_points}, {dim}, {k}")
  leaves = max(1, round(math.sqrt(num_points)))
  return {"algorithm": "brute_force" if num_points < BRUTE_FORCE_BELOW else "tree_ah",
          "num_leaves": leaves, "num_leaves_to_search": _leaves_to_search(leaves),
          "training_sample_size": min(num_points, 250_000), "dims_per_block": min(2, dim),
          "anisotropic_quantization_threshold": 0.2,
          "reorder": min(num_points, max(10 * k, 100))}


def parse_scann_params(items) -> dict:
  """['num_leaves=100', 'algorithm=tree_ah'] -> typed overrides; unknown keys fail."""
  out = {}
  for item in items or ():
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--param {item!r}: expected key=value")
    if key not in SCANN_PARAM_TYPES:
      raise ValueError(f"--param {key!r}: unknown ScaNN param; known: {sorted(SCANN_PARAM_TYPES)}")
    try:
      out[key] = SCANN_PARAM_TYPES[key](value)
    except ValueError:
      raise ValueError(
          f"--param {key}={value!r}: expected {SCANN_PARAM_TYPES[key].__name__}") from None
  return out


def resolve_scann_params(num_points: int, dim: int, k: int, params: dict | None = None) -> dict:
  """default_scann_params with `params` laid over them, checked; unknown keys fail."""
  params = dict(params or {})
  unknown = sorted(set(params) - set(SCANN_PARAM_TYPES))
  if unknown:
    raise ValueError(f"unknown ScaNN param(s) {unknown}; known: {sorted(SCANN_PARAM_TYPES)}")
  out = default_scann_params(num_points, dim, k)
  leaves = params.get("num_leaves")
  if isinstance(leaves, int) and leaves >= 1 and "num_leaves_to_search" not in params:
    out["num_leaves_to_search"] = _leaves_to_search(leaves)  # follow the overridden num_leaves
  out.update(params)
  for key, kind in SCANN_PARAM_TYPES.items():
    value = out[key]
    if kind is float:
      ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
      ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
      raise ValueError(f"ScaNN param {key}: expected {kind.__name__}, got {value!r}")
    if kind is int and value < 1:
      raise ValueError(f"ScaNN param {key}: must be >= 1, got {value}")
  if out["algorithm"] not in SCANN_ALGORITHMS:
    raise ValueError(f"ScaNN param algorithm: one of {SCANN_ALGORITHMS}, got {out['algorithm']!r}")
  if out["algorithm"] == "brute_force":
    return out  # the other keys are unused
  if out["num_leaves"] > num_points:
    raise ValueError(f"ScaNN param num_leaves={out['num_leaves']} exceeds the {num_points} points")
  if out["num_leaves_to_search"] > out["num_leaves"]:
    raise ValueError(f"ScaNN param num_leaves_to_search={out['num_leaves_to_search']} exceeds "
                     f"num_leaves={out['num_leaves']}")
  if out["dims_per_block"] > dim:
    raise ValueError(f"ScaNN param dims_per_block={out['dims_per_block']} exceeds dim={dim}")
  if out["reorder"] < min(k, num_points):
    raise ValueError(f"ScaNN param reorder={out['reorder']} is below k={k}: it would return "
                     "fewer than k results")
  return out


def _scann():
  from scann.scann_ops.py import scann_ops_pybind  # heavy import: only when ScaNN is used
  return scann_ops_pybind


def build_scann(database, k: int, params: dict | None = None):
  """A ScaNN dot-product searcher over `database` [N, D] (float), returning k by default.

  `params` overrides keys of `default_scann_params` (see `resolve_scann_params`).
  """
  database = np.ascontiguousarray(_check_matrix(database, "database", "float"), np.float32)
  p = resolve_scann_params(database.shape[0], database.shape[1], k, params)
  builder = _scann().builder(database, k, "dot_product")
  if p["algorithm"] == "brute_force":
    builder = builder.score_brute_force()
  else:
    builder = builder.tree(
        num_leaves=p["num_leaves"], num_leaves_to_search=p["num_leaves_to_search"],
        training_sample_size=p["training_sample_size"]).score_ah(
            p["dims_per_block"],
            anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"]).reorder(
                p["reorder"])
  return builder.build()


def scann_search(searcher, queries, k: int):
  """(ids int64 [Q, k], scores float32 [Q, k]); id -1 and score NaN where ScaNN found fewer.

  ScaNN pads short result lists with id 0 and score NaN; 0 is a real row, so it is replaced.
  """
  queries = np.ascontiguousarray(_check_matrix(queries, "queries", "float"), np.float32)
  ids, scores = searcher.search_batched(queries, final_num_neighbors=k)
  ids = np.asarray(ids).astype(np.int64)
  scores = np.asarray(scores, np.float32)
  return np.where(np.isnan(scores), -1, ids), scores


INDEX_META = "meta.json"
INDEX_FORMAT = 1
_INDEX_META_KEYS = ("params", "metric", "num_points", "dim", "build_seconds", "ids")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _jsonable(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def save_index(searcher, directory: str, meta: dict) -> None:
  """Writes the searcher and DIR/meta.json, all or nothing.

  `meta` must hold params, metric ('dot', or 'hamming' for an index over ±1 sign vectors),
  num_points, dim, build_seconds and ids (the database record ids, in row order); the size and
  sha256 of every file are added so `load_index` can tell a damaged index. ScaNN writes into a
  temporary sibling folder, which is renamed into place when complete (a previous index is moved
  aside first and deleted after).
  """
  missing = [key for key in _INDEX_META_KEYS if key not in meta]
  if missing:
    raise ValueError(f"save_index {directory}: meta lacks {missing}")
  if len(meta["ids"]) != meta["num_points"]:
    raise ValueError(
        f"save_index {directory}: {len(meta['ids'])} ids for {meta['num_points']} points")
  if fileio.is_remote(directory):  # Built locally, then uploaded with meta.json last.
    with tempfile.TemporaryDirectory(dir=fileio.scratch_dir(directory)) as local:
      save_index(searcher, os.path.join(local, "index"), meta)
      fileio.upload_dir(os.path.join(local, "index"), directory, last=INDEX_META)
    return
  directory = os.path.abspath(directory)
  parent, name = os.path.split(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
  old = None
  try:
    # relative_path: the asset list must not name the temporary folder.
    searcher.serialize(tmp, relative_path=True)
    files = {f: {"bytes": os.path.getsize(os.path.join(tmp, f)),
                 "sha256": _sha256(os.path.join(tmp, f))} for f in sorted(os.listdir(tmp))}
    full = {**meta, "ids": [str(i) for i in meta["ids"]], "format": INDEX_FORMAT,
            "scann_version": importlib.metadata.version("scann"), "files": files}
    with open(os.path.join(tmp, INDEX_META), "w", encoding="utf-8") as f:
      json.dump(full, f, default=_jsonable, ensure_ascii=False)
      f.flush()
      os.fsync(f.fileno())
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
      os.rename(directory, os.path.join(old, name))
    os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if old and not os.path.exists(directory):  # put the previous index back
      os.rename(os.path.join(old, name), directory)
    raise
  finally:
    if old:
      shutil.rmtree(old, ignore_errors=True)


def load_index(directory: str):
  """(searcher, meta) from a folder `save_index` wrote; ValueError naming it if damaged. A
  sharded index folder (bigvis/sharded_index.py) loads as one searcher over all its shards."""
  from bigvis import sharded_index  # It loads its shards with this function.
  if sharded_index.is_sharded(directory):
    return sharded_index.load(directory)
  if fileio.is_remote(directory):  # ScaNN reads local files: a fresh copy, checked as any other.
    if not fileio.path(directory).is_dir():
      raise FileNotFoundError(
          f"{directory}: no such index folder (build one with tools/build_index.py)")
    with tempfile.TemporaryDirectory(dir=fileio.scratch_dir(directory)) as local:
      fileio.download_dir(directory, local)
      try:
        return load_index(local)
      except ValueError as e:
        raise ValueError(str(e).replace(local, directory)) from e
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"{directory}: no such index folder (build one with tools/build_index.py)")
  meta_path = os.path.join(directory, INDEX_META)
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{directory}: not a saved index ({INDEX_META} is missing)") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{meta_path}: corrupt ({e})") from e
  missing = [key for key in (*_INDEX_META_KEYS, "format", "files") if key not in meta] \
      if isinstance(meta, dict) else ["everything"]
  if missing:
    raise ValueError(f"{meta_path}: lacks {missing}")
  if meta["format"] != INDEX_FORMAT:
    raise ValueError(
        f"{meta_path}: index format {meta['format']!r}, this code reads {INDEX_FORMAT}")
  if not isinstance(meta["files"], dict) or not all(
      isinstance(w, dict) and {"bytes", "sha256"} <= w.keys() for w in meta["files"].values()):
    raise ValueError(f"{meta_path}: 'files' must map each file to its bytes and sha256")
  for f, want in meta["files"].items():
    path = os.path.join(directory, f)
    if not os.path.isfile(path):
      raise ValueError(f"{directory}: index file {f} is missing")
    if os.path.getsize(path) != want["bytes"] or _sha256(path) != want["sha256"]:
      raise ValueError(f"{directory}: index file {f} is damaged "
                       f"(size or sha256 differs from {INDEX_META})")
  if os.path.exists(os.path.join(directory, "scann_docids.pkl")):
    # ScaNN would unpickle it; our indexes never have one, so it came from elsewhere.
    raise ValueError(f"{directory}: holds scann_docids.pkl, a pickle; refusing to load it")
  try:
    searcher = _scann().load_searcher(directory)
  except Exception as e:  # ScaNN raises assorted types (RuntimeError, ValueError, ...)
    raise ValueError(
        f"{directory}: ScaNN could not load the index ({type(e).__name__}: {e})") from e
  return searcher, meta


# ---------------------------------------------------------------------------------------------
# Embeddings files

_EMBEDDING_META = {"corpus": str, "split": str, "checkpoint": str, "step": int, "task": str}
_FIELD_RE = re.compile(r"^(label|pred)/[A-Za-z0-9_.-]+$")


def _check_embeddings(arrays: dict, meta, where: str) -> None:
  def bad(field, msg):
    raise ValueError(f"{where}: field {field!r}: {msg}")

  unknown = sorted(k for k in arrays if k not in ("id", "index", "embedding", "codes", "pooled")
                   and not _FIELD_RE.match(k))
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown}")
  for key in ("id", "index", "embedding", "codes"):
    if key not in arrays:
      bad(key, "missing")
  ids = arrays["id"]
  if ids.dtype.kind != "U" or ids.ndim != 1 or len(ids) < 1:
    bad("id", f"expected a non-empty 1-D str array, got {ids.dtype} {ids.shape}")
  n = len(ids)
  if (np.char.str_len(ids) == 0).any():
    bad("id", f"row {int(np.argmin(np.char.str_len(ids)))} is empty")
  if len(np.unique(ids)) != n:
    bad("id", "ids repeat")

  def check(key, dtype, shape):
    x = arrays[key]
    if x.dtype != dtype:
      bad(key, f"expected {np.dtype(dtype)}, got {x.dtype}")
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
      want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
      bad(key, f"expected shape {want}, got {list(x.shape)}")
    return x

  index = check("index", np.int64, (n,))
  if (index < 0).any() or len(np.unique(index)) != n:
    bad("index", "record numbers must be >= 0 and distinct")
  emb = check("embedding", np.float32, (n, None))
  if emb.shape[1] < 1 or not np.isfinite(emb).all():
    bad("embedding", "must have >= 1 dims and be finite")
  norms = np.linalg.norm(emb, axis=1)
  if np.abs(norms - 1).max() > 0.02:  # loose: a bf16 model's embeddings are normalized in bf16
    bad("embedding", f"rows must be L2-normalized; row {int(np.argmax(np.abs(norms - 1)))} has "
        f"norm {norms[np.argmax(np.abs(norms - 1))]:.4f}")
  codes = check("codes", np.uint8, (n, -(-emb.shape[1] // 8)))
  if not np.array_equal(codes, binary_codes(emb)):
    bad("codes", "differ from binary_codes(embedding) (the packed sign bits)")
  if "pooled" in arrays:
    pooled = check("pooled", np.float32, (n, None))
    if not np.isfinite(pooled).all():
      bad("pooled", "has non-finite values")
  for key in arrays:
    if key.startswith("label/") and arrays[key].ndim == 2:
      if check(key, np.uint8, (n, None)).max(initial=0) > 1:
        bad(key, "multi-hot rows must be 0/1")
    elif _FIELD_RE.match(key):
      check(key, np.int32, (n,))

  if meta is not None:
    _check_meta(meta, where)


def _check_meta(meta, where: str) -> None:
  if not isinstance(meta, dict):
    raise ValueError(f"{where}: field 'meta': expected a JSON object, got {type(meta).__name__}")
  for key, kind in _EMBEDDING_META.items():
    if key not in meta:
      raise ValueError(f"{where}: field 'meta': lacks {key!r}")
    if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
      raise ValueError(f"{where}: field 'meta': {key!r} must be {kind.__name__}, got "
                       f"{meta[key]!r}")


def load_embeddings(path: str) -> dict:
  """The arrays of an embeddings .npz (see the module docstring), 'meta' parsed to a dict.

  Raises ValueError naming the file and the field when anything is missing or malformed.
  An embeddings set folder (bigvis/embedding_sets.py) loads as one file: its shards in order.
  """
  from bigvis import embedding_sets  # It reads its shards with this function.
  if fileio.path(path).is_dir():
    return embedding_sets.load_set(path)
  try:
    z = np.load(fileio.local_copy(path) if fileio.is_remote(path) else path, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
      raise ValueError(f"a single {type(z).__name__}, not an .npz archive")
    with z:
      arrays = {key: z[key] for key in z.files}
  except FileNotFoundError:
    raise FileNotFoundError(
        f"{path}: no such embeddings file (write one with tools/embed.py)") from None
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # pickles, truncated, garbage
    raise ValueError(f"{path}: not a readable embeddings .npz ({e})") from e
  if "meta" not in arrays:
    raise ValueError(f"{path}: field 'meta': missing")
  raw = arrays.pop("meta")
  if raw.shape != () or raw.dtype.kind != "U":
    raise ValueError(f"{path}: field 'meta': expected a 0-d str array, got {raw.dtype} {raw.shape}")
  try:
    meta = json.loads(str(raw[()]))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: field 'meta': not JSON ({e})") from e
  _check_embeddings(arrays, meta, path)
  return {**arrays, "meta": meta}


def head_accuracy(arrays: list, task: str) -> tuple:
  """(accuracy, examples) of classifier `task` over loaded embeddings files (pred/<task> against
  label/<task>, concatenated)."""
  pred = np.concatenate([a[f"pred/{task}"] for a in arrays])
  truth = np.concatenate([a[f"label/{task}"] for a in arrays])
  return float(np.mean(pred == truth)), int(len(pred))


class EmbeddingsWriter:
  """Writes an embeddings .npz batch by batch, in memory that does not grow with the row count.

  Each field's rows are appended to a raw file in a temporary folder beside `path`; `close(meta)`
  streams each into a .npy member of the .npz (stored, zip64) and renames the file into place, so
  a reader never sees a partial file. Ids are kept one JSON string per line and widened to the
  longest at the end. Every batch is checked as a whole file would be; ids distinct across batches
  are checked by their hashes (8 bytes a row).
  """

  def __init__(self, path: str):
    self.path = path
    self._dir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.parts-",
                                 dir=fileio.scratch_dir(path))
    self._layout = None  # field -> (dtype, row shape), fixed by the first batch
    self._rows, self._id_len, self._hashes = 0, 1, []

  def _file(self, key: str) -> str:
    return os.path.join(self._dir, key.replace("/", "~"))

  def append(self, arrays: dict) -> None:
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    _check_embeddings(arrays, None, self.path)
    layout = {k: (v.dtype, v.shape[1:]) for k, v in arrays.items() if k != "id"}
    if self._layout is None:
      self._layout = layout
    elif layout != self._layout:
      raise ValueError(f"{self.path}: a batch with fields {layout} after {self._layout}")
    for key, x in arrays.items():
      with open(self._file(key), "ab") as f:
        if key == "id":
          f.write("".join(json.dumps(str(i)) + "\n" for i in x).encode())
        else:
          f.write(np.ascontiguousarray(x).tobytes())
    self._id_len = max(self._id_len, int(np.char.str_len(arrays["id"]).max()))
    self._hashes.append(np.array([hash(str(i)) for i in arrays["id"]], np.int64))
    self._rows += len(arrays["id"])

  def abort(self) -> None:
    shutil.rmtree(self._dir, ignore_errors=True)

  def close(self, meta: dict) -> None:
    try:
      if not self._rows:
        raise ValueError(f"{self.path}: no rows to write")
      if len(np.unique(np.concatenate(self._hashes))) != self._rows:
        raise ValueError(f"{self.path}: field 'id': ids repeat")
      _check_meta(meta, self.path)
      tmp = os.path.join(self._dir, "out.npz")
      with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, (dtype, row_shape) in self._layout.items():
          with z.open(f"{key}.npy", "w", force_zip64=True) as f, open(self._file(key), "rb") as raw:
            _npy_header(f, dtype, (self._rows, *row_shape))
            shutil.copyfileobj(raw, f, 16 << 20)
        with z.open("id.npy", "w", force_zip64=True) as f, open(self._file("id"), "rb") as raw:
          dtype = np.dtype(f"<U{self._id_len}")
          _npy_header(f, dtype, (self._rows,))
          for lines in iter(lambda: raw.readlines(16 << 20), []):
            f.write(np.array([json.loads(line) for line in lines], dtype).tobytes())
        with z.open("meta.npy", "w") as f:
          np.lib.format.write_array(f, np.array(json.dumps(meta, default=_jsonable,
                                                           ensure_ascii=False)))
      with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
      fileio.publish(tmp, self.path)  # A rename, or one upload to a bucket.
    finally:
      self.abort()


def _npy_header(f, dtype, shape) -> None:
  np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                           "fortran_order": False, "shape": tuple(shape)})


def save_embeddings(path: str, arrays: dict, meta: dict) -> None:
  """Checks and writes a whole embeddings .npz atomically (an EmbeddingsWriter of one batch)."""
  if "meta" in arrays:
    raise ValueError(f"{path}: pass meta separately, not as an array")
  _check_embeddings({k: np.asarray(v) for k, v in arrays.items()}, meta, path)
  writer = EmbeddingsWriter(path)
  writer.append(arrays)
  writer.close(meta)


# ---------------------------------------------------------------------------------------------
# The whole evaluation


def _timed(fn, repeats: int):
  """fn's result and the seconds of `repeats` timed calls after one untimed warm-up.

  fn(progress) shows a progress bar when progress is True: only in the warm-up.
  """
  result = fn(True)
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn(False)
    seconds.append(time.perf_counter() - start)
  return result, seconds


def _index_for(index, vectors, ids, k, metric, params, name):
  """(searcher, info) from a saved index folder (checked against the data) or built here."""
  if index is None:
    resolved = resolve_scann_params(len(vectors), vectors.shape[1], k, params)
    start = time.perf_counter()
    searcher = build_scann(vectors, k, resolved)
    return searcher, {"index": "built", "params": resolved,
                      "build_seconds": time.perf_counter() - start}
  searcher, meta = load_index(index) if isinstance(index, (str, os.PathLike)) else index
  where = index if isinstance(index, (str, os.PathLike)) else f"{name} index"
  if meta["metric"] != metric:
    raise ValueError(f"{where}: a {meta['metric']!r} index, but the {name} search needs {metric!r}"
                     + (" (build it with --binary)" if metric == "hamming" else ""))
  if meta["dim"] != vectors.shape[1] or list(meta["ids"]) != [str(i) for i in ids]:
    raise ValueError(
        f"{where}: built on other data ({meta['num_points']} points, dim {meta['dim']}) than "
        f"this database ({len(ids)} points, dim {vectors.shape[1]}, ids in order)")
  if meta["params"].get("algorithm") == "tree_ah" and meta["params"].get("reorder", k) < k:
    raise ValueError(f"{where}: re-orders {meta['params']['reorder']} candidates, fewer than "
                     f"k={k}; rebuild it with a larger --k or --param reorder=")
  return searcher, {"index": str(where), "params": meta["params"],
                    "build_seconds": meta["build_seconds"]}


def evaluate(queries: dict, database: dict, label: str, ks=(1, 10), index=None, binary_index=None,
             *, params: dict | None = None, repeats: int = 3, return_neighbors: bool = False):
  """Float and binary retrieval, exact and ScaNN, scored against `label/<label>`.

  queries, database: dicts as `load_embeddings` returns. index / binary_index: None (build with
  default params, overridden by `params`), an index folder, or (searcher, meta) as `load_index`
  returns; the binary index searches ±1 sign vectors of the codes. Returns a JSON-able report:
  {'label', 'ks', 'num_queries', 'num_database', 'dim', 'repeats', 'versions',
   'methods': {float_exact, float_scann, binary_exact, binary_scann: {recall@k, precision@k,
   map@k, queries, queries_without_relevant, queries_per_sec, search_seconds, [ann_recall@k,
   ann_recall_ties@k, index, params, build_seconds]}}}.
  With return_neighbors, also {method: ids [Q, max(ks)]}.
  """
  field = f"label/{label}"
  for side, d in (("queries", queries), ("database", database)):
    if field not in d:
      have = sorted(k[len("label/"):] for k in d if k.startswith("label/"))
      raise ValueError(f"{side}: no label {label!r}; the file has labels {have}")
  ks = sorted({int(k) for k in ks})
  if not ks or ks[0] < 1:
    raise ValueError(f"ks must be ints >= 1, got {ks}")
  k = ks[-1]
  n, dim = database["embedding"].shape
  if queries["embedding"].shape[1] != dim:
    raise ValueError(f"queries have dim {queries['embedding'].shape[1]}, the database {dim}")
  if k > n:
    raise ValueError(f"k={k} is larger than the database ({n} items)")
  q_labels, db_labels = queries[field], database[field]
  q_emb, db_emb = queries["embedding"], database["embedding"]
  q_codes, db_codes = queries["codes"], database["codes"]
  q_signs, db_signs = codes_to_signs(q_codes, dim), codes_to_signs(db_codes, dim)

  def true_costs(ids, metric):
    """Exact cost (-dot or Hamming) of each retrieved id, inf where none was found."""
    out = np.full(ids.shape, np.inf)
    for start in range(0, len(ids), 1024):  # blocks: the gathered rows are [block, k, D]
      rows, i = slice(start, start + 1024), np.clip(ids[start:start + 1024], 0, None)
      if metric == "dot":
        cost = -np.einsum("qd,qkd->qk", q_emb[rows], db_emb[i])
      else:
        cost = np.bitwise_count(q_codes[rows, None, :] ^ db_codes[i]).sum(-1)
      out[rows] = np.where(ids[rows] >= 0, cost, np.inf)
    return out

  methods, neighbors = {}, {}
  for kind, metric, qv, dbv, q_exact, db_exact, idx in (
      ("float", "dot", q_emb, db_emb, q_emb, db_emb, index),
      ("binary", "hamming", q_signs, db_signs, q_codes, db_codes, binary_index)):
    (ids, scores), seconds = _timed(
        lambda progress: exact_search(q_exact, db_exact, k, metric, progress=progress), repeats)
    exact_cost = -scores if metric == "dot" else scores
    methods[f"{kind}_exact"] = {**retrieval_metrics(ids, q_labels, db_labels, ks),
                                "queries_per_sec": len(qv) / statistics.median(seconds),
                                "search_seconds": seconds}
    neighbors[f"{kind}_exact"] = ids

    searcher, info = _index_for(idx, dbv, database["id"], k, metric, params, kind)
    (s_ids, _), seconds = _timed(lambda _: scann_search(searcher, qv, k), repeats)
    m = {**retrieval_metrics(s_ids, q_labels, db_labels, ks),
         "queries_per_sec": len(qv) / statistics.median(seconds), "search_seconds": seconds}
    s_cost = true_costs(s_ids, metric)
    for kk in ks:
      m[f"ann_recall@{kk}"] = ann_recall(s_ids, ids, kk)
      # Float sums differ in the last bits between BLAS and einsum: 1e-5 absorbs that.
      m[f"ann_recall_ties@{kk}"] = ann_recall_ties(s_cost, exact_cost, kk,
                                                   atol=1e-5 if metric == "dot" else 0)
    methods[f"{kind}_scann"] = {**m, **info}
    neighbors[f"{kind}_scann"] = s_ids

  report = {"label": label, "ks": ks, "num_queries": int(len(q_emb)), "num_database": int(n),
            "dim": int(dim), "repeats": repeats,
            "versions": {p: importlib.metadata.version(p) for p in ("scann", "numpy")},
            "methods": methods}
  return (report, neighbors) if return_neighbors else report
