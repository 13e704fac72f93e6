"""The output folder: a labelled copy of the corpus plus the mining artifacts, all or nothing.

    out/{split}-NNNNN-of-NNNNN.array_record   input records + labels mined_labels,
                                              mined_label_confidence, mined_clusters
    out/dataset_card.json, DATASET_CARD.md    input card + label_names for the new fields
    out/vocab.json      ranked labels: df, mean confidence; first num_labels = mined_labels
    out/clusters.json   clusters (id, name, members, df_sum) and label -> cluster id
    out/stats.json      config, text issues, df histogram, long tail and coverage

Several corpora mined jointly (one vocabulary, one set of clusters, fitted on all their fit
splits) give one such folder each, out/<corpus folder name>/, whose cards name the same classes,
so the trainer can mix them (`config.input.sources`).

Everything is written under a sibling staging folder and renamed into place at
the end, so a failed run leaves the previous output as it was. No file holds a
time, host or runner name: the same input and config give the same bytes.
Training reads it like any corpus: input.data_dir=out and
`config.task('multilabel', 'mined_clusters')` (num_classes from the card).
"""

from __future__ import annotations

import os
import shutil

from bigvis.corpora import writer
from bigvis.labels import vocab as vocab_lib
from bigvis.labels.cluster import Clusters
from bigvis.labels.config import MinerConfig, dumps
from bigvis.labels.vocab import Vocab

ARTIFACTS = ("vocab.json", "clusters.json", "stats.json")


def output_names(corpora: list[str], joint: bool) -> list[str]:
  """Each corpus's folder under out: '' (out itself) for one corpus, else its folder name."""
  if not joint:
    return [""]
  names = [os.path.basename(os.path.normpath(c)) for c in corpora]
  if shared := sorted({n for n in names if names.count(n) > 1}):
    raise ValueError(f"corpora {[c for c, n in zip(corpora, names) if n in shared]} share a "
                     "folder name; mined jointly, each is written to out/<its folder name>")
  return names


def staging_dir(out: str, corpora: list[str], names: list[str]) -> str:
  """A fresh staging folder beside `out`, with one (empty) subfolder per output name."""
  out = os.path.abspath(out)
  for corpus in corpora:
    if os.path.realpath(out) == os.path.realpath(corpus):
      raise ValueError(f"--out {out} is the input corpus; write the labelled copy elsewhere")
  staging = f"{out}.incoming-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  for name in names:
    os.makedirs(os.path.join(staging, name), exist_ok=True)
  return staging


def commit(staging: str, out: str) -> None:
  out = os.path.abspath(out)
  if os.path.exists(out):
    old = f"{out}.old-{os.getpid()}"
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old)
  else:
    os.replace(staging, out)


def _share(n: int, total: int) -> float:
  return round(n / total, 4) if total else 0.0


def build_stats(cfg: MinerConfig, vocab: Vocab, clusters: Clusters, pass1: dict,
                pass3: dict) -> dict:
  fit_n = pass3.get("fit/records", 0)
  n_raw = vocab.num_labels
  cluster_df = [int(x) for x in pass3["vec/cluster_df_fit"]] if "vec/cluster_df_fit" in pass3 else []
  return {
      "config": cfg.to_json(),
      "records": {k.split("/", 1)[1]: v for k, v in sorted(pass3.items()) if k.startswith("records/")},
      "text_issues": {k.split("/", 1)[1]: v for k, v in sorted(pass3.items())
                      if k.startswith("issues/")},
      "fit": {"splits": list(cfg.fit_splits), "records": fit_n,
              "distinct_candidates": sum(pass1["df_hist"].values()),
              "candidate_df_histogram": vocab_lib.histogram(pass1["df_hist"]),
              "text_issues": dict(sorted(pass1["issues"].items()))},
      "vocabulary": {"min_count": cfg.min_count, "ranked_labels": len(vocab.labels),
                     "mined_labels": n_raw, "clustered_labels": len(vocab.labels)},
      "labels": {**vocab_lib.long_tail(vocab.df[:n_raw]),
                 "coverage": _share(fit_n - pass3.get("fit/no_label", 0), fit_n),
                 "uncovered": _share(pass3.get("fit/no_label", 0), fit_n),
                 "per_record": _share(pass3.get("fit/label_assignments", 0), fit_n)},
      "clustered_label_vocab": vocab_lib.long_tail(vocab.df),
      "clusters": {**vocab_lib.long_tail([d for d in cluster_df if d]),
                   "num_clusters": len(clusters.names),
                   "coverage": _share(fit_n - pass3.get("fit/no_cluster", 0), fit_n),
                   "uncovered": _share(pass3.get("fit/no_cluster", 0), fit_n),
                   "per_record": _share(pass3.get("fit/cluster_assignments", 0), fit_n)},
      "cluster_df_fit": cluster_df,  # records per cluster id in the fit splits
  }


