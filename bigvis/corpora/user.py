"""A user's own image-text data, in the layouts img2dataset writes, as records.

Three readers, each yielding `Record`s and `Skipped`s (a bad item never raises; only unusable
input, like a missing file or directory, does):

  read_folder(root, metadata_jsonl)   images under `root` + one JSON object per line:
      {"image": "cats/1.jpg",            required: path relative to root ("file_name" also accepted)
       "id": "cat-1",                    optional (default: the image path); str or int
       "texts": {"title": "..."},        optional map source -> text
       "caption": "...", "title": ...,   top-level text fields named in `text_fields`
       "labels": {"species": "cat"}}     optional map field -> int | str | list[int] | list[str];
                                         strings become classes (label_classes.py)
    Top-level keys named in `label_fields` become labels too; other keys are ignored (img2dataset
    adds url, width, status, ...). Paths that leave `root` (absolute, '..', symlinks) are skipped.
  read_webdataset(tar_paths)          WebDataset shards: members KEY.jpg|jpeg|png|webp (image),
    KEY.txt (caption -> texts["caption"]) and KEY.json (metadata, read like a JSONL line). Members
    are read in memory, never extracted; unsafe names, links and devices are skipped.
  read_parquet(paths, ...)            img2dataset parquet: an image column of bytes or a
    {"bytes": ...} struct, text/label/id columns; streamed in record batches.

Images go through `safety.record_image` (PNG/JPEG kept as they are, WebP/GIF/BMP -> PNG);
texts through `safety.clean_text` (UTF-8, NFC, no control characters; empty -> field dropped,
or the item skipped when the field is in `required_texts`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence

from bigvis import fileio, records
from bigvis.corpora.safety import BadItem, clean_text, record_image, safe_member
from bigvis.corpora.writer import Skipped, read_card, write_corpus
from bigvis.records import Record

TEXT_FIELDS = ("caption", "title", "description", "alt", "text")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_MEMBER_BYTES = 64 << 20  # a bigger tar member or parquet cell is not a sane image or caption
_JSONL_KEYS = ("image", "file_name")

Item = Record | Skipped


def make_record(item_id: str, image: bytes | None, texts: Mapping, labels: Mapping, *,
                required_texts: Sequence[str] = (), max_pixels: int | None = None) -> Item:
  """One checked record, or Skipped with the first reason it cannot be one."""
  try:
    if image is None:
      raise BadItem("no image")
    kw = {"max_pixels": max_pixels} if max_pixels else {}
    image, _ = record_image(image, item_id, **kw)
    clean = {}
    for source, raw in texts.items():
      text = clean_text(raw, f"texts.{source}", required=source in required_texts)
      if text is not None:
        clean[str(source)] = text
    for source in required_texts:
      if source not in clean:
        raise BadItem(f"missing text {source}")
    record = Record(id=item_id, image=image, texts=clean, labels=dict(labels))
    records.validate(record, item_id)
    return record
  except BadItem as e:
    return Skipped(item_id, e.reason)
  except records.RecordError as e:
    return Skipped(item_id, f"invalid record: {e}")


def _fields(meta: Mapping, text_fields: Sequence[str], label_fields: Sequence[str]) -> tuple[dict, dict]:
  """Texts and labels of one metadata object (a JSONL line or a WebDataset .json)."""
  texts = meta.get("texts") or {}
  labels = meta.get("labels") or {}
  if not isinstance(texts, Mapping) or not isinstance(labels, Mapping):
    raise BadItem("'texts' and 'labels' must be JSON objects")
  texts, labels = dict(texts), dict(labels)
  for key in text_fields:
    if meta.get(key) is not None:
      texts.setdefault(key, meta[key])
  for key in label_fields:
    if meta.get(key) is not None:
      labels.setdefault(key, meta[key])
  return texts, labels


def _inside(root_real: str, rel: str) -> str | None:
  """The real path of `rel` under root, or None if it would leave root (even through a symlink)."""
  if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
    return None
  path = os.path.realpath(os.path.join(root_real, rel))
  return path if path.startswith(root_real + os.sep) else None


def read_folder(root: str, metadata_jsonl: str, *, text_fields: Sequence[str] = TEXT_FIELDS,
                label_fields: Sequence[str] = (), required_texts: Sequence[str] = (),
                max_pixels: int | None = None) -> Iterator[Item]:
  """Records for the images listed in `metadata_jsonl` (see the module docstring)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
  if not os.path.isfile(metadata_jsonl):
    raise FileNotFoundError(f"metadata file {metadata_jsonl!r} does not exist")
  root_real = os.path.realpath(root)
  with open(metadata_jsonl, "rb") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{os.path.basename(metadata_jsonl)}:{n}"
      try:
        meta = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        yield Skipped(where, f"bad JSON line: {e}")
        continue
      if not isinstance(meta, dict):
        yield Skipped(where, "JSON line is not an object")
        continue
      rel = next((meta[k] for k in _JSONL_KEYS if k in meta), None)
      if not isinstance(rel, str) or not rel:
        yield Skipped(where, "no 'image' path in the JSON line")
        continue
      item_id = meta.get("id", rel)
      if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
      if not isinstance(item_id, str) or not item_id:
        yield Skipped(where, f"'id' must be a non-empty string or an int, got {item_id!r}")
        continue
      path = _inside(root_real, rel)
      if path is None:
        yield Skipped(item_id, f"image path {rel!r} leaves the image folder")
        continue
      try:
        texts, labels = _fields(meta, text_fields, label_fields)
        if os.path.getsize(path) > MAX_MEMBER_BYTES:
          raise BadItem(f"image file over {MAX_MEMBER_BYTES} bytes")
        with open(path, "rb") as img:
          data = img.read()
      except BadItem as e:
        yield Skipped(item_id, e.reason)
        continue
      except OSError as e:
        yield Skipped(item_id, f"cannot read image {rel!r}: {e.strerror or e}")
        continue
      yield make_record(item_id, data, texts, labels, required_texts=required_texts,
                        max_pixels=max_pixels)


