"""Builds a bigvis TFDS dataset from a prepared corpus, without TensorFlow.

    python -m data.build bigvis_emoji --corpus_dir runs/data/emoji --data_dir ~/tensorflow_datasets
    python -m data.build bigvis_corpus/fashion_mnist            # corpus from $BIGVIS_CORPORA
                                                                # or runs/data/fashion_mnist

(`tfds build` would do the same, but its CLI imports TensorFlow.)
"""

import argparse
import os
import shutil

import tensorflow_datasets as tfds

from data import bigvis_corpus, bigvis_emoji  # noqa: F401  (registers the builders)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help="bigvis_emoji or bigvis_corpus/<corpus> "
                      f"(corpus: {', '.join(bigvis_corpus.CORPORA)})")
  parser.add_argument("--corpus_dir", type=os.path.expanduser,
                      help="the prepared corpus (shards + dataset_card.json)")
  parser.add_argument("--data_dir", type=os.path.expanduser,
                      help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--overwrite", action="store_true", help="delete an earlier build first")
  args = parser.parse_args(argv)

  def make():
    return tfds.builder(args.name, data_dir=args.data_dir, corpus_dir=args.corpus_dir)
  builder = make()
  if args.overwrite and builder.data_path.exists():
    shutil.rmtree(builder.data_path)
    builder = make()
  builder.download_and_prepare()
  for split, info in builder.info.splits.items():
    print(f"{split:12s} {info.num_examples:8d} examples  {info.num_shards} shards")
  print(f"built {builder.info.full_name} in {builder.data_path}")


if __name__ == "__main__":
  main()
