"""The record schema (version 1) and the ArrayRecord shards that hold it.

This module is the contract between the data tools and everything after them.
One record per image, a msgpack map (never pickle: shards must be safe to read):

    {"v": 1,
     "id": str,                      non-empty, unique within a corpus
     "image": bytes,                 encoded PNG or JPEG
     "texts": {source: str},         e.g. {"title": ..., "description": ...}
     "labels": {field: int | str | list[int] | list[str]}}

Readers call `decode`, which validates every field, so a bad shard fails loudly
with the file, record number and field instead of deep inside a training step.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
from collections.abc import Iterable, Mapping

import msgpack
from array_record.python import array_record_module
from tqdm import tqdm

from bigvis import fileio

VERSION = 1
# group_size:1 makes every record its own chunk, so a random read decodes one
# record (Grain warns otherwise). Images are already PNG/JPEG-compressed, so
# zstd would cost CPU per read and save almost nothing.
WRITER_OPTIONS = "group_size:1,uncompressed"

_KEYS = frozenset({"v", "id", "image", "texts", "labels"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_SHARD_RE = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.array_record$")
# Split names have no '-', so the glob `{split}-*` never matches another split's shards.
SPLIT_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
SHARD_FILE_RE = re.compile(r"^([A-Za-z0-9_]+)-\d{5}-of-\d{5}\.array_record$")


def split_of_shard(path: str) -> str:
  """'DIR/train-00001-of-00004.array_record' -> 'train'."""
  m = SHARD_FILE_RE.match(os.path.basename(path))
  if not m:
    raise ValueError(f"{path}: not a record shard name ({{split}}-NNNNN-of-NNNNN.array_record)")
  return m[1]

LabelValue = int | str | list[int] | list[str]


class RecordError(ValueError):
  """A record does not follow the schema; the message names where and which field."""


@dataclasses.dataclass(frozen=True)
class Record:
  id: str
  image: bytes
  texts: Mapping[str, str]
  labels: Mapping[str, LabelValue]


def _check_label(value, where: str, field: str) -> None:
  # bool is an int subclass; a bool label is almost surely a bug upstream.
  def scalar_ok(x):
    return isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool))

  if scalar_ok(value):
    return
  if isinstance(value, (list, tuple)):
    if all(isinstance(x, str) for x in value) or all(
        isinstance(x, int) and not isinstance(x, bool) for x in value):
      return
    raise RecordError(f"{where}: field 'labels.{field}': list must be all int or all str")
  raise RecordError(
      f"{where}: field 'labels.{field}': expected int, str, list[int] or list[str], "
      f"got {type(value).__name__}")


def validate(record: Record, where: str) -> None:
  """Raises RecordError naming `where` and the field if `record` breaks the schema."""
  if not isinstance(record.id, str) or not record.id:
    raise RecordError(f"{where}: field 'id': must be a non-empty str, got {record.id!r}")
  where = f"{where} (id {record.id!r})"
  if not isinstance(record.image, (bytes, bytearray)):
    raise RecordError(f"{where}: field 'image': must be bytes, got {type(record.image).__name__}")
  if not (record.image.startswith(_PNG_MAGIC) or record.image.startswith(_JPEG_MAGIC)):
    raise RecordError(f"{where}: field 'image': not PNG or JPEG (first bytes {bytes(record.image[:8])!r})")
  for name, value in (("texts", record.texts), ("labels", record.labels)):
    if not isinstance(value, Mapping):
      raise RecordError(f"{where}: field '{name}': must be a map, got {type(value).__name__}")
    for key in value:
      if not isinstance(key, str) or not key:
        raise RecordError(f"{where}: field '{name}': keys must be non-empty str, got {key!r}")
  for source, text in record.texts.items():
    if not isinstance(text, str):
      raise RecordError(f"{where}: field 'texts.{source}': must be str, got {type(text).__name__}")
  for field, value in record.labels.items():
    _check_label(value, where, field)


def encode(record: Record, where: str = "encode") -> bytes:
  """Validates and serializes one record; `where` names it in errors."""
  validate(record, where)
  return msgpack.packb(
      {"v": VERSION, "id": record.id, "image": bytes(record.image),
       "texts": dict(record.texts),
       "labels": {k: list(v) if isinstance(v, tuple) else v for k, v in record.labels.items()}},
      use_bin_type=True)


def decode(raw: bytes, where: str) -> Record:
  """Parses and validates one serialized record; `where` says where it came from."""
  try:
    obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise RecordError(f"{where}: not a msgpack record ({type(e).__name__}: {e})") from e
  if not isinstance(obj, dict):
    raise RecordError(f"{where}: expected a msgpack map, got {type(obj).__name__}")
  missing, extra = _KEYS - obj.keys(), obj.keys() - _KEYS
  if missing:
    raise RecordError(f"{where}: missing field(s) {sorted(missing)}")
  if extra:
    raise RecordError(f"{where}: unknown field(s) {sorted(map(str, extra))}")
  if obj["v"] != VERSION:
    raise RecordError(f"{where}: field 'v': version {obj['v']!r} is not supported (want {VERSION})")
  record = Record(id=obj["id"], image=obj["image"], texts=obj["texts"], labels=obj["labels"])
  validate(record, where)
  return record


def shard_name(name: str, index: int, count: int) -> str:
  return f"{name}-{index:05d}-of-{count:05d}.array_record"


def write_shards(records: Iterable[Record], out_dir: str, name: str, num_shards: int) -> list[str]:
  """Writes records round-robin into `num_shards` ArrayRecord files; returns their paths.

  Each shard is written under a temporary name and renamed into place only after
  every shard is complete, so an interrupted run never leaves a file that looks
  like a finished shard (a kill between the renames leaves an incomplete set,
  which `shard_paths` rejects).
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  os.makedirs(out_dir, exist_ok=True)
  finals = [os.path.join(out_dir, shard_name(name, i, num_shards)) for i in range(num_shards)]
  temps = [f"{p}.tmp-{os.getpid()}" for p in finals]
  writers = []
  try:
    writers.extend(array_record_module.ArrayRecordWriter(t, WRITER_OPTIONS) for t in temps)
    bar = tqdm(records, desc=f"write {name}", unit="rec", disable=not sys.stderr.isatty())
    for n, record in enumerate(bar):
      writers[n % num_shards].write(encode(record, f"write_shards {name!r} input record {n}"))
    for w in writers:
      w.close()
    for t, p in zip(temps, finals):
      os.replace(t, p)
  except BaseException:
    for w in writers:
      if w.is_open():
        w.close()
    for t in temps:
      if os.path.exists(t):
        os.remove(t)
    raise
  return finals