def _split_key(name: str) -> tuple[str, str]:
  # WebDataset convention: the key is the path up to the first dot of the basename.
  d, base = posixpath.split(name)
  stem, _, ext = base.partition(".")
  return posixpath.join(d, stem) if d else stem, ext.lower()


def _sample(key: str, parts: dict, problem: str | None, text_fields, label_fields,
            required_texts, max_pixels) -> Item:
  if problem:
    return Skipped(key, problem)
  image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
  if image is None:
    return Skipped(key, f"no image member (has: {', '.join(sorted(parts)) or 'nothing'})")
  texts, labels = {}, {}
  try:
    if "json" in parts:
      try:
        meta = json.loads(parts["json"])
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadItem(f"bad JSON in {key}.json: {e}") from e
      if not isinstance(meta, dict):
        raise BadItem(f"{key}.json is not an object")
      texts, labels = _fields(meta, text_fields, label_fields)
  except BadItem as e:
    return Skipped(key, e.reason)
  if "txt" in parts:
    texts["caption"] = parts["txt"]  # the caption file wins over a caption copied into the json
  return make_record(key, image, texts, labels, required_texts=required_texts, max_pixels=max_pixels)


def read_webdataset(tar_paths: str | Iterable[str], *, text_fields: Sequence[str] = TEXT_FIELDS,
                    label_fields: Sequence[str] = (), required_texts: Sequence[str] = (),
                    max_pixels: int | None = None) -> Iterator[Item]:
  """Records from WebDataset tar shards (plain or compressed), read as a stream."""
  paths = [tar_paths] if isinstance(tar_paths, str) else list(tar_paths)
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"WebDataset shard {p!r} does not exist")
  args = (text_fields, label_fields, required_texts, max_pixels)
  for p in paths:
    yield from _read_tar(p, args)


