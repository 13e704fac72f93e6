"""Plots of a mined corpus: the long tail before/after clustering, and example clusters.

CJK and Thai labels need a font that has them (Debian fonts-noto-cjk); without one they
draw as boxes.

    plots.write(out_dir) -> [paths]   # out_dir/plots/label_frequency.png, clusters.png
"""

from __future__ import annotations

import io
import json
import os
import textwrap
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bigvis import records  # noqa: E402
from bigvis.labels import steps  # noqa: E402

warnings.filterwarnings("ignore", message="Glyph .* missing")  # CJK labels in a Latin font
# Font fallback for CJK/Thai labels where such fonts are installed (else they draw as boxes).
_INSTALLED = {f.name for f in matplotlib.font_manager.fontManager.ttflist}
_FONTS = ["DejaVu Sans"] + [f for f in ("Noto Sans CJK JP", "Noto Sans Thai") if f in _INSTALLED]


def _load(out_dir: str, name: str) -> dict:
  with open(os.path.join(out_dir, name), encoding="utf-8") as f:
    return json.load(f)


def frequency(out_dir: str, path: str) -> None:
  vocab, clusters = _load(out_dir, "vocab.json"), _load(out_dir, "clusters.json")
  stats = _load(out_dir, "stats.json")
  df = np.array([l["df"] for l in vocab["labels"]])
  cdf = np.sort(np.array([c["df"] for c in _cluster_df(out_dir, clusters)]))[::-1]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  if df.size:
    ax.loglog(np.arange(1, df.size + 1), df, label=f"labels ({df.size}, df >= "
              f"{stats['vocabulary']['min_count']})")
    n = vocab["num_labels"]
    if n < df.size:
      ax.axvline(n, color="gray", ls=":", label=f"mined_labels cut ({n})")
  if cdf.size:
    ax.loglog(np.arange(1, cdf.size + 1), cdf, "o-", ms=3, label=f"clusters ({cdf.size})")
  ax.set_xlabel("rank")
  ax.set_ylabel("records carrying it (fit splits)")
  ax.set_title("Label frequency vs rank, before and after clustering")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _cluster_df(out_dir: str, clusters: dict) -> list[dict]:
  """Records per cluster in the fit splits, from the card's per-record fields via stats."""
  stats = _load(out_dir, "stats.json")
  dfs = stats.get("cluster_df_fit") or [c["df_sum"] for c in clusters["clusters"]]
  return [{"id": c["id"], "df": d} for c, d in zip(clusters["clusters"], dfs)]


def _examples(out_dir: str, wanted: list[int], per: int, fit_splits, max_records=20000):
  found: dict[int, list[bytes]] = {c: [] for c in wanted}
  seen = 0
  for path in records.shard_paths(out_dir):
    if steps.split_of(path) not in fit_splits:
      continue
    for raw in records.read_shard(path):
      rec = records.decode(raw, path)
      seen += 1
      for c in rec.labels.get("mined_clusters", []):
        if c in found and len(found[c]) < per:
          found[c].append(rec.image)
      if seen >= max_records or all(len(v) >= per for v in found.values()):
        return found
  return found


def examples(out_dir: str, path: str, rows: int = 12, per: int = 4) -> None:
  clusters = _load(out_dir, "clusters.json")["clusters"]
  fit_splits = _load(out_dir, "stats.json")["fit"]["splits"]
  if not clusters:
    return
  pick = sorted(set(np.linspace(0, len(clusters) - 1, min(rows, len(clusters))).round().astype(int)))
  images = _examples(out_dir, [clusters[i]["id"] for i in pick], per, fit_splits)
  plt.rcParams["font.family"] = _FONTS
  fig, axes = plt.subplots(len(pick), per + 1, figsize=(2 * (per + 4), 1.6 * len(pick)),
                           gridspec_kw={"width_ratios": [4] + [1] * per}, squeeze=False)
  for row, i in zip(axes, pick):
    c = clusters[i]
    members = ", ".join(c["members"][:14]) + (" ..." if len(c["members"]) > 14 else "")
    body = textwrap.fill(f"({len(c['members'])} labels) {members}", 70)
    row[0].text(0, 0.5, f"#{c['id']} {c['name']}\n{body}", va="center", fontsize=7)
    for ax, img in zip(row[1:], images[c["id"]] + [None] * per):
      if img is not None:
        ax.imshow(Image.open(io.BytesIO(img)).convert("RGBA"))
    for ax in row:
      ax.axis("off")
  fig.suptitle("Example clusters (evenly spaced by size; images from records carrying them)")
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(out_dir: str) -> list[str]:
  os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
  paths = [os.path.join(out_dir, "plots", n) for n in ("label_frequency.png", "clusters.png")]
  for fn, path in zip((frequency, examples), paths):
    tmp = path + ".tmp.png"
    fn(out_dir, tmp)
    if os.path.exists(tmp):
      os.replace(tmp, path)
  return [p for p in paths if os.path.exists(p)]
