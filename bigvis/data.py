"""The Grain input pipeline from record shards to batches of numpy arrays.

    records -> shuffle (reseeded each epoch) -> repeat -> decode + preprocess
            + targets -> batch -> this process's batches -> [worker processes]

Everything up to the batch is a random-access `grain.MapDataset`, so a batch's
content depends only on (paths, seed, batch position), never on the number of
worker processes, and the iterator's state is a small position that
`get_state()` / `set_state()` (or Orbax, via `grain.checkpoint.CheckpointSave`
and `CheckpointRestore`) restore exactly. A state only fits an iterator built
with the same arguments, worker_count included (its layout differs with workers).

Batches: {'image': float32 [B, H, W, 3],
          'labels': {field: int32 [B] ('class') | float32 [B, N] ('multi_hot')},
          'index': int64 [B],      # global record number in `paths`, for checks and evals
          'bad_index': int64 [B]}  # -1, or the bad record this example stands in for

Bad records (bytes that are not a msgpack record, a record that breaks the
schema, an image that does not decode or preprocess, a label out of range)
raise `records.RecordError` naming the record by default. With
`bad_records='replace'` a bad record is replaced by the next good record in
record order (wrapping around; at most `REPLACEMENT_SEARCH` records are tried,
then it raises), augmented with its own rng, and 'bad_index' names the bad one:
batches stay full, and since the replacement is a function of the stream
position alone they stay independent of worker count and resume exactly. The
trainer counts them and stops past `input.max_bad_fraction`; `RecordChecker`
says what is wrong with one record, for messages.

`make_mixture` mixes several sources (corpora, or one corpus with different
labels or pp) with weights. `grain.MapDataset.mix` interleaves the sources'
example streams by a fixed pattern (position k -> source, position in it), so
the mixture keeps random access, and with it worker-count independence and
exact resume, and every batch holds the sources in their weights' proportions
(stratified, not sampled). Its batches add
          'source': int32 [B]           # position of the example's source in `sources`
          'label_mask': {field: bool [B]}
'labels' holds the union of the sources' fields; a field that a source does not
declare is filled with 0 (class) or zeros (multi_hot) and masked False, so
losses multiply by the mask (and divide by its sum) to train each task on the
examples that have it.

`make_eval_dataset` reads one epoch in record order, with every process
yielding the same number of full batches: the tail is padded, and
          'mask': bool [B]               # False on padding (index -1, zero image/labels)
          'id': str [B]                  # with_ids=True; '' on padding; host-only
marks real examples, so sharded evals see fixed shapes and count each record
once. Mixup and cutmix combine examples and so act on batches, after this
pipeline (not here).
"""

from __future__ import annotations

import bisect
import itertools
import sys

import grain
import numpy as np
from absl import flags
from array_record.python import array_record_module
from PIL import Image

from bigvis import preprocess, records

LABEL_KINDS = ("class", "multi_hot")
BAD_RECORD_POLICIES = ("raise", "replace")
# A bad record's replacement is the first good one among the next REPLACEMENT_SEARCH records: a
# run of that many bad records in a row is not "a few bad records" and fails loudly.
REPLACEMENT_SEARCH = 64
SUBSET_SEED = 20220104  # make_dataset(fraction=): the same subset for every run seed.
# What damaged image bytes raise in PIL (a truncated PNG gives OSError) and pp ops on odd images.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


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
  if in_range(value):  # One class of a multi-label field.
    value = [value]
  if not isinstance(value, list) or not all(in_range(x) for x in value):
    raise bad(f"multi_hot label {value!r} is not a list of ints in [0, {num_classes})")
  hot = np.zeros(num_classes, np.float32)
  hot[value] = 1.0
  return hot


