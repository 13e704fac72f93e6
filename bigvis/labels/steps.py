"""The steps both runners share: read records, per-record counts/ids/targets, per-shard labelling.

Every aggregate is an integer sum (label df, confidence permille, pair counts,
stat counters), so partial results merge exactly in any order and the local and
Beam runners produce identical artifacts.

Pass 3 maps each input shard to an output shard of the same name and order, so
shard layout, record order and ids carry over and shards label in parallel.
Records that fail strict decoding because of text that is not valid UTF-8 are
repaired by dropping those text fields (counted); records that cannot be
repaired are dropped (counted), never written.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterator

import msgpack
import numpy as np
from array_record.python import array_record_module

from bigvis import records
from bigvis.labels import text
from bigvis.labels.cluster import Clusters
from bigvis.labels.config import MinerConfig
from bigvis.labels.vocab import Vocab

FIELDS = ("mined_labels", "mined_label_confidence", "mined_clusters")


@dataclasses.dataclass(frozen=True)
class Chunk:
  path: str
  begin: int
  end: int


split_of = records.split_of_shard


def all_shards(corpus: str) -> list[str]:
  return records.shard_paths(corpus)


def fit_chunks(corpus: str, cfg: MinerConfig, chunk_size: int) -> list[Chunk]:
  """Record ranges of the fit splits' shards, the unit of work of passes 1 and 2."""
  out = []
  for path in all_shards(corpus):
    if split_of(path) not in cfg.fit_splits:
      continue
    reader = array_record_module.ArrayRecordReader(path)
    n = reader.num_records()
    reader.close()
    out.extend(Chunk(path, b, min(b + chunk_size, n)) for b in range(0, n, chunk_size))
  if not out:
    raise ValueError(f"{corpus}: no records in fit splits {cfg.fit_splits}")
  return out


def decode(raw: bytes, where: str) -> tuple[records.Record | None, Counter]:
  """A record, repaired if only its text is broken; None (counted) if beyond repair."""
  try:
    return records.decode(raw, where), Counter()
  except records.RecordError:
    pass
  try:
    obj = msgpack.unpackb(raw, raw=False, unicode_errors="surrogateescape", strict_map_key=True)
    texts = obj["texts"]
    good = {k: v for k, v in texts.items()
            if text.as_text(k) is not None and text.as_text(v) is not None}
    rec = records.Record(id=obj["id"], image=obj["image"], texts=good, labels=obj["labels"])
    records.validate(rec, where)
    if text.as_text(rec.id) is None:
      raise records.RecordError("id is not valid UTF-8")
    return rec, Counter(fields_invalid_text=len(texts) - len(good))
  except Exception:  # anything else broken: not a record we can write back
    return None, Counter(records_invalid=1)


def read_chunk(chunk: Chunk) -> Iterator[tuple[records.Record | None, Counter]]:
  if chunk.end <= chunk.begin:
    return
  reader = array_record_module.ArrayRecordReader(chunk.path)
  try:
    raws = reader.read(chunk.begin, chunk.end)
  finally:
    reader.close()
  for n, raw in enumerate(raws, chunk.begin):
    yield decode(raw, f"{chunk.path} record {n}")


def mine(rec: records.Record | None, issues: Counter, cfg: MinerConfig) -> tuple[dict, Counter]:
  """Candidates of one (possibly dropped) record and all its issue counts."""
  if rec is None:
    return {}, issues
  cands, more = text.candidates(rec.texts, cfg)
  return cands, issues + more + Counter(records_read=1)


# ---- pass 1: document frequencies ----

def count_items(cands: dict, issues: Counter) -> Iterator[tuple[tuple[str, str], tuple[int, int]]]:
  """((kind, name), (count, confidence)) items whose sums are pass 1's result."""
  for label, conf in cands.items():
    yield ("label", label), (1, conf)
  for name, n in issues.items():
    yield ("issue", name), (n, 0)


def count_chunk(chunk: Chunk, cfg: MinerConfig) -> dict:
  totals: dict = {}
  for rec, issues in read_chunk(chunk):
    for key, (a, b) in count_items(*mine(rec, issues, cfg)):
      t = totals.get(key)
      totals[key] = (a, b) if t is None else (t[0] + a, t[1] + b)
  return totals


# ---- pass 2: co-occurrence ----

def fit_ids(cands: dict, vocab: Vocab) -> list[int]:
  """Sorted ids of the record's labels in the (cluster) vocabulary."""
  index = vocab.index
  return sorted(index[l] for l in cands if l in index)


def ids_chunk(chunk: Chunk, cfg: MinerConfig, vocab: Vocab) -> list[list[int]]:
  return [fit_ids(mine(rec, issues, cfg)[0], vocab) for rec, issues in read_chunk(chunk)]


# ---- pass 3: targets ----

def targets(cands: dict, vocab: Vocab, clusters: Clusters) -> dict[str, list[int]]:
  ids = fit_ids(cands, vocab)
  raw = [i for i in ids if i < vocab.num_labels]
  return {"mined_labels": raw,
          "mined_label_confidence": [cands[vocab.labels[i]] for i in raw],
          "mined_clusters": sorted({clusters.assign[i] for i in ids})}


def label_shard(path: str, out_dir: str, cfg: MinerConfig, vocab: Vocab,
                clusters: Clusters) -> dict:
  """Writes `out_dir/<same name>` with the mined fields added; returns its integer stats."""
  split = split_of(path)
  fit = split in cfg.fit_splits
  reader = array_record_module.ArrayRecordReader(path)
  try:
    n = reader.num_records()
  finally:
    reader.close()
  stats: dict = {"vec/label_df_all": np.zeros(vocab.num_labels, np.int64),
                 "vec/cluster_df_all": np.zeros(len(clusters.names), np.int64)}
  if fit:
    stats["vec/cluster_df_fit"] = np.zeros(len(clusters.names), np.int64)
  out_path = os.path.join(out_dir, os.path.basename(path))
  writer = array_record_module.ArrayRecordWriter(out_path, records.WRITER_OPTIONS)
  try:
    for rec, issues in read_chunk(Chunk(path, 0, n)):
      cands, issues = mine(rec, issues, cfg)
      for name, v in issues.items():
        stats[f"issues/{name}"] = stats.get(f"issues/{name}", 0) + v
      if rec is None:
        continue
      t = targets(cands, vocab, clusters)
      labels = {k: v for k, v in rec.labels.items() if k not in FIELDS}
      labels.update(t)
      writer.write(records.encode(dataclasses.replace(rec, labels=labels), out_path))
      stats[f"records/{split}"] = stats.get(f"records/{split}", 0) + 1
      stats["vec/label_df_all"][t["mined_labels"]] += 1
      stats["vec/cluster_df_all"][t["mined_clusters"]] += 1
      if fit:
        stats["vec/cluster_df_fit"][t["mined_clusters"]] += 1
        for key, value in (("records", 1), ("no_label", not t["mined_labels"]),
                           ("no_cluster", not t["mined_clusters"]),
                           ("label_assignments", len(t["mined_labels"])),
                           ("cluster_assignments", len(t["mined_clusters"]))):
          stats[f"fit/{key}"] = stats.get(f"fit/{key}", 0) + int(value)
  finally:
    writer.close()
  return stats


def merge_stats(parts) -> dict:
  """Sum of stat dicts (ints and int arrays), key by key."""
  out: dict = {}
  for part in parts:
    for k, v in part.items():
      out[k] = v if k not in out else out[k] + v
  return out
