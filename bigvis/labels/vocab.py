"""The label vocabulary (by document frequency) and long-tail statistics.

Ranking: labels with df >= min_count (df = records of the fit splits that carry
the label), sorted by df descending, then by the label's code points, so ties
break the same way everywhere. One ranked list serves two purposes:

- `mined_labels` classes are its first `max_size` labels (the raw vocabulary);
- clustering covers a longer prefix (`cluster_max_size`, 0 = all of it), so
  tail labels that miss the raw vocabulary still reach training through their
  cluster; that is how clustering raises coverage, not only pools examples.

Long-tail groups (of any class list, labels or clusters), by df percentiles of
that list: head = df >= P90, tail = df <= P50 (the median), torso between.
Each group reports its share of classes and its share of assignments (sum df);
`few_shot` is the share of classes with df < FEW_SHOT records, the usual
"too few to learn" count. Coverage is measured per record in pass 3.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import numpy as np

from bigvis.labels.config import MinerConfig

FEW_SHOT = 10


def rank_key(item: tuple[str, int, int]):
  """Sort key of (label, df, confidence sum): frequent first, then by code points."""
  return (-item[1], item[0])


@dataclasses.dataclass(frozen=True)
class Vocab:
  labels: tuple[str, ...]   # ranked; the cluster vocabulary
  df: tuple[int, ...]
  conf_sum: tuple[int, ...]  # summed confidence, permille
  num_labels: int           # `mined_labels` classes = labels[:num_labels]

  @functools.cached_property
  def index(self) -> dict[str, int]:
    return {label: i for i, label in enumerate(self.labels)}

  def to_json(self) -> dict:
    return {"num_labels": self.num_labels, "cluster_vocab_size": len(self.labels),
            "labels": [{"label": l, "df": d, "mean_confidence": round(c / d / 1000, 4)}
                       for l, d, c in zip(self.labels, self.df, self.conf_sum)]}


def keep(item: tuple[str, int, int], cfg: MinerConfig) -> bool:
  return item[1] >= cfg.min_count


def limit(cfg: MinerConfig) -> int:
  """Labels the ranked list holds (0 = all that pass min_count)."""
  return cfg.cluster_max_size


def select(items: Iterable[tuple[str, int, int]], cfg: MinerConfig) -> Vocab:
  """The ranked vocabulary from (label, df, confidence sum) items, in any order."""
  ranked = sorted((it for it in items if keep(it, cfg)), key=rank_key)
  if limit(cfg):
    ranked = ranked[:limit(cfg)]
  return Vocab(labels=tuple(l for l, _, _ in ranked), df=tuple(d for _, d, _ in ranked),
               conf_sum=tuple(c for _, _, c in ranked),
               num_labels=min(cfg.max_size, len(ranked)))


def df_bin(df: int) -> int:
  """Power-of-two histogram bin: b holds df in [2**b, 2**(b+1))."""
  return df.bit_length() - 1


def histogram(bins: dict[int, int]) -> dict[str, int]:
  """{bin: labels} -> {'1': n, '2-3': n, '4-7': n, ...} in bin order."""
  out = {}
  for b in sorted(bins):
    lo, hi = 2 ** b, 2 ** (b + 1) - 1
    out[str(lo) if lo == hi else f"{lo}-{hi}"] = bins[b]
  return out


def long_tail(df: Sequence[int]) -> dict:
  """Head/torso/tail shares of a class list's document frequencies (see module doc)."""
  d = np.asarray(df, np.int64)
  if d.size == 0:
    return {"classes": 0}
  total = int(d.sum())
  p50 = int(np.percentile(d, 50, method="lower"))
  p90 = int(np.percentile(d, 90, method="lower"))
  groups = {"head": d >= p90, "tail": (d <= p50) & (d < p90)}
  groups["torso"] = ~(groups["head"] | groups["tail"])
  out = {"classes": int(d.size), "assignments": total, "df_p50": p50, "df_p90": p90,
         "df_max": int(d.max()), "df_min": int(d.min()),
         "few_shot_share": round(float((d < FEW_SHOT).mean()), 4)}
  for name in ("head", "torso", "tail"):
    m = groups[name]
    out[name] = {"class_share": round(float(m.mean()), 4),
                 "assignment_share": round(float(d[m].sum() / max(total, 1)), 4)}
  return out
