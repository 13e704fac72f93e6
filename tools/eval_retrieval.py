"""Retrieval evaluation: float and binary embeddings, exact search and ScaNN, against labels.

  python tools/eval_retrieval.py --queries runs/finetune/q.npz --database runs/finetune/db.npz \\
      --label identity --out runs/finetune/retrieval
  python tools/eval_retrieval.py ... --index runs/finetune/index \\
      --binary_index runs/finetune/index_bin --ks 1,5,10 --examples 8

Four methods: float exact (dot product), float ScaNN, binary exact (Hamming over the packed
codes), binary ScaNN (dot product over ±1 sign vectors: the same ranking). Indexes come from
tools/build_index.py (--index, --binary_index) or are built here with default params
(--param overrides them). Writes to --out:

  retrieval.json   every figure (bigvis.retrieval.evaluate), the command line, versions, counts
  retrieval.md     the table: R@k, P@k, mAP@k, ANN recall vs exact, queries/s per method
  examples.png     --examples queries (seeded choice) and their top 5 float-ScaNN results,
                   green border = same label, red = not
"""

import argparse
import io
import json
import os
import shlex
import sys
import textwrap


import numpy as np
from tqdm import tqdm

from bigvis import fileio, records, retrieval
from bigvis.corpora import read_card
from bigvis.fileio import write_text_atomic

METHODS = {"float_exact": "float exact", "float_scann": "float ScaNN",
           "binary_exact": "binary exact (Hamming)", "binary_scann": "binary ScaNN"}
RESULTS_SHOWN = 5


def _fmt(x, digits=3):
  return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _nan_to_none(x):
  """JSON has no NaN: a metric over no queries is written as null."""
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_nan_to_none(v) for v in x]
  return None if isinstance(x, float) and np.isnan(x) else x


