"""Any prepared bigvis corpus as a TFDS dataset: ArrayRecord files, no TensorFlow.

    from data import bigvis_corpus  # registers `bigvis_corpus/<corpus>`
    builder = tfds.builder("bigvis_corpus/fashion_mnist", data_dir=TFDS_DIR,
                           corpus_dir="runs/data/fashion_mnist")
    builder.download_and_prepare()
    train = tfds.data_source("bigvis_corpus/fashion_mnist", split="train", data_dir=TFDS_DIR)

The input is a corpus directory written by tools/prepare.py (`write_corpus`): record shards
plus dataset_card.json. `corpus_dir` defaults to $BIGVIS_CORPORA/<corpus>, else
<repo>/runs/data/<corpus>. It is a builder argument rather than a `manual_dir` because
the card decides the features (text fields, label kinds, class names), and TFDS asks
for them when the builder is constructed, before download_and_prepare sees manual_dir.

Features, from the card (one example per record):
  id      str
  image   encoded PNG/JPEG bytes as written (tfds.features.Image would need TensorFlow)
  texts   {source: str} for every text source in the card; "" where a record has none
  labels  int -> ClassLabel with the card's label_names (plain int64 without names),
          list[int] -> Sequence of those, str -> Text, list[str] -> Sequence(Text);
          a record without the field gets -1, "" or [].
Splits are the corpus's splits; description, homepage, license and citation come from
the card, and the whole card is kept in `info.metadata["card"]`. Once prepared, the
TFDS directory describes itself: reading needs neither the corpus nor this module
(`tfds.data_source(..., data_dir=...)` finds it by its files).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from bigvis import records
from bigvis.corpora import read_card

CORPORA = ("emoji", "openclipart", "fashion_mnist", "shapes")
CORPORA_ENV = "BIGVIS_CORPORA"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_READ_BATCH = 256  # records read from a shard at a time


def _label_feature(field: str, kind: str, names: list[str] | None, doc: str | None):
  if names is not None:
    bad = [n for n in names if not n or n != n.strip() or "\n" in n]
    if bad or len(set(names)) != len(names):  # TFDS keeps names one per line, stripped
      raise ValueError(f"label_names[{field!r}]: class names must be unique, non-empty and "
                       f"without surrounding spaces or newlines (e.g. {bad[:3]})")
  ints = (tfds.features.ClassLabel(names=names, doc=doc) if names is not None
          else tfds.features.Scalar(np.int64, doc=doc))
  kinds = {"int": ints, "str": tfds.features.Text(doc=doc),
           "list[int]": tfds.features.Sequence(ints, doc=doc),
           "list": tfds.features.Sequence(ints, doc=doc),  # only empty lists seen
           "list[str]": tfds.features.Sequence(tfds.features.Text(), doc=doc)}
  if kind not in kinds:
    raise ValueError(f"label {field!r} has kind {kind!r}; TFDS needs one of {sorted(kinds)}")
  return kinds[kind]


def features_from_card(card: dict) -> tfds.features.FeaturesDict:
  fields, names = card["fields"], card.get("label_names", {})
  text_docs, label_docs = card.get("texts_docs", {}), card.get("label_docs", {})
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(doc="record id, unique in the corpus"),
      "image": tfds.features.Tensor(shape=(), dtype=np.object_, doc="encoded PNG or JPEG"),
      "texts": tfds.features.FeaturesDict(
          {k: tfds.features.Text(doc=text_docs.get(k)) for k in sorted(fields["texts"])}),
      "labels": tfds.features.FeaturesDict(
          {k: _label_feature(k, v["kind"], names.get(k), label_docs.get(k))
           for k, v in sorted(fields["labels"].items())}),
  })


def _signature(features) -> tuple:
  """Structure, dtypes and class names: what a card and a build must agree on."""
  return features.to_json(), [getattr(f, "names", None) for f in features.flat_features]


def _missing(feature):
  if isinstance(feature, tfds.features.Sequence):
    return []
  return "" if isinstance(feature, tfds.features.Text) else -1


def _read(path: str):
  """The raw records of one shard, in order, a batch at a time."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    n = reader.num_records()
    for start in range(0, n, _READ_BATCH):
      yield from reader.read(start, min(start + _READ_BATCH, n))
  finally:
    reader.close()


class CorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared by the bigvis builders: a corpus directory in, ArrayRecord TFDS files out."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": f"Records of bigvis schema v{records.VERSION}: id, image, texts, labels."}
  CORPUS: str | None = None  # builders without configs name their corpus here

  def __init__(self, *, corpus_dir: str | os.PathLike | None = None,
               file_format: str = "array_record", **kwargs):
    self._corpus_dir = corpus_dir  # before super().__init__, which calls _info()
    super().__init__(file_format=file_format, **kwargs)
    self._original_state.update(corpus_dir=corpus_dir, file_format=file_format)  # for pickle

  @property
  def corpus_name(self) -> str:
    return self.builder_config.name if self.builder_config else self.CORPUS

  @property
  def corpus_dir(self) -> str:
    if self._corpus_dir:
      return os.path.expanduser(os.fspath(self._corpus_dir))
    return os.path.join(os.environ.get(CORPORA_ENV) or os.path.join(_REPO, "runs", "data"),
                        self.corpus_name)

  def _info(self) -> tfds.core.DatasetInfo:
    # Built: restored from its files.
    if (self.data_path / tfds.core.constants.DATASET_INFO_FILENAME).exists():
      return tfds.core.DatasetInfo(builder=self)
    try:
      card = read_card(self.corpus_dir)
    except FileNotFoundError:  # fails in download_and_prepare, with read_card's message
      return tfds.core.DatasetInfo(builder=self)
    parts = [card.get("description", ""), *(f"{k.capitalize()}: {card[k]}"
                                            for k in ("source", "attribution") if card.get(k))]
    return tfds.core.DatasetInfo(
        builder=self, description="\n\n".join(p for p in parts if p),
        features=features_from_card(card), homepage=card.get("homepage"),
        citation=card.get("citation"), license=card.get("license"),
        metadata=tfds.core.MetadataDict(card=card))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the corpus is already prepared
    card = read_card(self.corpus_dir)
    if card.get("status") != "ok":
      raise ValueError(f"{self.corpus_dir}: the corpus card says {card.get('status')!r}: "
                       f"{card.get('error', '')}; prepare it again")
    if self.info.features is None or (
        _signature(features_from_card(card)) != _signature(self.info.features)):
      raise ValueError(f"{self.corpus_dir}: its card does not match the features this builder "
                       "took from an earlier build (or from no card); delete that build "
                       "(python -m data.build ... --overwrite) or construct the builder again")
    return {split: self._generate_examples(split, s["records"])
            for split, s in card["splits"].items()}

  def _generate_examples(self, split: str, expected: int):
    features, n = self.info.features, 0
    texts, labels = features["texts"], features["labels"]
    for path in records.shard_paths(self.corpus_dir, split):
      for i, raw in enumerate(_read(path)):
        r = records.decode(raw, f"{path} record {i}")
        yield r.id, {"id": r.id, "image": r.image,
                     "texts": {k: r.texts.get(k, "") for k in texts.keys()},
                     "labels": {k: r.labels.get(k, _missing(f)) for k, f in labels.items()}}
        n += 1
    if n != expected:
      raise ValueError(f"{self.corpus_dir}: split {split!r} has {n} records in its shards, "
                       f"the card says {expected}")


class BigvisCorpus(CorpusBuilder):
  """A prepared bigvis corpus; the config names it (`bigvis_corpus/emoji`, ...)."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c, description=f"the bigvis {c} corpus")
                     for c in CORPORA]