class _Example:
  """(stream position, (record number, raw bytes)) -> one preprocessed example.

  bad_records='replace': a bad record gives the next good record in record order instead, and
  'bad_index' names the bad one (see the module docstring).
  """

  def __init__(self, pp: str, labels, seed: int, epoch_len: int, locator: _Locator, source,
               with_id: bool = False, bad_records: str = "raise"):
    self.pp_string, self.pp = pp, preprocess.parse(pp)
    self.labels, self.seed, self.epoch_len, self.locator = labels, seed, epoch_len, locator
    self.source, self.with_id, self.bad_records = source, with_id, bad_records

  def decode(self, index: int, raw: bytes, rng: np.random.Generator) -> dict:
    """One record -> example; raises records.RecordError naming it if it is bad."""
    where = self.locator(index)
    record = records.decode(raw, where)
    try:
      image = self.pp({"image": record.image}, rng)["image"]
    except _IMAGE_ERRORS as e:  # e.g. a truncated PNG: name the record, not just PIL's words
      raise records.RecordError(
          f"{where} (id {record.id!r}): field 'image': pp {self.pp_string!r} failed: "
          f"{type(e).__name__}: {e}") from e
    if not (isinstance(image, np.ndarray) and image.dtype == np.float32 and image.ndim == 3):
      raise ValueError(f"pp {self.pp_string!r} must yield float32 [H, W, C] images (end it with "
                       f"value_range or normalize); got {getattr(image, 'dtype', type(image))}")
    targets = {}
    for field, (kind, num_classes) in self.labels.items():
      if field not in record.labels:
        raise records.RecordError(f"{where} (id {record.id!r}): field 'labels.{field}': missing")
      targets[field] = _target(record.labels[field], kind, num_classes,
                               f"{where} (id {record.id!r})", field)
    example = {"image": image, "labels": targets, "index": np.int64(index)}
    if self.with_id:
      example["id"] = np.str_(record.id)
    return example

  def __call__(self, position: int, item: tuple[int, bytes]) -> dict:
    index, raw = item
    # The augmentation rng depends on the record and the epoch only, so results do not change
    # with worker count, batch size or where a resumed run restarted.
    epoch = position // self.epoch_len
    try:
      return {**self.decode(index, raw, np.random.default_rng([self.seed, index, epoch])),
              "bad_index": np.int64(-1)}
    except records.RecordError as e:
      if self.bad_records == "raise":
        raise
      error = e
    num_records = len(self.source)
    tries = min(REPLACEMENT_SEARCH, num_records - 1)
    for k in range(1, tries + 1):
      other = (index + k) % num_records
      # Its own rng (the bad record's, plus k): not a copy of the replacement's own example.
      rng = np.random.default_rng([self.seed, index, epoch, k])
      try:
        return {**self.decode(other, self.source[other], rng), "bad_index": np.int64(index)}
      except records.RecordError:
        continue
    raise records.RecordError(f"{error}; and none of the next {tries} records is good enough to "
                              "replace it") from error


def _check_labels(labels, where: str) -> None:
  for field, spec in labels.items():
    if (not isinstance(spec, tuple) or len(spec) != 2 or spec[0] not in LABEL_KINDS
        or not isinstance(spec[1], int) or spec[1] < 1):
      raise ValueError(f"{where}labels[{field!r}] = {spec!r}; want (kind, num_classes), kind in {LABEL_KINDS}")


class _Subset:
  """Records `keep` of `source`, as (global record number, raw bytes)."""

  def __init__(self, source, keep):
    self.source, self.keep = source, keep

  def __len__(self):
    return len(self.keep)

  def __getitem__(self, j):
    i = int(self.keep[j])
    return i, self.source[i]


def _examples(paths, *, pp: str, labels, seed: int, shuffle: bool, num_epochs: int | None,
              process_index: int, process_count: int, with_id: bool = False,
              allow_empty: bool = False, where: str = "",
              bad_records: str = "raise", fraction: float = 1.0) -> grain.MapDataset:
  """This process's records -> (shuffle, repeat) -> preprocessed examples, unbatched."""
  if not paths:
    raise ValueError(f"{where}no shard paths given")
  if bad_records not in BAD_RECORD_POLICIES:
    raise ValueError(f"{where}bad_records={bad_records!r}; choose from {BAD_RECORD_POLICIES}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  _check_labels(labels, where)
  source = grain.sources.ArrayRecordDataSource(list(paths))
  num_records = len(source)
  # Keep the global record number; indices past the first epoch arrive unwrapped.
  ds = grain.MapDataset.source(source).map_with_index(lambda i, raw: (i % num_records, raw))
  if fraction != 1.0:
    if not 0 < fraction <= 1:
      raise ValueError(f"{where}fraction={fraction} not in (0, 1]")
    # A fixed subset, drawn with numpy: a grain shuffle here would be reseeded every epoch by
    # repeat() and so cover every record over a run.
    keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(num_records)[
        :max(1, round(num_records * fraction))])
    ds = grain.MapDataset.source(_Subset(source, keep))
  ds = ds[process_index::process_count]
  epoch_len = len(ds)
  if epoch_len == 0 and not allow_empty:
    raise ValueError(f"{where}process {process_index} of {process_count} has no records")
  if shuffle:
    ds = ds.shuffle(seed=seed)  # repeat() reseeds it each epoch
  if num_epochs != 1:  # repeat(1) is a no-op, and would reject an empty slice
    ds = ds.repeat(num_epochs)
  return ds.map_with_index(_Example(pp, dict(labels), seed, max(epoch_len, 1), _Locator(paths),
                                    source, with_id, bad_records))