def markdown(report: dict) -> str:
  ks, k = report["ks"], report["ks"][-1]
  m0 = report["methods"]["float_exact"]
  lines = [f"# Retrieval: label `{report['label']}`", "",
           f"{report['num_queries']} queries ({m0['queries_without_relevant']} without a relevant "
           f"item, left out), {report['num_database']} database items, dim {report['dim']}. "
           f"Queries/s: median of {report['repeats']} timed runs after a warm-up.", ""]
  head = ([f"R@{x}" for x in ks] + [f"P@{x}" for x in ks] + [f"mAP@{x}" for x in ks]
          + [f"ANN recall@{k} vs exact", f"ANN recall@{k}, ties", "queries/s"])
  lines += ["| method | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]
  for key, name in METHODS.items():
    m = report["methods"][key]
    cells = ([_fmt(m[f"recall@{x}"]) for x in ks] + [_fmt(m[f"precision@{x}"]) for x in ks]
             + [_fmt(m[f"map@{x}"]) for x in ks]
             + [_fmt(m.get(f"ann_recall@{k}")) if "scann" in key else "(reference)",
                _fmt(m.get(f"ann_recall_ties@{k}")) if "scann" in key else "",
                f"{m['queries_per_sec']:,.0f}"])
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("ANN recall@k: share of the exact top k (by id) that ScaNN returned; 'ties' also "
               "counts a result as good as the exact k-th one (Hamming distances tie often).")
  for key in ("float_scann", "binary_scann"):
    m = report["methods"][key]
    built = (f"built here in {m['build_seconds']:.2f} s" if m["index"] == "built"
             else f"loaded from `{m['index']}` (built in {m['build_seconds']:.2f} s)")
    params = m["params"]
    if params["algorithm"] == "brute_force":  # the tree keys are unused
      params = {"algorithm": "brute_force"}
    lines.append(f"- {METHODS[key]}: {built}; params `{json.dumps(params)}`")
  return "\n".join(lines) + "\n"


class _Images:
  """Image bytes and label names of an embeddings file's records, from its corpus."""

  def __init__(self, emb: dict, label: str, where: str):
    import grain  # here: only the examples need the corpus
    meta = emb["meta"]
    corpus = meta["corpus"]
    if not fileio.is_remote(corpus) and not os.path.isabs(corpus) and not os.path.isdir(corpus):
      corpus = os.path.join(os.path.dirname(os.path.abspath(where)), corpus)  # beside the npz
    self.where = f"{corpus} split {meta['split']!r}"
    self.source = grain.sources.ArrayRecordDataSource(records.shard_paths(corpus, meta["split"]))
    self.emb = emb
    try:
      self.names = read_card(corpus).get("label_names", {}).get(label)
    except (OSError, ValueError):
      self.names = None  # no card: captions show the class number

  def image(self, row: int) -> bytes:
    index = int(self.emb["index"][row])
    if index >= len(self.source):
      raise ValueError(f"{self.where}: has {len(self.source)} records, the embeddings name "
                       f"record {index}")
    rec = records.decode(self.source[index], f"{self.where} record {index}")
    if rec.id != self.emb["id"][row]:
      raise ValueError(f"{self.where} record {index}: id {rec.id!r}, but the embeddings say "
                       f"{self.emb['id'][row]!r}: the file was made from another corpus")
    return rec.image

  def name(self, label: int) -> str:
    if self.names is not None and 0 <= label < len(self.names):
      return str(self.names[label])
    return str(label)


def _caption(text: str, width: int = 26) -> str:
  """At most two short lines of printable text: class names may hold emoji or other glyphs the
  plot font lacks (drawn as boxes), and long names would run into the next panel."""
  text = "".join(ch for ch in text if ch.isascii() and ch.isprintable())
  return "\n".join(textwrap.wrap(text, width, max_lines=2, placeholder="..."))


def examples_figure(path, queries, database, q_path, db_path, label, ids, rows) -> list[dict]:
  """Writes `path`: each chosen query, then its top results; borders green if relevant.

  Returns what it drew: [{"query": id, "label": name, "results": [{"id", "label", "relevant"}]}].
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from PIL import Image

  field = f"label/{label}"
  q_img, db_img = _Images(queries, label, q_path), _Images(database, label, db_path)
  cols = 1 + min(RESULTS_SHOWN, ids.shape[1])
  fig, axes = plt.subplots(len(rows), cols, figsize=(1.7 * cols, 1.9 * len(rows)), squeeze=False)
  q_labels, db_labels = queries[field], database[field]

  def show(ax, raw, title, color):
    with Image.open(io.BytesIO(raw)) as im:
      rgba = np.asarray(im.convert("RGBA"), np.float32) / 255
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # transparent -> white
    ax.imshow(rgb)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_color(color)
      spine.set_linewidth(4)
    ax.set_title(_caption(title), fontsize=6)

  drawn = []
  for r, q in enumerate(tqdm(rows, desc="examples", disable=not sys.stderr.isatty())):
    name = q_img.name(int(q_labels[q]))
    show(axes[r, 0], q_img.image(q), f"query: {name}", "black")
    drawn.append({"query": str(queries["id"][q]), "label": name, "results": []})
    for c in range(1, cols):
      ax, hit = axes[r, c], int(ids[q, c - 1])
      if hit < 0:
        ax.axis("off")
        continue
      relevant = bool(db_labels[hit] == q_labels[q] and q_labels[q] >= 0)
      name = db_img.name(int(db_labels[hit]))
      show(ax, db_img.image(hit), f"{c}. {name}", "tab:green" if relevant else "tab:red")
      drawn[-1]["results"].append({"id": str(database["id"][hit]), "label": name,
                                   "relevant": relevant})
  fig.suptitle(f"Top {cols - 1} float-ScaNN results by '{label}' "
               "(green: same label, red: not)", fontsize=9)
  fig.tight_layout()
  try:
    with fileio.atomic_file(path) as f:  # local or in a bucket
      fig.savefig(f, dpi=100, format="png")
  finally:
    plt.close(fig)
  return drawn


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--queries", required=True, help="embeddings .npz of the query split")
  p.add_argument("--database", required=True, help="embeddings .npz of the index split")
  p.add_argument("--label", required=True, help="ground-truth field: relevant = same label")
  p.add_argument("--ks", default="1,10", help="comma-separated cut-offs")
  p.add_argument("--index", default=None, help="float ScaNN index folder (default: build here)")
  p.add_argument("--binary_index", default=None,
                 help="binary ScaNN index folder, build_index.py --binary (default: build here)")
  p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                 help="ScaNN param for indexes built here (repeatable)")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--examples", type=int, default=8, help="queries in examples.png (0: none)")
  p.add_argument("--seed", type=int, default=0, help="seed of the example choice")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per method")
  a = p.parse_args(argv)

  try:
    try:
      ks = [int(k) for k in a.ks.split(",") if k.strip()]
    except ValueError:
      raise ValueError(f"--ks {a.ks!r}: expected comma-separated ints, e.g. 1,10") from None
    if a.repeats < 1 or a.examples < 0:
      raise ValueError("--repeats must be >= 1 and --examples >= 0")
    queries = retrieval.load_embeddings(a.queries)
    database = retrieval.load_embeddings(a.database)
    report, neighbors = retrieval.evaluate(
        queries, database, a.label, ks, index=a.index, binary_index=a.binary_index,
        params=retrieval.parse_scann_params(a.param), repeats=a.repeats, return_neighbors=True)
    command = ["tools/eval_retrieval.py", *(sys.argv[1:] if argv is None else argv)]
    report = {"command": shlex.join(command),
              "queries_file": fileio.absolute(a.queries),
              "database_file": fileio.absolute(a.database),
              "queries_meta": queries["meta"], "database_meta": database["meta"], **report}
    fileio.path(a.out).mkdir(parents=True, exist_ok=True)
    write_json = lambda: write_text_atomic(  # noqa: E731
        fileio.join(a.out, "retrieval.json"),
        json.dumps(_nan_to_none(report), indent=1, ensure_ascii=False) + "\n")
    write_json()  # the figures are safe before the examples need the corpus
    write_text_atomic(fileio.join(a.out, "retrieval.md"), markdown(report))
    if a.examples:
      # Queries that can succeed (a relevant item exists), a seeded choice, in file order.
      field = f"label/{a.label}"
      eligible = np.flatnonzero(retrieval.num_relevant(queries[field], database[field]) > 0)
      rng = np.random.default_rng(a.seed)
      rows = np.sort(rng.choice(eligible, size=min(a.examples, len(eligible)), replace=False))
      if len(rows):
        try:
          report["examples"] = examples_figure(
              fileio.join(a.out, "examples.png"), queries, database, a.queries, a.database,
              a.label, neighbors["float_scann"], rows)
        except (OSError, ValueError) as e:
          raise ValueError(f"examples.png (the figures are written; --examples 0 skips it): {e}")
        write_json()
  except (OSError, ValueError) as e:  # bad input, RecordError included: the message, no traceback
    sys.exit(f"eval_retrieval.py: error: {e}")
  print(markdown(report))


if __name__ == "__main__":
  main()
