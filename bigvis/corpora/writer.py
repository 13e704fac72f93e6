"""Turns a stream of records into a finished corpus directory, all or nothing.

    write_corpus(items, out_dir, name=..., split_of=..., num_shards=..., card={...})

`items` yields `records.Record`s and `Skipped`s (input items that could not
become a record, with the reason). One pass over the stream: every record is
validated, de-duplicated by the sha256 of its image bytes (the first wins),
routed to a split and appended to that split's shards. Shards are written under
`out_dir/.incoming-*/` and moved into place only when the whole corpus has
succeeded, so a crash, an exception from the stream or too many bad items leave
the previous corpus in `out_dir` as it was. The result:

    out_dir/{split}-NNNNN-of-NNNNN.array_record     (records.py schema)
    out_dir/dataset_card.json                       (read it with read_card)
    out_dir/DATASET_CARD.md                         (the same, for people)

The card is the caller's `card` dict (description, source, license,
attribution, homepage, citation, label_names: {field: [class names]}, ...)
plus what the writer measured: counts per split, fields present, duplicates,
skipped items, creation command and time, schema version and a status
('ok', or 'failed' with the error and the previous card, after TooManyBadItems).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable

from array_record.python import array_record_module
from tqdm import tqdm

from bigvis import fileio, records
from bigvis.corpora import label_classes
from bigvis.fileio import write_text_atomic
from bigvis.records import Record

CARD_JSON = "dataset_card.json"
CARD_MD = "DATASET_CARD.md"
CARD_VERSION = 1
_LIST_CAP = 1000          # skipped / duplicate ids kept in the card
_HISTOGRAM_MAX_CLASSES = 64  # per-split class counts only for small label sets
_STAGING_PREFIX = ".incoming-"


@dataclasses.dataclass(frozen=True)
class Skipped:
  """An input item that could not become a record."""
  id: str      # the item's id or path, as the user would find it
  reason: str  # e.g. 'undecodable image: cannot identify image file'


class TooManyBadItems(RuntimeError):
  """More than max_bad_fraction of the items were skipped; nothing new was written."""


def read_card(out_dir: str) -> dict:
  """The card of the corpus in `out_dir`; errors name the file."""
  path = fileio.join(out_dir, CARD_JSON)
  try:
    card = json.loads(fileio.read_text(path))
  except FileNotFoundError:
    raise FileNotFoundError(
        f"no dataset card at {path}: prepare the corpus first (tools/prepare.py)") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a valid dataset card ({e})") from e
  if not isinstance(card, dict):
    raise ValueError(f"{path}: not a valid dataset card (top level is {type(card).__name__})")
  return card


class _SplitWriter:
  """Round-robin ArrayRecord shards of one split in the staging directory."""

  def __init__(self, staging: str, split: str, num_shards: int):
    self.split, self.count = split, 0
    self.paths = [os.path.join(staging, records.shard_name(split, i, num_shards))
                  for i in range(num_shards)]
    self._writers = [array_record_module.ArrayRecordWriter(p, records.WRITER_OPTIONS)
                     for p in self.paths]

  def write(self, raw: bytes) -> None:
    self._writers[self.count % len(self._writers)].write(raw)
    self.count += 1

  def abort(self) -> None:
    for w in self._writers:
      if w.is_open():
        w.close()

  def close(self) -> list[str]:
    """Closes; with fewer records than shards, renames to `count` shards (no empty files)."""
    self.abort()
    n = len(self.paths)
    if 0 < self.count < n:  # round-robin put record i in shard i: shards >= count are empty
      for p in self.paths[self.count:]:
        os.remove(p)
      renamed = [os.path.join(os.path.dirname(p), records.shard_name(self.split, i, self.count))
                 for i, p in enumerate(self.paths[:self.count])]
      for old, new in zip(self.paths, renamed):
        os.replace(old, new)
      self.paths = renamed
    return self.paths


class _Stats:
  """What the card reports, gathered while streaming."""

  def __init__(self, label_names: dict):
    self.label_names = label_names
    self.total = self.dropped = 0
    self.skipped: list[dict] = []
    self.num_skipped = 0
    self.duplicates: list[dict] = []
    self.num_duplicates = 0
    self.texts: Counter = Counter()
    self.label_records: Counter = Counter()
    self.label_kinds: dict[str, set] = {}
    self.label_values: dict[str, set] = {}
    self.histograms: dict[str, dict[str, Counter]] = {}  # split -> field -> class name

  def skip(self, item: Skipped) -> None:
    self.num_skipped += 1
    if len(self.skipped) < _LIST_CAP:
      self.skipped.append({"id": str(item.id), "reason": str(item.reason)})

  def duplicate(self, record_id: str, first_id: str) -> None:
    self.num_duplicates += 1
    if len(self.duplicates) < _LIST_CAP:
      self.duplicates.append({"id": record_id, "duplicate_of": first_id})

  def add(self, record: Record, split: str) -> None:
    self.texts.update(k for k, v in record.texts.items() if v)
    per_split = self.histograms.setdefault(split, {})
    for field, value in record.labels.items():
      values = list(value) if isinstance(value, (list, tuple)) else [value]
      kinds = self.label_kinds.setdefault(field, set())
      if values:  # an empty list says nothing about the element type
        kind = type(values[0]).__name__
        kinds.add(f"list[{kind}]" if isinstance(value, (list, tuple)) else kind)
      self.label_records[field] += 1
      self.label_values.setdefault(field, set()).update(values)
      names = self.label_names.get(field)
      if names is not None and len(names) <= _HISTOGRAM_MAX_CLASSES:
        per_split.setdefault(field, Counter()).update(
            names[v] if isinstance(v, int) else v for v in values)
      elif names is None and values and isinstance(values[0], str):
        # String classes (named after the stream): counted while they stay few.
        if len(self.label_values[field]) <= _HISTOGRAM_MAX_CLASSES:
          per_split.setdefault(field, Counter()).update(values)
        else:
          for h in self.histograms.values():
            h.pop(field, None)


def _shard_files(out_dir: str) -> list[str]:
  return sorted(f for f in os.listdir(out_dir) if records.SHARD_FILE_RE.match(f))


def _remove_stale_staging(out_dir: str) -> None:
  """Staging dirs of runs that were killed (their pid is gone) would otherwise pile up."""
  for entry in os.listdir(out_dir):
    if not entry.startswith(_STAGING_PREFIX):
      continue
    pid = entry[len(_STAGING_PREFIX):].split("-")[0]
    try:
      os.kill(int(pid), 0)
      continue  # a live writer owns it
    except (ValueError, ProcessLookupError):
      pass
    except PermissionError:
      continue
    shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)


def _stored_kind(kinds: set[str], named: bool) -> str:
  """What the records hold: the strings of a named field were written as class ids."""
  if named and any("str" in k for k in kinds):
    kinds = {"list[int]"} if any(k.startswith("list") for k in kinds) else {"int"}
  return " | ".join(sorted(kinds)) or "list"


def _build_card(card: dict, *, name: str, stats: _Stats, splits: dict, status: str,
                out_dir: str) -> dict:
  label_names = card.get("label_names", {})
  fields = {
      "texts": {k: stats.texts[k] for k in sorted(stats.texts)},
      "labels": {
          f: {"kind": _stored_kind(stats.label_kinds[f], f in label_names),
              "from_strings": any("str" in k for k in stats.label_kinds[f]),
              "records": stats.label_records[f],
              "classes_seen": len(stats.label_values[f]),
              "num_classes": len(label_names[f]) if f in label_names else None}
          for f in sorted(stats.label_records)},
  }
  out = dict(card)
  out.update({
      "name": name,
      "status": status,
      "schema_version": records.VERSION,
      "card_version": CARD_VERSION,
      "splits": splits,
      "num_records": sum(s["records"] for s in splits.values()),
      "total_items": stats.total,
      "fields": fields,
      "dropped_by_split_of": stats.dropped,
      "duplicates": {"count": stats.num_duplicates, "items": stats.duplicates,
                     "listed": len(stats.duplicates)},
      "skipped": {"count": stats.num_skipped, "items": stats.skipped,
                  "listed": len(stats.skipped)},
      "created": {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": shlex.join([os.path.basename(sys.executable)] + sys.argv),
                  "cwd": os.getcwd(), "out_dir": os.path.abspath(out_dir)},
  })
  return out


def _render_md(card: dict) -> str:
  """The card for people; the JSON stays the source of truth."""
  lines = [f"# {card['name']}", ""]
  if card["status"] != "ok":
    lines += [f"**Status: {card['status']}** - {card.get('error', '')}", "",
              "The shards in this directory (if any) are from the previous successful run, "
              "described under `previous_card` in dataset_card.json.", ""]
  for key in ("description", "source", "homepage", "license", "attribution", "citation"):
    if card.get(key):
      lines += [f"**{key.capitalize()}:** {card[key]}", ""]
  if card.get("licenses"):
    lines += ["## Licenses", ""]
    lines += [f"- **{k}:** {v}" for k, v in card["licenses"].items()] + [""]
  lines += ["## Splits", "", "| split | records | shards |", "| --- | ---: | ---: |"]
  lines += [f"| {s} | {v['records']} | {v['shards']} |" for s, v in card["splits"].items()]
  lines += [f"| total | {card['num_records']} | |", ""]
  hist = {s: v["class_counts"] for s, v in card["splits"].items() if v.get("class_counts")}
  for field in sorted({f for h in hist.values() for f in h}):
    lines += [f"Records per `{field}`: " + "; ".join(
        f"{s}: " + ", ".join(f"{k} {n}" for k, n in h[field].items())
        for s, h in hist.items() if field in h), ""]
  f = card["fields"]
  lines += ["## Fields", "", "Texts (records that have each): " +
            (", ".join(f"`{k}` {n}" for k, n in f["texts"].items()) or "none"), "",
            "| label | kind | records | classes seen | classes |", "| --- | --- | ---: | ---: | ---: |"]
  lines += [f"| `{k}` | {v['kind']} | {v['records']} | {v['classes_seen']} | {v['num_classes'] or ''} |"
            for k, v in f["labels"].items()]
  lines.append("")
  for field, names in card.get("label_names", {}).items():
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:50]))
    more = f", ... ({len(names)} in all)" if len(names) > 50 else ""
    lines += [f"`{field}` classes: {shown}{more}", ""]
  lines += ["## Cleaning", "",
            f"- items read: {card['total_items']}; records written: {card['num_records']}",
            f"- duplicate images dropped (same sha256; first kept): {card['duplicates']['count']}",
            f"- dropped by the split rule: {card['dropped_by_split_of']}",
            f"- skipped: {card['skipped']['count']}"]
  for item in card["skipped"]["items"][:50]:
    lines.append(f"  - `{item['id']}`: {item['reason']}")
  if card["skipped"]["count"] > 50:
    lines.append(f"  - ... {card['skipped']['count'] - 50} more (first {_LIST_CAP} in dataset_card.json)")
  c = card["created"]
  lines += ["", "## Provenance", "", f"- created {c['time']} by `{c['command']}` in `{c['cwd']}`",
            f"- record schema version {card['schema_version']} (bigvis/records.py)", ""]
  return "\n".join(lines)


def _write_card(out_dir: str, card: dict) -> None:
  write_text_atomic(os.path.join(out_dir, CARD_JSON),
                json.dumps(card, indent=1, ensure_ascii=False) + "\n")
  write_text_atomic(os.path.join(out_dir, CARD_MD), _render_md(card))


def write_corpus(items: Iterable[Record | Skipped], out_dir: str, *, name: str,
                 split_of: Callable[[Record], str | None],
                 num_shards: int | dict[str, int] = 1,
                 card: dict,
                 max_bad_fraction: float = 0.01,
                 progress_total: int | None = None) -> dict:
  """Writes the corpus (see the module docstring); returns the card as written.

  split_of: split name per record ([A-Za-z0-9_]+), or None to drop the record.
  num_shards: shards per split (an int for all, or {split: n}, default 1 for others).
  progress_total: number of items, for the progress bar; it also lets the writer
    stop early once the skipped items alone exceed max_bad_fraction of it.
  Raises TooManyBadItems when skipped / items > max_bad_fraction, after writing
  a 'failed' card; the previous corpus's shards are left as they were.
  """
  label_names = card.get("label_names", {})
  os.makedirs(out_dir, exist_ok=True)
  _remove_stale_staging(out_dir)
  staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=out_dir)
  stats = _Stats(label_names)
  writers: dict[str, _SplitWriter] = {}
  seen: dict[bytes, str] = {}  # image sha256 -> first id (32 bytes + id per record)
  ids: set[str] = set()

  def shards_for(split: str) -> int:
    n = num_shards.get(split, 1) if isinstance(num_shards, dict) else num_shards
    if n < 1:
      raise ValueError(f"num_shards for split {split!r} must be >= 1, got {n}")
    return n

  def too_many_bad(total: int) -> bool:
    return total > 0 and stats.num_skipped / total > max_bad_fraction

  try:
    for item in tqdm(items, total=progress_total, desc=f"prepare {name}", unit="item",
                     disable=None, file=sys.stderr):
      stats.total += 1
      if isinstance(item, Skipped):
        stats.skip(item)
        if progress_total and too_many_bad(progress_total):
          break  # already over the limit however the rest goes
        continue
      if not isinstance(item, Record):
        raise TypeError(f"{name}: item {stats.total - 1} is a {type(item).__name__}, "
                        "expected Record or Skipped")
      try:
        raw = records.encode(label_classes.to_ids(item, label_names),
                             f"{name} item {stats.total - 1}")
      except records.RecordError as e:
        stats.skip(Skipped(str(getattr(item, "id", "?")), f"invalid record: {e}"))
        continue
      if item.id in ids:  # Ids key records downstream (TFDS, retrieval ground truth).
        stats.skip(Skipped(item.id, "duplicate id: an earlier record has the same id"))
        continue
      ids.add(item.id)
      digest = hashlib.sha256(item.image).digest()
      if digest in seen:
        stats.duplicate(item.id, seen[digest])
        continue
      seen[digest] = item.id
      split = split_of(item)
      if split is None:
        stats.dropped += 1
        continue
      if not isinstance(split, str) or not records.SPLIT_NAME_RE.match(split):
        raise ValueError(f"{name}: split_of gave {split!r} for {item.id!r}; "
                         "split names must match [A-Za-z0-9_]+")
      if split not in writers:
        writers[split] = _SplitWriter(staging, split, shards_for(split))
      writers[split].write(raw)
      stats.add(item, split)

    paths = {s: w.close() for s, w in sorted(writers.items())}
    error, error_type = None, ValueError
    new_names = {}
    if too_many_bad(max(stats.total, progress_total or 0)):
      total = max(stats.total, progress_total or 0)
      first = "; ".join(f"{s['id']}: {s['reason']}" for s in stats.skipped[:5])
      error = (f"{name}: {stats.num_skipped} of {total} items "
               f"({stats.num_skipped / total:.2%}) could not become records, over "
               f"max_bad_fraction={max_bad_fraction:.2%}. First: {first}. "
               f"All listed in {os.path.join(out_dir, CARD_JSON)}; nothing new was written.")
      error_type = TooManyBadItems
    elif not paths:
      error = f"{name}: no records to write ({stats.total} items read)"
    else:
      try:
        new_names = label_classes.new_class_lists(stats.label_kinds, stats.label_values,
                                                  label_names)
      except ValueError as e:
        error = f"{name}: {e}"
    if new_names and error is None:
      list_fields = {f for f in new_names if any(k.startswith("list") for k in stats.label_kinds[f])}
      label_classes.rewrite_shards([p for ps in paths.values() for p in ps], new_names,
                                   list_fields, f"classes {name}")
      label_names = {**label_names, **new_names}
      card = {**card, "label_names": label_names}
      stats.label_names = label_names
  except BaseException:
    for w in writers.values():
      w.abort()
    shutil.rmtree(staging, ignore_errors=True)
    raise

  splits = {}
  for s, ps in paths.items():
    splits[s] = {"records": writers[s].count, "shards": len(ps),
                 "bytes": sum(os.path.getsize(p) for p in ps)}
    if s in stats.histograms and stats.histograms[s]:
      splits[s]["class_counts"] = {f: dict(sorted(c.items()))
                                   for f, c in sorted(stats.histograms[s].items())}
  if error is not None:
    shutil.rmtree(staging, ignore_errors=True)
    failed = _build_card(card, name=name, stats=stats, splits=splits, status="failed",
                         out_dir=out_dir)
    failed["error"] = error
    try:  # The card of the shards still on disk: after an earlier failure, the one it kept.
      previous = read_card(out_dir)
      if previous.get("status") != "ok":
        previous = previous.get("previous_card")
      failed["previous_card"] = previous
    except (FileNotFoundError, ValueError):
      failed["previous_card"] = None
    _write_card(out_dir, failed)
    raise error_type(error)

  # Commit: move the new shards in, remove the old corpus's other shards, then the card.
  # Only a kill inside these few renames can mix old and new.
  new_names = set()
  for ps in paths.values():
    for p in ps:
      os.replace(p, os.path.join(out_dir, os.path.basename(p)))
      new_names.add(os.path.basename(p))
  for f in _shard_files(out_dir):
    if f not in new_names:
      os.remove(os.path.join(out_dir, f))
  shutil.rmtree(staging, ignore_errors=True)
  result = _build_card(card, name=name, stats=stats, splits=splits, status="ok", out_dir=out_dir)
  _write_card(out_dir, result)
  return result
