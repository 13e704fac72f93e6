"""Builds a bigvis TFDS dataset from a prepared corpus, without TensorFlow.

    python -m data.build bigvis_emoji --corpus_dir runs/data/emoji --data_dir ~/tensorflow_datasets
    python -m data.build bigvis_corpus/fashion_mnist            # corpus from $BIGVIS_CORPORA
                                                                # or runs/data/fashion_mnist
    python -m data.build bigvis_emoji --corpus_dir gs://b/data/emoji --data_dir gs://b/tfds

(`tfds build` would do the same, but its CLI imports TensorFlow.) The corpus and the data dir may
be buckets. ArrayRecord's writer opens only local files, so a bucket data dir is built in a local
scratch folder and then uploaded, `dataset_info.json` last: a reader that finds it finds a whole
build, and a failed build leaves the bucket as it was.
"""

import argparse
import os
import tempfile

import tensorflow_datasets as tfds

from bigvis import fileio
from data import bigvis_corpus, bigvis_emoji  # noqa: F401  (registers the builders)

INFO = tfds.core.constants.DATASET_INFO_FILENAME  # TFDS restores a build from it; written last


def build(name, *, data_dir=None, corpus_dir=None, overwrite=False):
  """Builds `name` into `data_dir` (local or a bucket); returns the builder, read from there."""
  def make(where):
    return tfds.builder(name, data_dir=where, corpus_dir=corpus_dir)
  if not (data_dir and fileio.is_remote(data_dir)):
    builder = make(data_dir)
    if overwrite and builder.data_path.exists():
      builder.data_path.rmtree()
      builder = make(data_dir)
    builder.download_and_prepare()
    return builder
  with tempfile.TemporaryDirectory() as scratch:
    local = make(scratch)
    target = fileio.path(data_dir) / os.path.relpath(local.data_path, scratch)
    if overwrite or not (target / INFO).exists():
      local.download_and_prepare()
      fileio.upload_dir(local.data_path, os.fspath(target), last=INFO, remove_stale=True)
  return make(data_dir)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", help="bigvis_emoji or bigvis_corpus/<corpus> "
                      f"(corpus: {', '.join(bigvis_corpus.CORPORA)})")
  parser.add_argument("--corpus_dir", type=os.path.expanduser,
                      help="the prepared corpus (shards + dataset_card.json), local or a bucket")
  parser.add_argument("--data_dir", type=os.path.expanduser,
                      help="TFDS data dir, local or a bucket (default: $TFDS_DATA_DIR or "
                      "~/tensorflow_datasets)")
  parser.add_argument("--overwrite", action="store_true", help="replace an earlier build")
  args = parser.parse_args(argv)
  builder = build(args.name, data_dir=args.data_dir, corpus_dir=args.corpus_dir,
                  overwrite=args.overwrite)
  for split, info in builder.info.splits.items():
    print(f"{split:12s} {info.num_examples:8d} examples  {info.num_shards} shards")
  print(f"built {builder.info.full_name} in {builder.data_path}")


if __name__ == "__main__":
  main()
