"""String labels become classes: one class list per field in the card, class ids in the records.

A user's metadata says `"category": "animals"` or `"tags": ["red", "round"]`; training, embedding
and evaluation want class ids and the names behind them, as the built-in corpora give them. The
corpus writer (writer.py) does the conversion, so every tool downstream sees one kind of label:

- a field whose classes the caller's card names already (`label_names`, e.g. copied from another
  corpus by `tools/prepare.py user --label_classes_from DIR` so that its ids match a trained
  model's) has each string mapped to its position in that list while streaming; a string outside
  the list is an invalid record, skipped and counted (`to_ids`);
- any other field whose values are all strings (or lists of strings) gets the sorted list of the
  values seen as its classes (sorted, so the same input gives the same ids on every run), and the
  staged shards are rewritten once with ids (`new_class_lists`, `rewrite_shards`). A field that
  mixes single strings and lists becomes a list field ("a" -> [id of "a"]).
A field that mixes strings and ints is refused: which ids the strings would take is ambiguous.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping

from array_record.python import array_record_module
from tqdm import tqdm

from bigvis import records
from bigvis.records import Record

_READ_CHUNK = 1024  # records per read while rewriting a shard


def _is_list(value) -> bool:
  return isinstance(value, (list, tuple))


def to_ids(record: Record, label_names: Mapping[str, list[str]]) -> Record:
  """`record` with the string labels of named fields as class ids.

  Raises records.RecordError naming the field when a string is not one of the field's classes or
  an int id is outside them.
  """
  labels = dict(record.labels)
  for field, names in label_names.items():
    if field not in labels:
      continue
    value = labels[field]
    index = None
    converted = []
    for v in (value if _is_list(value) else [value]):
      if isinstance(v, str):
        if index is None:
          index = {n: i for i, n in enumerate(names)}
        if v not in index:
          shown = ", ".join(map(repr, names[:10])) + (", ..." if len(names) > 10 else "")
          raise records.RecordError(
              f"field 'labels.{field}': {v!r} is not one of its {len(names)} classes ({shown})")
        converted.append(index[v])
      else:
        if not 0 <= v < len(names):
          raise records.RecordError(
              f"field 'labels.{field}': class id {v} is outside label_names[{field!r}] "
              f"({len(names)} names)")
        converted.append(v)
    labels[field] = converted if _is_list(value) else converted[0]
  return dataclasses.replace(record, labels=labels)


def new_class_lists(kinds: Mapping[str, set[str]], values: Mapping[str, set],
                    label_names: Mapping[str, list[str]]) -> dict[str, list[str]]:
  """Sorted class lists for the unnamed fields whose values were strings.

  kinds: field -> value kinds seen ('int', 'str', 'list[int]', 'list[str]');
  values: field -> the distinct values seen. Raises ValueError for a field mixing ints and strings.
  """
  out = {}
  for field in sorted(kinds):
    if field in label_names:
      continue
    element_kinds = {k.removeprefix("list[").removesuffix("]") for k in kinds[field]}
    if "str" not in element_kinds:
      continue
    if element_kinds != {"str"}:
      raise ValueError(f"label field {field!r} mixes {' and '.join(sorted(kinds[field]))} values; "
                       "give it strings only (they become classes) or ints only (class ids)")
    out[field] = sorted(values[field])
  return out


def rewrite_shards(paths: list[str], new_names: Mapping[str, list[str]],
                   list_fields: set[str], desc: str) -> None:
  """Rewrites staged shards in place (temp file + rename) with the string labels of `new_names`'
  fields as ids; `list_fields`: those of them to store as lists (single values too)."""
  index = {f: {n: i for i, n in enumerate(names)} for f, names in new_names.items()}
  total = 0
  readers = []
  for p in paths:
    readers.append(array_record_module.ArrayRecordReader(p))
    total += readers[-1].num_records()
  bar = tqdm(total=total, desc=desc, unit="rec", disable=None, file=sys.stderr)
  try:
    for path, reader in zip(paths, readers):
      tmp = f"{path}.ids-tmp"
      writer = array_record_module.ArrayRecordWriter(tmp, records.WRITER_OPTIONS)
      try:
        n = reader.num_records()
        for start in range(0, n, _READ_CHUNK):
          for k, raw in enumerate(reader.read(start, min(start + _READ_CHUNK, n))):
            record = records.decode(raw, f"{path} record {start + k}")
            labels = dict(record.labels)
            for field, ids in index.items():
              if field in labels:
                value = labels[field]
                converted = [ids[v] for v in (value if _is_list(value) else [value])]
                labels[field] = converted if _is_list(value) or field in list_fields else converted[0]
            writer.write(records.encode(dataclasses.replace(record, labels=labels), path))
          bar.update(min(_READ_CHUNK, n - start))
      except BaseException:
        writer.close()
        os.remove(tmp)
        raise
      writer.close()
      reader.close()
      os.replace(tmp, path)
  finally:
    bar.close()
    for reader in readers:
      if reader.is_open():
        reader.close()
