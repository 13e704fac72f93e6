"""The bigvis emoji corpus as a TFDS dataset (see data/bigvis_corpus.py for the features).

    python tools/prepare.py emoji --out runs/data/emoji
    python -m data.build bigvis_emoji --corpus_dir runs/data/emoji --data_dir ~/tensorflow_datasets
    tfds.data_source("bigvis_emoji", split="val_query")  # from ~/tensorflow_datasets

Splits: train, {val,test}_query (the query vendor) and {val,test}_index (the others).
Labels: identity, base_identity, category, subcategory, skin_tone, skin_tones, vendor,
with class names from the card; texts: name, short_names, category, subcategory,
keywords_<lang>. See bigvis/corpora/emoji.py and the corpus's DATASET_CARD.md.
"""

from data.bigvis_corpus import CorpusBuilder


class BigvisEmoji(CorpusBuilder):
  """The same emoji drawn by several vendors, with multilingual keywords."""

  CORPUS = "emoji"