def _read_tar(path: str, args: tuple) -> Iterator[Item]:
  key, parts, problem = None, {}, None
  try:
    # Streaming mode ('r|*'): one sequential pass, no seeks; a sample's members are adjacent.
    with tarfile.open(path, "r|*") as tar:
      for member in tar:
        if member.isdir():
          continue
        k, ext = _split_key(member.name)
        if k != key:
          if key is not None:
            yield _sample(key, parts, problem, *args)
          key, parts, problem = k, {}, None
        bad = safe_member(member)
        if bad is None and member.size > MAX_MEMBER_BYTES:
          bad = f"member {member.name!r} over {MAX_MEMBER_BYTES} bytes"
        if bad:
          problem = problem or bad
          continue
        f = tar.extractfile(member)
        parts[ext] = f.read() if f else b""
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f"WebDataset shard {path!r} is not a readable tar ({type(e).__name__}: {e})") from e
  if key is not None:
    yield _sample(key, parts, problem, *args)


def _bytes_of(cell) -> bytes | None:
  if isinstance(cell, dict):  # Hugging Face / img2dataset struct {"bytes": ..., "path": ...}
    cell = cell.get("bytes")
  return cell if isinstance(cell, (bytes, bytearray)) or cell is None else None


def read_parquet(paths: str | Iterable[str], *, image_column: str | None = None,
                 text_columns: Sequence[str] | None = None, label_columns: Sequence[str] = (),
                 id_column: str | None = None, required_texts: Sequence[str] = (),
                 max_pixels: int | None = None, batch_size: int = 256) -> Iterator[Item]:
  """Records from parquet files, one per row, streamed `batch_size` rows at a time.

  image_column: default 'jpg' (img2dataset) or else 'image' (Hugging Face), whichever exists.
  text_columns: default those of TEXT_FIELDS present. id_column: default 'key' if present, else
  'FILE:ROW'.
  """
  import pyarrow.parquet as pq  # only this reader needs pyarrow

  paths = [paths] if isinstance(paths, str) else list(paths)
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"parquet file {p!r} does not exist")
  for p in paths:
    pf = pq.ParquetFile(p)
    names = set(pf.schema_arrow.names)
    img_col = image_column or next((c for c in ("jpg", "image") if c in names), None)
    id_col = id_column or ("key" if "key" in names else None)
    txt_cols = list(text_columns) if text_columns is not None else [c for c in TEXT_FIELDS if c in names]
    missing = [c for c in [img_col, id_col, *txt_cols, *label_columns] if c is not None and c not in names]
    if img_col is None or missing:
      raise ValueError(f"{p}: column(s) {missing or ['jpg/image']} not found; has {sorted(names)}")
    columns = list(dict.fromkeys(c for c in [img_col, id_col, *txt_cols, *label_columns] if c))
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
      for r in batch.to_pylist():
        item_id = f"{os.path.basename(p)}:{row}" if id_col is None or r[id_col] in (None, "") else str(r[id_col])
        row += 1
        image = _bytes_of(r[img_col])
        if image is None or len(image) > MAX_MEMBER_BYTES:
          yield Skipped(item_id, f"no image bytes in column {img_col!r}" if image is None
                        else f"image cell over {MAX_MEMBER_BYTES} bytes")
          continue
        texts = {c: r[c] for c in txt_cols if r[c] is not None}
        labels = {c: r[c] for c in label_columns if r[c] is not None}
        yield make_record(item_id, image, texts, labels, required_texts=required_texts,
                          max_pixels=max_pixels)


# --- preparing a corpus --------------------------------------------------------------------------

def hash_split(item_id: str, val_fraction: float, *, salt: str = "") -> str:
  """'validation' for a stable `val_fraction` of ids (sha256 of salt+id), 'train' otherwise."""
  h = int.from_bytes(hashlib.sha256(f"{salt}{item_id}".encode()).digest()[:8], "big")
  return "validation" if h < val_fraction * 2**64 else "train"


def _csv(s: str) -> tuple[str, ...]:
  return tuple(x for x in s.split(",") if x)


