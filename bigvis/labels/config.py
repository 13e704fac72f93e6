"""Settings of one label-mining run; both runners read the same frozen object.

Source weights say how much a text field is trusted: a label found in the title
is worth more than one found only in a long free-text description. Names match
exactly first, then as fnmatch patterns in order (`keywords_*`), then 'default'.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json

# Defaults cover the prepared corpora (emoji: name/short_names/keywords_<lang>/
# category/subcategory; OpenClipArt: title/keywords/description) and pins in general.
DEFAULT_WEIGHTS = (
    ("title", 1.0), ("name", 1.0), ("keywords", 0.8), ("keywords_*", 0.8),
    ("short_names", 0.6), ("board", 0.6), ("category", 0.5), ("subcategory", 0.5),
    ("description", 0.2), ("default", 0.4),
)


# Label embeddings k-means clusters (bigvis/labels/cluster.py): PPMI-SVD of the corpus's own
# label co-occurrence; all-MiniLM-L6-v2 sentence embeddings of the label text
# (bigvis/labels/text_model.py); or both, each unit-length and scaled by 1/sqrt(2), concatenated.
LABEL_EMBEDDINGS = ("cooccurrence", "text_model", "both")


@dataclasses.dataclass(frozen=True)
class MinerConfig:
  weights: tuple[tuple[str, float], ...] = DEFAULT_WEIGHTS
  default_langs: tuple[str, ...] = ("en",)  # stop words for fields without a `_<lang>` suffix
  max_ngram: int = 3          # phrases of 1..max_ngram words from free text
  max_phrase_words: int = 6   # keyword-list items up to this many words stay whole (Pinterest: 1-6)
  min_confidence: float = 0.3  # a record's label below this is dropped (description-only words)
  min_count: int = 5          # vocabulary: labels in >= min_count records (document frequency)
  max_size: int = 5000        # `mined_labels` classes: the max_size most frequent labels
  cluster_max_size: int = 20000  # labels clustered: the same ranking, a longer prefix (0 = all)
  clusters: int = 256         # K of k-means; `mined_clusters` classes
  embed_dim: int = 64         # PPMI-SVD label embedding size
  label_embeddings: str = "cooccurrence"  # what k-means clusters: one of LABEL_EMBEDDINGS
  seed: int = 0
  exclude: tuple[str, ...] = ()  # whole labels never mined (e.g. ground-truth class names)
  fit_splits: tuple[str, ...] = ("train",)  # vocabulary and clusters come from these splits only

  def __post_init__(self):
    if self.min_count < 1 or self.max_size < 1 or self.clusters < 1:
      raise ValueError(f"min_count, max_size and clusters must be >= 1: {self}")
    if self.label_embeddings not in LABEL_EMBEDDINGS:
      raise ValueError(f"label_embeddings={self.label_embeddings!r}; choose one of "
                       f"{LABEL_EMBEDDINGS}")
    if self.cluster_max_size and self.cluster_max_size < self.max_size:
      raise ValueError(f"cluster_max_size={self.cluster_max_size} < max_size={self.max_size}")
    for name, w in self.weights:
      if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight of {name!r} is {w}; weights are probabilities in [0, 1]")

  def weight(self, source: str) -> float:
    table = dict(self.weights)
    if source in table:
      return table[source]
    for pattern, w in self.weights:
      if fnmatch.fnmatchcase(source, pattern):
        return w
    return table.get("default", 0.4)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["weights"] = dict(self.weights)
    return d


def parse_weights(spec: str, base=DEFAULT_WEIGHTS) -> tuple[tuple[str, float], ...]:
  """'title=1.0,description=0.1' overrides (or adds, ahead of the patterns) source weights."""
  new = {}
  for item in filter(None, spec.split(",")):
    name, _, value = item.partition("=")
    new[name.strip()] = float(value)
  kept = [(n, w) for n, w in base if n not in new]
  return tuple(new.items()) + tuple(kept)


def dumps(obj) -> str:
  """The one JSON form of every artifact: sorted keys, so runners write identical bytes."""
  return json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
