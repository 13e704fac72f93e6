"""Builds a ScaNN index over an embeddings file (tools/embed.py) and saves it to a folder.

  python tools/build_index.py --embeddings runs/finetune/db.npz --out runs/finetune/index
  python tools/build_index.py --embeddings runs/finetune/db.npz --out runs/finetune/index_bin \\
      --binary
  python tools/build_index.py ... --param algorithm=tree_ah --param num_leaves_to_search=20

Float indexes search the L2-normalized embeddings by dot product (= cosine); --binary indexes the
±1 sign vectors of the binary codes, whose dot-product ranking is the Hamming ranking. Params
default from the data size (bigvis/retrieval.py: default_scann_params); --param overrides one
(algorithm, num_leaves, num_leaves_to_search, training_sample_size, dims_per_block,
anisotropic_quantization_threshold, reorder). The folder holds ScaNN's files and meta.json
(params, metric, sizes, build time, database ids, file checksums); tools/eval_retrieval.py
--index / --binary_index reads it.

An embeddings set (tools/embed.py --num_shards) with --sharded gets one index per shard, built in
--workers processes (bigvis/sharded_index.py) and searched as one, the shards' top k merged
exactly; shards already built from the same embeddings are skipped:
  python tools/build_index.py --embeddings runs/finetune/db_set --sharded --workers 4 \\
      --out runs/finetune/index_set
On a cluster, the same per-shard job as an Apache Beam pipeline (set and --out in a bucket):
  python tools/build_index.py --embeddings gs://b/db_set --sharded --runner beam \\
      --out gs://b/index_set -- --runner=DataflowRunner --project=... --region=...
"""

import argparse
import json
import sys
import time


from bigvis import embedding_sets, fileio, retrieval, sharded_index


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--embeddings", required=True, help="an embeddings .npz (tools/embed.py)")
  p.add_argument("--out", required=True, help="index folder (replaced atomically if it exists)")
  p.add_argument("--binary", action="store_true", help="index the binary codes (Hamming ranking)")
  p.add_argument("--k", type=int, default=10, help="neighbours a search returns by default")
  p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                 help="override a ScaNN param (repeatable)")
  p.add_argument("--sharded", action="store_true",
                 help="one index per shard of an embeddings set (--embeddings a set folder)")
  p.add_argument("--workers", type=int, default=1, help="processes building shard indexes")
  p.add_argument("--runner", choices=("local", "beam"), default="local",
                 help="with --sharded: local processes, or Apache Beam (flags after `--`)")
  argv = sys.argv[1:] if argv is None else list(argv)
  beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
  a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
  if a.sharded:
    try:
      if not embedding_sets.is_set(a.embeddings):
        raise ValueError(f"--sharded: {a.embeddings} is not an embeddings set folder "
                         "(tools/embed.py --num_shards)")
      meta = sharded_index.build(a.embeddings, a.out, k=a.k, binary=a.binary,
                                 params=retrieval.parse_scann_params(a.param), workers=a.workers,
                                 runner=a.runner, pipeline_args=beam_args or None)
    except (OSError, ValueError) as e:
      sys.exit(f"build_index.py: error: {e}")
    summary = {key: meta[key] for key in ("metric", "num_points", "dim", "build_seconds",
                                          "wall_seconds", "workers", "runner")}
    print(json.dumps({"out": a.out, "shards": len(meta["shards"]), **summary}, indent=1))
    return

  try:
    emb = retrieval.load_embeddings(a.embeddings)
    dim = emb["embedding"].shape[1]
    vectors = retrieval.codes_to_signs(emb["codes"], dim) if a.binary else emb["embedding"]
    params = retrieval.resolve_scann_params(len(vectors), dim, a.k,
                                            retrieval.parse_scann_params(a.param))
    print(f"build_index.py: {len(vectors)} points, dim {dim}, "
          f"{'binary (±1 signs)' if a.binary else 'float'}; params {json.dumps(params)}",
          file=sys.stderr)
    start = time.perf_counter()
    searcher = retrieval.build_scann(vectors, a.k, params)
    seconds = time.perf_counter() - start
    meta = {"params": params, "metric": "hamming" if a.binary else "dot", "k": a.k,
            "num_points": len(vectors), "dim": dim, "build_seconds": seconds,
            "ids": emb["id"], "embeddings": fileio.absolute(a.embeddings),
            "embeddings_meta": emb["meta"]}
    retrieval.save_index(searcher, a.out, meta)
  except (OSError, ValueError) as e:  # bad input: the message, no traceback
    sys.exit(f"build_index.py: error: {e}")
  print(json.dumps({"out": a.out, "metric": meta["metric"], "num_points": len(vectors), "dim": dim,
                    "build_seconds": round(seconds, 3), "params": params}, indent=1))


if __name__ == "__main__":
  main()