def _batches(ds: grain.MapDataset, *, batch_size: int, drop_remainder: bool, read_threads: int,
             worker_count: int, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Batches of `ds`; with process_count > 1, this process's share: batches p, p+P, p+2P, ..."""
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if process_count > 1:
    ds = ds[process_index::process_count]
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                               prefetch_buffer_size=read_threads))
  if worker_count > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it_ds


def make_dataset(paths: list[str], *, pp: str, labels: dict[str, tuple[str, int]], batch_size: int,
                 seed: int, shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int = 0, process_count: int = 1, worker_count: int = 0,
                 drop_remainder: bool = True, read_threads: int = 2,
                 bad_records: str = "raise", fraction: float = 1.0) -> grain.IterDataset:
  """Batches from ArrayRecord shards of `bigvis.records`; see the module docstring.

  Args:
    paths: shard files (e.g. from `records.shard_paths`); their order fixes record numbers.
    pp: preprocessing string for `bigvis.preprocess.parse`; must end in float32 images.
    labels: record label field -> ('class', num_classes) or ('multi_hot', num_classes).
    seed: shuffle seed and root of every per-example augmentation rng.
    num_epochs: None repeats forever.
    batch_size: per process (the global batch over process_count).
    process_index, process_count: every process follows the same shuffled stream of all
      records and reads batches process_index, +process_count, ... of it. Global batch j (the
      processes' j-th batches side by side, in process order) is then the same records for any
      number of processes: a 2-host run trains on exactly the batches of a 1-host run.
    worker_count: worker processes (0: decode in this process's threads).
    read_threads: threads per process computing batches ahead (each holds one batch).
    bad_records: 'raise' (a RecordError naming the record) or 'replace' (by the next good
      record; 'bad_index' marks it).
    fraction: read only this fraction of the records, a subset fixed by SUBSET_SEED (not `seed`).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  ds = _examples(paths, pp=pp, labels=labels, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                 process_index=0, process_count=1, where="make_dataset: ",
                 bad_records=bad_records, fraction=fraction)
  return _batches(ds, batch_size=batch_size, drop_remainder=drop_remainder,
                  read_threads=read_threads, worker_count=worker_count,
                  process_index=process_index, process_count=process_count)


_SOURCE_KEYS = frozenset({"paths", "weight", "pp", "labels"})


class _Tagged:
  """Adds 'source' and fills the mixture's label fields that this source lacks (masked)."""

  def __init__(self, source: int, fields: dict[str, tuple[str, int]], own: set[str]):
    self.source, self.fields, self.own = np.int32(source), fields, own

  def __call__(self, example: dict) -> dict:
    labels, mask = {}, {}
    for field, (kind, n) in self.fields.items():
      mask[field] = np.bool_(field in self.own)
      if mask[field]:
        labels[field] = example["labels"][field]
      else:
        labels[field] = np.int32(0) if kind == "class" else np.zeros(n, np.float32)
    return {**example, "labels": labels, "label_mask": mask, "source": self.source}


def make_mixture(sources: list[dict], *, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, worker_count: int = 0, read_threads: int = 2,
                 bad_records: str = "raise") -> grain.IterDataset:
  """Endless shuffled batches mixing `sources` in proportion to their weights.

  Args:
    sources: dicts with exactly the keys paths, weight (> 0), pp and labels (as in
      `make_dataset`). Every pp must give images of one shape; a label field that
      several sources declare must have the same spec in each.
    seed: root of each source's shuffle and augmentation seeds (one per source position).
    batch_size, process_index, process_count, ...: as in `make_dataset` (global batch j is the
      same records for any process count).

  Batches: see the module docstring ('source', 'label_mask'); a 'bad_index' is a record number
  in the paths of its example's 'source'.
  """
  if not sources:
    raise ValueError("make_mixture: no sources given")
  fields: dict[str, tuple[str, int]] = {}
  for n, src in enumerate(sources):
    where = f"make_mixture: sources[{n}]: "
    if not isinstance(src, dict) or set(src) != _SOURCE_KEYS:
      got = sorted(src) if isinstance(src, dict) else type(src).__name__
      raise ValueError(f"{where}want keys {sorted(_SOURCE_KEYS)}, got {got}")
    if not isinstance(src["weight"], (int, float)) or not src["weight"] > 0:
      raise ValueError(f"{where}weight must be > 0, got {src['weight']!r}")
    _check_labels(src["labels"], where)
    for field, spec in src["labels"].items():
      if fields.setdefault(field, spec) != spec:
        raise ValueError(f"{where}labels[{field!r}] = {spec!r}, but an earlier source has {fields[field]!r}")
  parts = []
  for n, src in enumerate(sources):
    # A seed per source position, so two sources over the same shards differ.
    src_seed = int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
    ds = _examples(src["paths"], pp=src["pp"], labels=src["labels"], seed=src_seed, shuffle=True,
                   num_epochs=None, process_index=0, process_count=1,
                   where=f"make_mixture: sources[{n}]: ", bad_records=bad_records)
    parts.append(ds.map(_Tagged(n, fields, set(src["labels"]))))
  # One example per source now, so differing pp output shapes fail here, not in batch().
  shapes = [part[0]["image"].shape for part in parts]
  if len(set(shapes)) > 1:
    raise ValueError(f"make_mixture: sources' pp give different image shapes {shapes}")
  # mix() walks a fixed interleaving, so position k always maps to the same example.
  mixed = grain.MapDataset.mix(parts, [float(src["weight"]) for src in sources])
  # As in make_dataset: every process walks the one mixed stream and takes its batches, so the
  # global batches are the same for any process count.
  return _batches(mixed, batch_size=batch_size, drop_remainder=True, read_threads=read_threads,
                  worker_count=worker_count, process_index=process_index,
                  process_count=process_count)


