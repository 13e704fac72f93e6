"""Weak labels mined from record texts, clustered against the long tail (DESIGN.md section 1).

Pure per-record functions (`text`, `steps`) and global fits (`vocab`, `cluster`)
shared by two runners over the same record shards, which write identical output:
`local.run` (one machine, process pool) and `beam.run` (Apache Beam: DirectRunner,
Dataflow, Flink, Spark). The output is a labelled copy of the corpus with
`mined_labels` / `mined_clusters` fields and vocab/clusters/stats JSON
(see `artifacts`). Command line: tools/mine_labels.py.
"""

from bigvis.labels.config import MinerConfig

__all__ = ["MinerConfig"]