_EMBEDDINGS = {"cooccurrence": "PPMI-SVD of their co-occurrence",
               "text_model": "a text model (all-MiniLM-L6-v2)",
               "both": "PPMI-SVD of their co-occurrence and a text model (all-MiniLM-L6-v2)"}


def _card(corpus: str, staging: str, cfg: MinerConfig, vocab: Vocab, clusters: Clusters,
          pass3: dict, stats: dict, jointly_with: list[str]) -> dict:
  card = writer.read_card(corpus)
  card["label_names"] = {**card.get("label_names", {}),
                         "mined_labels": list(vocab.labels[:vocab.num_labels]),
                         "mined_clusters": list(clusters.names)}
  card["label_docs"] = {**card.get("label_docs", {}),
                        "mined_labels": "weak labels mined from the texts (bigvis.labels), "
                                        "ids into vocab.json",
                        "mined_label_confidence": "per-mille confidence of each mined_labels id",
                        "mined_clusters": f"k-means clusters of mined labels embedded by "
                                          f"{_EMBEDDINGS[cfg.label_embeddings]}, ids into "
                                          f"clusters.json"}
  records_total = sum(stats["records"].values())
  seen = {"mined_labels": int((pass3["vec/label_df_all"] > 0).sum()),
          "mined_label_confidence": None,
          "mined_clusters": int((pass3["vec/cluster_df_all"] > 0).sum())}
  labels = card.setdefault("fields", {}).setdefault("labels", {})
  for field, n_seen in seen.items():
    names = card["label_names"].get(field)
    labels[field] = {"kind": "list[int]", "records": records_total,
                     "classes_seen": n_seen,  # None: confidences are values, not classes
                     "num_classes": len(names) if names is not None else None}
  for split, info in card.get("splits", {}).items():
    if split in stats["records"]:
      info["records"] = stats["records"][split]
      info["bytes"] = sum(os.path.getsize(os.path.join(staging, f)) for f in os.listdir(staging)
                          if f.startswith(f"{split}-"))
  card["num_records"] = records_total
  card["mined"] = {"from_corpus": corpus, "config": cfg.to_json(), "artifacts": list(ARTIFACTS),
                   "summary": {k: stats[k] for k in ("vocabulary",)},
                   **({"jointly_with": jointly_with} if jointly_with else {})}
  return card


def write(staging: str, corpus: str, cfg: MinerConfig, vocab: Vocab, clusters: Clusters,
          pass1: dict, pass3: dict, jointly_with: list[str] = ()) -> dict:
  """Writes the JSON artifacts and the card into `staging`; returns stats.json's content.

  pass3: this corpus's labelling stats; pass1 (and so the vocabulary's own counts): those of
  all the corpora mined jointly, the others listed in `jointly_with`.
  """
  stats = build_stats(cfg, vocab, clusters, pass1, pass3)
  if jointly_with:
    stats["fit"]["jointly_with"] = list(jointly_with)
  files = {"vocab.json": vocab.to_json(), "clusters.json": clusters.to_json(vocab),
           "stats.json": stats}
  for name, obj in files.items():
    with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
      f.write(dumps(obj))
  card = _card(corpus, staging, cfg, vocab, clusters, pass3, stats, list(jointly_with))
  with open(os.path.join(staging, writer.CARD_JSON), "w", encoding="utf-8") as f:
    f.write(dumps(card))
  with open(os.path.join(staging, writer.CARD_MD), "w", encoding="utf-8") as f:
    f.write(writer._render_md(card))  # the corpus writer's renderer: one card format
  return stats