def _zeros_like(tree):
  if isinstance(tree, dict):
    return {k: _zeros_like(v) for k, v in tree.items()}
  return np.zeros_like(tree)


def _real(example: dict) -> dict:
  """An eval example: marked real, without 'bad_index' (evaluation raises on bad records)."""
  out = {k: v for k, v in example.items() if k != "bad_index"}
  out["mask"] = np.True_
  return out


class _Pad:
  def __init__(self, template: dict):
    self.template = template

  def __call__(self, _) -> dict:
    return self.template


def make_eval_dataset(paths: list[str], *, pp: str, labels: dict[str, tuple[str, int]],
                      batch_size: int, process_index: int = 0, process_count: int = 1,
                      with_ids: bool = False, worker_count: int = 0,
                      read_threads: int = 2) -> grain.IterDataset:
  """One epoch in record order, padded to full batches; see the module docstring.

  Every process yields ceil(ceil(len / process_count) / batch_size) batches (a
  process with fewer records pads more), so a sharded eval step never waits on a
  process that ran out. Count, average and gather only where 'mask' is True.
  A bad record raises records.RecordError naming it: an evaluation never scores a
  stand-in in its place (and so its batches have no 'bad_index').

  Args:
    with_ids: add the record ids as 'id', a numpy str array; pop it before
      sending a batch to devices (strings cannot go there).
    Other arguments: as in `make_dataset`.
  """
  ds = _examples(paths, pp=pp, labels=labels, seed=0, shuffle=False, num_epochs=1,
                 process_index=process_index, process_count=process_count, with_id=with_ids,
                 allow_empty=True, where="make_eval_dataset: ")
  num_records = len(grain.sources.ArrayRecordDataSource(list(paths)))
  per_process = -(-num_records // process_count)
  total = -(-per_process // batch_size) * batch_size
  ds = ds.map(_real)
  if total > len(ds):
    # The padding looks like record 0 zeroed out, so batches keep one structure.
    first = _examples(paths, pp=pp, labels=labels, seed=0, shuffle=False, num_epochs=1,
                      process_index=0, process_count=1, with_id=with_ids)[0]
    template = {**_zeros_like(_real(first)), "index": np.int64(-1), "mask": np.False_}
    if with_ids:
      template["id"] = np.str_("")
    pads = grain.MapDataset.range(total - len(ds)).map(_Pad(template))
    ds = grain.MapDataset.concatenate([ds, pads]) if len(ds) else pads
  return _batches(ds, batch_size=batch_size, drop_remainder=True, read_threads=read_threads,
                  worker_count=worker_count)


class RecordChecker:
  """Says what is wrong with one record, by decoding it on the host as the pipeline does.

  For messages about records that `bad_records='replace'` stepped over: their batches carry only
  the record number. The check preprocesses with the first epoch's rng, so a failure that depends
  on the augmentation draw may not show again (`problem` then returns None).
  """

  def __init__(self, paths: list[str], *, pp: str, labels: dict[str, tuple[str, int]],
               seed: int = 0):
    _check_labels(labels, "RecordChecker: ")
    self.source = grain.sources.ArrayRecordDataSource(list(paths))
    self.num_records = len(self.source)
    self.seed = seed
    self._example = _Example(pp, dict(labels), seed, 1, _Locator(paths), self.source)

  def where(self, index: int) -> str:
    """'PATH record N' of a global record number."""
    return self._example.locator(index)

  def problem(self, index: int) -> str | None:
    """'PATH record N (id ...): field ...: what is wrong', or None for a good record."""
    try:
      self._example.decode(index, self.source[index],
                           np.random.default_rng([self.seed, index, 0]))
    except records.RecordError as e:
      return str(e)
    return None
