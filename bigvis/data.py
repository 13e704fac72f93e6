"""The Grain input pipeline from record shards to batches of numpy arrays.

    records -> per-process slice -> shuffle (reseeded each epoch) -> repeat
            -> decode + preprocess + targets -> batch -> [worker processes]

Everything up to the batch is a random-access `grain.MapDataset`, so a batch's
content depends only on (paths, seed, batch position), never on the number of
worker processes, and the iterator's state is a small position that
`get_state()` / `set_state()` (or Orbax, via `grain.checkpoint.CheckpointSave`
and `CheckpointRestore`) restore exactly. A state only fits an iterator built
with the same arguments, worker_count included (its layout differs with workers).

Batches: {'image': float32 [B, H, W, 3],
          'labels': {field: int32 [B] ('class') | float32 [B, N] ('multi_hot')},
          'index': int64 [B]}   # global record number in `paths`, for checks and evals
"""

from __future__ import annotations

import bisect
import itertools
import sys

import grain
import numpy as np
from absl import flags
from array_record.python import array_record_module

from bigvis import preprocess, records

LABEL_KINDS = ("class", "multi_hot")


def _ensure_absl_flags_parsed() -> None:
  # Grain reads absl flags (e.g. --grain_enable_multiprocess_worker_profiling,
  # read when jaxlib has profiler hooks, as 0.10.2 does) while starting worker
  # processes; unparsed flags raise UnparsedFlagAccessError (google/grain#1355).
  # Programs run with absl.app have parsed them already; for everyone else
  # (scripts, notebooks, pytest) parse only the program name, which sets every
  # flag to its default and leaves the real command line alone.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS([sys.argv[0] if sys.argv else "bigvis"])


class _Locator:
  """Maps a global record number to 'path record i' for error messages."""

  def __init__(self, paths: list[str]):
    self.paths = list(paths)
    counts = []
    for p in self.paths:
      reader = array_record_module.ArrayRecordReader(p)
      counts.append(reader.num_records())
      reader.close()
    self.ends = list(itertools.accumulate(counts))

  def __call__(self, index: int) -> str:
    shard = bisect.bisect_right(self.ends, index)
    start = self.ends[shard - 1] if shard else 0
    return f"{self.paths[shard]} record {index - start}"


def _target(value, kind: str, num_classes: int, where: str, field: str) -> np.ndarray:
  def bad(msg):
    return records.RecordError(f"{where}: field 'labels.{field}': {msg}")

  def in_range(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < num_classes

  if kind == "class":
    if not in_range(value):
      raise bad(f"class label {value!r} is not an int in [0, {num_classes})")
    return np.int32(value)
  if not isinstance(value, list) or not all(in_range(x) for x in value):
    raise bad(f"multi_hot label {value!r} is not a list of ints in [0, {num_classes})")
  hot = np.zeros(num_classes, np.float32)
  hot[value] = 1.0
  return hot


class _Example:
  """(stream position, (record number, raw bytes)) -> one preprocessed example."""

  def __init__(self, pp: str, labels, seed: int, epoch_len: int, locator: _Locator):
    self.pp_string, self.pp = pp, preprocess.parse(pp)
    self.labels, self.seed, self.epoch_len, self.locator = labels, seed, epoch_len, locator

  def __call__(self, position: int, item: tuple[int, bytes]) -> dict:
    index, raw = item
    where = self.locator(index)
    record = records.decode(raw, where)
    # The augmentation rng depends on the record and the epoch only, so results do
    # not change with worker count, batch size or where a resumed run restarted.
    epoch = position // self.epoch_len
    rng = np.random.default_rng([self.seed, index, epoch])
    image = self.pp({"image": record.image}, rng)["image"]
    if not (isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 3):
      raise ValueError(f"pp {self.pp_string!r} must yield float32 [H, W, C] images (end it with "
                       f"value_range or normalize); got {getattr(image, 'dtype', type(image))}")
    targets = {}
    for field, (kind, num_classes) in self.labels.items():
      if field not in record.labels:
        raise records.RecordError(f"{where} (id {record.id!r}): field 'labels.{field}': missing")
      targets[field] = _target(record.labels[field], kind, num_classes,
                               f"{where} (id {record.id!r})", field)
    return {"image": image, "labels": targets, "index": np.int64(index)}


def make_dataset(paths: list[str], *, pp: str, labels: dict[str, tuple[str, int]], batch_size: int,
                 seed: int, shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                 drop_remainder: bool = True, read_threads: int = 2) -> grain.IterDataset:
  """Batches from ArrayRecord shards of `bigvis.records`; see the module docstring.

  Args:
    paths: shard files (e.g. from `records.shard_paths`); their order fixes record numbers.
    pp: preprocessing string for `bigvis.preprocess.parse`; must end in float32 images.
    labels: record label field -> ('class', num_classes) or ('multi_hot', num_classes).
    seed: shuffle seed and root of every per-example augmentation rng.
    num_epochs: None repeats forever.
    process_index, process_count: this host gets records process_index::process_count.
    worker_count: worker processes (0: decode in this process's threads).
    read_threads: threads per process computing batches ahead (each holds one batch).
  """
  if not paths:
    raise ValueError("make_dataset: no shard paths given")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  for field, spec in labels.items():
    if (not isinstance(spec, tuple) or len(spec) != 2 or spec[0] not in LABEL_KINDS
        or not isinstance(spec[1], int) or spec[1] < 1):
      raise ValueError(f"labels[{field!r}] = {spec!r}; want (kind, num_classes), kind in {LABEL_KINDS}")

  source = grain.sources.ArrayRecordDataSource(list(paths))
  num_records = len(source)
  # Keep the global record number; indices past the first epoch arrive unwrapped.
  ds = grain.MapDataset.source(source).map_with_index(lambda i, raw: (i % num_records, raw))
  ds = ds[process_index::process_count]
  epoch_len = len(ds)
  if epoch_len == 0:
    raise ValueError(f"process {process_index} of {process_count} has no records")
  if shuffle:
    ds = ds.shuffle(seed=seed)  # repeat() reseeds it each epoch
  ds = ds.repeat(num_epochs)
  ds = ds.map_with_index(_Example(pp, dict(labels), seed, epoch_len, _Locator(paths)))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=read_threads))
  if worker_count > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it_ds
