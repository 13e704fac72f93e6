"""Label mining as an Apache Beam pipeline over the same `steps` as the local runner.

    from bigvis.labels import MinerConfig, beam
    stats = beam.run("runs/data/emoji", "runs/data/emoji_mined", MinerConfig(),
                     pipeline_args=["--runner=DirectRunner"])
    python tools/mine_labels.py --corpus ... --out ... --runner beam -- <Beam flags>

The graph: fit-split chunks -> Reshuffle -> read + candidates -> CombinePerKey
(label df and confidence sums, text-issue counts) -> Top (ranked vocabulary,
distributed) -> singleton Vocab; candidates -> vocabulary ids -> batches -> pair counts
-> row sums (CombineGlobally) and row blocks (CombinePerKey, reduced in parallel)
-> PPMI rows per block -> one matrix -> singleton Clusters; all shards -> label_shard
(vocab, clusters as side inputs) -> CombineGlobally(stats) -> artifact JSON. Several corpora
mined jointly share the fit passes; each gets its own labelling branch and artifacts.
The staging folder is renamed into place by the launching process after the
pipeline finishes, so the input and output paths must be visible to the
launcher and to every worker (a shared or FUSE-mounted filesystem, e.g.
gcsfuse, since ArrayRecord reads POSIX paths).

Runner flags (everything after `--` on the tool's command line):
  DirectRunner (default; tests):   --runner=DirectRunner
      all local cores:             --direct_running_mode=multi_processing --direct_num_workers=0
  Dataflow:  --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp
             --requirements_file=requirements.txt (or --setup_file=./setup.py)
             --num_workers=N --max_num_workers=M --machine_type=n2-standard-8
  Flink:     --runner=FlinkRunner --flink_master=HOST:8081 --parallelism=N
             --environment_type=LOOPBACK (local) | DOCKER | PROCESS --environment_config=...
  Spark:     --runner=SparkRunner --spark_master_url=spark://HOST:7077
             --environment_type=LOOPBACK | DOCKER
Portable runners (Flink, Spark) start a Java job server, so they need Java on the launcher.
The vocabulary and clustering steps each run on one worker: size that worker
for the PPMI matrix of cluster_max_size labels (at most 12 bytes per non-zero).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsSingleton

from bigvis.labels import artifacts, cluster, steps
from bigvis.labels import vocab as vocab_lib
from bigvis.labels.config import MinerConfig

_BATCH = 5000  # records whose id lists make one partial pair count


class _SumPairs(beam.CombineFn):
  """Sums (count, confidence) pairs."""

  def create_accumulator(self):
    return (0, 0)

  def add_input(self, acc, x):
    return (acc[0] + x[0], acc[1] + x[1])

  def merge_accumulators(self, accs):
    accs = list(accs)
    return (sum(a for a, _ in accs), sum(b for _, b in accs))

  def extract_output(self, acc):
    return acc


class _MergePairs(beam.CombineFn):
  """Exact sum of pair counts (cluster.merge_pairs); partial sums fold as they come."""

  def create_accumulator(self):
    return cluster.merge_pairs([])

  def add_input(self, acc, pairs):
    return cluster.merge_pairs([acc, pairs])

  def merge_accumulators(self, accs):
    return cluster.merge_pairs(list(accs))

  def extract_output(self, acc):
    return acc


class _SumArrays(beam.CombineFn):
  """Sum of equally shaped int arrays (label row sums)."""

  def create_accumulator(self):
    return None

  def add_input(self, acc, x):
    return x.copy() if acc is None else acc + x

  def merge_accumulators(self, accs):
    accs = [a for a in accs if a is not None]
    return sum(accs[1:], accs[0].copy()) if accs else None

  def extract_output(self, acc):
    return acc


class _MergeStats(beam.CombineFn):
  def create_accumulator(self):
    return {}

  def add_input(self, acc, stats):
    return steps.merge_stats([acc, stats])

  def merge_accumulators(self, accs):
    return steps.merge_stats(accs)

  def extract_output(self, acc):
    return acc


def _write(pass3, staging, corpus, cfg, vocab, clusters, hist, issues, jointly_with):
  artifacts.write(staging, corpus, cfg, vocab, clusters, {"issues": issues, "df_hist": hist}, pass3,
                  jointly_with)


def build(p: beam.Pipeline, outputs: list[tuple[str, str]], cfg: MinerConfig,
          chunk_size: int) -> None:
  """Adds the mining graph (see the module docstring) to pipeline `p`.

  outputs: (corpus, staging folder of its labelled copy) of each corpus mined jointly.
  """
  fit = [c for corpus, _ in outputs for c in steps.fit_chunks(corpus, cfg, chunk_size)]
  mined = (p | "FitChunks" >> beam.Create(fit)
           | "Spread" >> beam.Reshuffle()
           | "Read" >> beam.FlatMap(steps.read_chunk)
           | "Candidates" >> beam.Map(lambda ri: steps.mine(ri[0], ri[1], cfg)))
  counts = (mined | "CountItems" >> beam.FlatMapTuple(steps.count_items)
            | "SumCounts" >> beam.CombinePerKey(_SumPairs()))
  labels = (counts | "Labels" >> beam.Filter(lambda kv: kv[0][0] == "label")
            | "AsItems" >> beam.Map(lambda kv: (kv[0][1], kv[1][0], kv[1][1])))
  kept = labels | "MinCount" >> beam.Filter(vocab_lib.keep, cfg)
  top = (beam.combiners.Top.Of(vocab_lib.limit(cfg), key=vocab_lib.rank_key, reverse=True)
         if vocab_lib.limit(cfg) else beam.combiners.ToList())
  vocab = AsSingleton(kept | "Rank" >> top | "Vocab" >> beam.Map(vocab_lib.select, cfg))
  hist = AsSingleton(labels | "DfBin" >> beam.Map(lambda it: (vocab_lib.df_bin(it[1]), 1))
                     | "BinCounts" >> beam.CombinePerKey(sum)
                     | "HistDict" >> beam.combiners.ToDict())
  issues = AsSingleton(counts | "Issues" >> beam.Filter(lambda kv: kv[0][0] == "issue")
                       | "IssueItems" >> beam.Map(lambda kv: (kv[0][1], kv[1][0]))
                       | "IssueDict" >> beam.combiners.ToDict())
  n_of = lambda v: len(v.labels)  # noqa: E731
  if cluster.needs_cooccurrence(cfg):
    partial = (mined | "VocabIds" >> beam.Map(lambda m, v: steps.fit_ids(m[0], v), vocab)
               | "Batch" >> beam.BatchElements(min_batch_size=_BATCH, max_batch_size=_BATCH)
               | "PairCounts" >> beam.Map(cluster.pair_counts))
    rows = AsSingleton(partial | "RowSums" >> beam.Map(lambda pc, v: cluster.row_sums(pc, n_of(v)),
                                                      vocab)
                       | "SumRows" >> beam.CombineGlobally(_SumArrays()))
    fitted = (partial | "SplitBlocks" >> beam.FlatMap(
                  lambda pc, v: cluster.split_blocks(pc, n_of(v)), vocab)
              | "ReduceBlocks" >> beam.CombinePerKey(_MergePairs())
              | "PpmiBlocks" >> beam.Map(lambda kv, r: (kv[0], cluster.ppmi_block(*kv, r)), rows)
              | "AllBlocks" >> beam.combiners.ToDict()
              | "Cluster" >> beam.Map(
                  lambda blocks, v: cluster.fit(cluster.stack_blocks(blocks, n_of(v)), v, cfg),
                  vocab))
  else:  # text-model embeddings only: no co-occurrence pass
    fitted = (p | "NoPairs" >> beam.Create([None])
              | "Cluster" >> beam.Map(lambda _, v: cluster.fit(None, v, cfg), vocab))
  clusters = AsSingleton(fitted)
  for i, (corpus, staging) in enumerate(outputs):
    at = f" {i}" if i else ""  # Stage names stay those of a one-corpus graph.
    others = [c for c, _ in outputs if c != corpus]
    pass3 = (p | f"Shards{at}" >> beam.Create(steps.all_shards(corpus))
             | f"SpreadShards{at}" >> beam.Reshuffle()
             | f"LabelShard{at}" >> beam.Map(
                 lambda path, v, c, d: steps.label_shard(path, d, cfg, v, c), vocab, clusters,
                 staging)
             | f"Stats{at}" >> beam.CombineGlobally(_MergeStats()))
    _ = pass3 | f"Artifacts{at}" >> beam.Map(_write, staging, corpus, cfg, vocab, clusters, hist,
                                              issues, others)


def run(corpus: str | Sequence[str], out: str, cfg: MinerConfig, *,
        pipeline_args: list[str] | None = None, chunk_size: int = 5000) -> dict:
  """Mines labels of `corpus` into the labelled copy `out`; returns stats.json's content.

  A list of corpora is mined jointly into out/<each one's folder name>; returns {folder name:
  its stats.json's content} (as bigvis.labels.local.run).
  """
  corpora = [corpus] if isinstance(corpus, str) else list(corpus)
  names = artifacts.output_names(corpora, joint=not isinstance(corpus, str))
  staging = artifacts.staging_dir(out, corpora, names)
  try:
    options = PipelineOptions(pipeline_args or ["--runner=DirectRunner"])
    with beam.Pipeline(options=options) as p:
      build(p, [(x, os.path.join(staging, n)) for x, n in zip(corpora, names)], cfg, chunk_size)
    stats = {}
    for name in names:
      with open(os.path.join(staging, name, "stats.json"), encoding="utf-8") as f:
        stats[name] = json.load(f)
    artifacts.commit(staging, out)
    return stats[""] if isinstance(corpus, str) else stats
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