def add_arguments(parser) -> None:
  """Flags for `tools/prepare.py user {folder,webdataset,parquet} ...`; dests match `prepare`."""
  sub = parser.add_subparsers(dest="format", required=True, metavar="{folder,webdataset,parquet}")
  for fmt, help_ in (("folder", "image folder + metadata JSONL"),
                     ("webdataset", "WebDataset .tar shards (img2dataset output_format=webdataset)"),
                     ("parquet", "parquet files with image bytes (img2dataset output_format=parquet)")):
    p = sub.add_parser(fmt, help=help_, description=__doc__,
                       formatter_class=parser.formatter_class)
    if fmt == "folder":
      p.add_argument("--root", required=True, help="image folder; JSONL paths are relative to it")
      p.add_argument("--metadata", required=True, help="JSONL, one object per image")
    else:
      p.add_argument("inputs", nargs="+", help=f"{fmt} files")
    if fmt == "parquet":
      p.add_argument("--image_column", default=None, help="default: jpg, else image")
      p.add_argument("--id_column", default=None, help="default: key if present, else FILE:ROW")
    p.add_argument("--name", default="user", help="corpus name in the card (default user)")
    p.add_argument("--val_fraction", type=float, default=0.05,
                   help="share of ids (by sha256) in the validation split (default 0.05)")
    p.add_argument("--max_bad_fraction", type=float, default=0.01,
                   help="fail when more than this share of items is skipped (default 0.01)")
    p.add_argument("--text_fields", type=_csv, default=None,
                   help=f"comma-separated text fields/columns (default {','.join(TEXT_FIELDS)}; "
                   "for parquet, those of them present)")
    p.add_argument("--label_fields", type=_csv, default=(),
                   help="comma-separated top-level label fields/columns")
    p.add_argument("--required_texts", type=_csv, default=(),
                   help="texts an item must have, else it is skipped")
    p.add_argument("--num_shards", type=int, default=1, help="shards per split (default 1)")
    p.add_argument("--license", default="unknown (user data)", help="license for the card")
    p.add_argument("--description", default="", help="description for the card")
    p.add_argument("--label_classes_from", default="",
                   help="a prepared corpus (or a trained run's corpus) whose card's class lists "
                   "this one keeps, so ids match; an item whose string label is not in its "
                   "field's list is skipped (default: each string field's sorted values)")


def items(fmt: str, *, root=None, metadata=None, inputs=(), text_fields=None, label_fields=(),
          required_texts=(), image_column=None, id_column=None) -> Iterator[Item]:
  """The reader for `fmt` with the given options."""
  if fmt != "parquet" and text_fields is None:
    text_fields = TEXT_FIELDS
  if fmt == "folder":
    return read_folder(root, metadata, text_fields=text_fields, label_fields=label_fields,
                       required_texts=required_texts)
  if fmt == "webdataset":
    return read_webdataset(inputs, text_fields=text_fields, label_fields=label_fields,
                           required_texts=required_texts)
  if fmt == "parquet":
    return read_parquet(inputs, image_column=image_column, id_column=id_column,
                        text_columns=text_fields, label_columns=label_fields,
                        required_texts=required_texts)
  raise ValueError(f"unknown user data format {fmt!r} (folder, webdataset, parquet)")


def prepare(out_dir: str, *, format: str, name: str = "user", val_fraction: float = 0.05,  # noqa: A002
            max_bad_fraction: float = 0.01, num_shards: int = 1, license: str = "unknown (user data)",  # noqa: A002
            description: str = "", label_classes_from: str = "", **reader_options) -> dict:
  """Writes the user's data (reader options as for `items`) as a corpus in `out_dir`; returns the card.

  String labels become classes (bigvis/corpora/label_classes.py): each field's sorted values, or
  the class lists of the corpus in `label_classes_from`.
  """
  source = reader_options.get("root") or ", ".join(reader_options.get("inputs") or ())
  extra = {}
  if label_classes_from:
    names = read_card(label_classes_from).get("label_names", {})
    if not names:
      raise ValueError(f"--label_classes_from {label_classes_from}: its card names no classes")
    extra = {"label_names": names, "label_classes_from": fileio.absolute(label_classes_from)}
  return write_corpus(
      items(format, **reader_options), out_dir, name=name,
      split_of=lambda r: hash_split(r.id, val_fraction), num_shards=num_shards,
      max_bad_fraction=max_bad_fraction,
      card={"description": description or f"User data ({format}) from {source}",
            "source": f"{format}: {source}", "license": license,
            "splits_rule": f"validation = ids whose sha256 falls in the first {val_fraction} "
                           "of its range; train = the rest", **extra})