def shard_paths(pattern_or_dir: str, name: str = "*") -> list[str]:
  """Sorted local shard paths: a directory (shards called `name`) or a glob pattern, local or in a
  bucket (`gs://...`; its shards are staged in the local cache first: fileio.local_copy).

  Raises if nothing matches, or if a matched set `x-i-of-n` lacks one of its n
  shards (e.g. a copy or a run that stopped between renames).
  """
  pattern = os.fspath(pattern_or_dir)
  if fileio.path(pattern).is_dir():
    pattern = fileio.join(pattern, f"{name}-*-of-*.array_record")
  if fileio.is_remote(pattern):
    parent, glob_part = pattern.rsplit("/", 1)
    paths = sorted(os.fspath(p) for p in fileio.path(parent).glob(glob_part))
  else:
    paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f"no record shards match {pattern!r}")
  sets: dict[tuple[str, int], set[int]] = {}
  for p in paths:
    if m := _SHARD_RE.match(p):
      sets.setdefault((m[1], int(m[3])), set()).add(int(m[2]))
  for (prefix, count), found in sets.items():
    if missing := sorted(set(range(count)) - found):
      raise FileNotFoundError(f"shard set {prefix}-*-of-{count:05d} lacks shard(s) {missing}")
  counts_by_prefix: dict[str, list[int]] = {}
  for prefix, count in sets:
    counts_by_prefix.setdefault(prefix, []).append(count)
  for prefix, counts in counts_by_prefix.items():
    if len(counts) > 1:  # e.g. an old run's shards beside a new one with another shard count
      raise ValueError(f"{prefix}: several shard sets ({', '.join(f'-of-{c:05d}' for c in sorted(counts))}); "
                       "remove the stale one")
  return [fileio.local_copy(p) for p in paths]


def read_shard(path: str) -> list[bytes]:
  """Every raw record of one shard, in order (for tools and tests, not training)."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.read_all()
  finally:
    reader.close()
