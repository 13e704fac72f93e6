"""Safe readers for a user's own data: every kind of bad item is skipped with its reason."""

import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from bigvis import records
from bigvis.corpora import safety, user
from bigvis.corpora.writer import Skipped, TooManyBadItems, read_card, write_corpus


def _img(fmt, size=(48, 32), seed=0):
  # Noise, so the compressed data is long and a truncation lands inside the pixel data.
  px = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(px).save(buf, format=fmt)
  return buf.getvalue()


def _bomb_png(w=100_000, h=100_000):
  """A valid PNG header claiming w x h pixels, with a few bytes of data: PIL reads the size only."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


PNG, JPEG = _img("PNG", seed=1), _img("JPEG", seed=2)
BAD = {
    "garbage": (b"this is not an image at all", "corrupt image"),
    "truncated_png": (PNG[: len(PNG) // 2], "corrupt image"),
    "truncated_jpeg": (JPEG[: len(JPEG) // 2], "corrupt image"),
    "bomb": (_bomb_png(), "decompression bomb"),
    "empty": (b"", "empty image file"),
}


def _reasons(items):
  return {i.id: i.reason for i in items if isinstance(i, Skipped)}


def _records(items):
  return {i.id: i for i in items if isinstance(i, records.Record)}


# --- safety ---------------------------------------------------------------------------------------

def test_check_image_accepts_good_and_names_each_bad_kind():
  assert safety.check_image(PNG, "x") == (48, 32)
  assert safety.check_image(JPEG, "x") == (48, 32)
  for name, (data, reason) in BAD.items():
    with pytest.raises(safety.BadItem) as e:
      safety.check_image(data, name)
    assert e.value.reason.startswith(reason), (name, e.value.reason)
    assert name in str(e.value)  # `where` is in the message, not in the reason


def test_bomb_refused_from_header_before_decoding():
  # 1e10 RGB pixels would need 30 GB; refusing it from the header is instant and allocates nothing.
  with pytest.raises(safety.BadItem, match="decompression bomb"):
    safety.check_image(_bomb_png(), "bomb")
  # The limit is ours, not PIL's: just over a small limit is refused too, and PIL's global is restored.
  before = Image.MAX_IMAGE_PIXELS
  with pytest.raises(safety.BadItem, match="decompression bomb"):
    safety.check_image(_bomb_png(101, 100), "small", max_pixels=10_000)
  assert Image.MAX_IMAGE_PIXELS == before


def test_record_image_keeps_png_jpeg_and_converts_the_rest():
  assert safety.record_image(PNG, "x") == (PNG, (48, 32))  # byte-for-byte
  for fmt in ("WEBP", "GIF", "BMP"):
    out, size = safety.record_image(_img(fmt), fmt)
    assert out.startswith(b"\x89PNG") and size == (48, 32)
  with pytest.raises(safety.BadItem, match="unsupported image format TIFF"):
    safety.record_image(_img("TIFF"), "tiff")
  small, size = safety.record_image(_img("JPEG", size=(600, 300)), "big", max_side=256)
  assert small.startswith(b"\xff\xd8") and size == (256, 128)


def test_clean_text():
  assert safety.clean_text("  Cafe\u0301\x00\x07 au\tlait\r\n", "t") == "Café au lait"  # NFC, controls
  assert safety.clean_text("caf\xc3\xa9".encode("latin-1"), "t") == "café"
  with pytest.raises(safety.BadItem, match=r"not UTF-8 in texts\.caption"):
    safety.clean_text(b"caf\xe9", "texts.caption")
  assert safety.clean_text(" \x00\u200b ", "t") is None  # empty after cleaning: drop the field
  with pytest.raises(safety.BadItem, match=r"empty text in texts\.title"):
    safety.clean_text("   ", "texts.title", required=True)


def test_safe_member_name():
  for ok in ("a.jpg", "dir/a.jpg", "./a.jpg", "a..b.jpg"):
    assert safety.safe_member_name(ok), ok
  for bad in ("../evil.jpg", "a/../../evil.jpg", "/etc/passwd", "C:evil", "a\\..\\b", ""):
    assert not safety.safe_member_name(bad), bad


# --- folder + JSONL -------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "images"
  (root / "cats").mkdir(parents=True)
  (root / "cats" / "a.png").write_bytes(PNG)
  (root / "cats" / "b.jpg").write_bytes(JPEG)
  (root / "c.webp").write_bytes(_img("WEBP"))
  for name, (data, _) in BAD.items():
    (root / f"{name}.img").write_bytes(data)
  (tmp_path / "outside.png").write_bytes(PNG)
  os.symlink(tmp_path / "outside.png", root / "link.png")
  lines = [
      {"image": "cats/a.png", "id": "cat-a", "title": "A  cat\x00", "caption": "e\u0301t\u00e9",
       "labels": {"species": 3, "tags": ["x", "y"]}, "url": "ignored"},
      {"image": "cats/b.jpg", "texts": {"alt": "b"}, "species": 4},
      {"file_name": "c.webp", "id": 7, "description": "   "},
      *({"image": f"{n}.img", "id": n} for n in BAD),
      {"image": "../outside.png", "id": "dotdot"},
      {"image": str(tmp_path / "outside.png"), "id": "absolute"},
      {"image": "link.png", "id": "symlink"},
      {"image": "missing.png", "id": "missing"},
      {"image": "cats/a.png", "id": "badlabel", "labels": {"x": 1.5}},
      {"id": "noimage"},
  ]
  meta = tmp_path / "meta.jsonl"
  meta.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n\n")
  return root, meta


def test_read_folder(folder):
  root, meta = folder
  items = list(user.read_folder(str(root), str(meta), label_fields=("species",)))
  recs, skipped = _records(items), _reasons(items)
  assert set(recs) == {"cat-a", "cats/b.jpg", "7"}
  a = recs["cat-a"]
  assert a.image == PNG and a.texts == {"title": "A cat", "caption": "été"}
  assert a.labels == {"species": 3, "tags": ["x", "y"]}
  assert recs["cats/b.jpg"].image == JPEG and recs["cats/b.jpg"].labels == {"species": 4}
  assert recs["cats/b.jpg"].texts == {"alt": "b"}
  assert recs["7"].image.startswith(b"\x89PNG") and recs["7"].texts == {}  # webp -> png; blank dropped
  for name, (_, reason) in BAD.items():
    assert skipped[name].startswith(reason), (name, skipped[name])
  for name in ("dotdot", "absolute", "symlink"):
    assert "leaves the image folder" in skipped[name]
  assert "cannot read image" in skipped["missing"]
  assert skipped["badlabel"].startswith("invalid record") and "labels.x" in skipped["badlabel"]
  assert "no 'image' path" in skipped["meta.jsonl:14"]
  assert skipped["meta.jsonl:15"].startswith("bad JSON line")


def test_read_folder_required_text_and_missing_input(folder, tmp_path):
  root, meta = folder
  items = list(user.read_folder(str(root), str(meta), required_texts=("description",)))
  assert "empty text in texts.description" in _reasons(items)["7"]
  assert "missing text description" in _reasons(items)["cat-a"]
  with pytest.raises(FileNotFoundError, match="nowhere"):
    list(user.read_folder(str(tmp_path / "nowhere"), str(meta)))


# --- WebDataset -----------------------------------------------------------------------------------

def _add(tar, name, data=b"", kind=tarfile.REGTYPE, linkname=""):
  info = tarfile.TarInfo(name)
  info.type, info.linkname, info.size = kind, linkname, len(data)
  tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture
def shard(tmp_path):
  path = tmp_path / "shard-00000.tar"
  with tarfile.open(path, "w") as tar:
    _add(tar, "000001.jpg", JPEG)
    _add(tar, "000001.txt", "a  photo of a cat\n".encode())
    _add(tar, "000001.json", json.dumps({"key": "000001", "caption": "old", "title": "Cat",
                                         "labels": {"animal": "cat"}}).encode())
    _add(tar, "000002.png", PNG)
    _add(tar, "000002.txt", b"caf\xe9")                  # latin-1, not UTF-8
    _add(tar, "000003.webp", _img("WEBP", seed=3))
    _add(tar, "000003.txt", b"   ")                      # empty caption: field dropped
    _add(tar, "../evil.jpg", JPEG)
    _add(tar, "/abs/evil.jpg", JPEG)
    _add(tar, "000004.jpg", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
    _add(tar, "000005.jpg", kind=tarfile.LNKTYPE, linkname="000001.jpg")
    _add(tar, "000006.jpg", kind=tarfile.CHRTYPE)
    _add(tar, "000007.txt", b"caption without an image")
    _add(tar, "000008.jpg", BAD["truncated_jpeg"][0])
    _add(tar, "000009.png", BAD["bomb"][0])
    _add(tar, "000010.jpg", JPEG[::-1])
    _add(tar, "000010.json", b"{broken")
  return path


def test_read_webdataset(shard, tmp_path):
  items = list(user.read_webdataset([str(shard)]))
  recs, skipped = _records(items), _reasons(items)
  assert set(recs) == {"000001", "000003"}
  assert recs["000001"].image == JPEG
  assert recs["000001"].texts == {"caption": "a photo of a cat", "title": "Cat"}  # .txt wins
  assert recs["000001"].labels == {"animal": "cat"}
  assert recs["000003"].texts == {} and recs["000003"].image.startswith(b"\x89PNG")
  assert skipped["000002"].startswith("text not UTF-8 in texts.caption")
  assert skipped["../evil"].startswith("unsafe member name")
  assert skipped["/abs/evil"].startswith("unsafe member name")
  assert skipped["000004"].startswith("link member") and skipped["000005"].startswith("link member")
  assert skipped["000006"].startswith("special member")
  assert skipped["000007"].startswith("no image member")
  assert skipped["000008"].startswith("corrupt image")
  assert skipped["000009"].startswith("decompression bomb")
  assert skipped["000010"].startswith("bad JSON in 000010.json")
  assert not (tmp_path.parent / "evil.jpg").exists() and not os.path.exists("/abs/evil.jpg")
  with pytest.raises(ValueError, match="not a readable tar"):
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
    list(user.read_webdataset(str(tmp_path / "junk.tar")))


# --- parquet --------------------------------------------------------------------------------------

def test_read_parquet_streams_and_skips_bad_rows(tmp_path):
  import pyarrow as pa  # A hard dependency (requirements.txt): a missing one must fail, not skip.
  import pyarrow.parquet as pq
  rows = [("k0", PNG, "zero", 0), ("k1", b"\x89PNG broken", "one", 1), ("k2", None, "two", 2),
          ("k3", JPEG, None, 3), ("k4", BAD["bomb"][0], "four", 4), ("k5", PNG[::-1], "five", 5),
          ("k6", _img("PNG", seed=6), "caf\u00e9", 6)]
  table = pa.table({"key": [r[0] for r in rows], "jpg": [r[1] for r in rows],
                    "caption": [r[2] for r in rows], "label": [r[3] for r in rows]})
  pq.write_table(table, tmp_path / "a.parquet", row_group_size=2)  # several row groups
  items = list(user.read_parquet(str(tmp_path / "a.parquet"), label_columns=("label",), batch_size=3))
  recs, skipped = _records(items), _reasons(items)
  assert set(recs) == {"k0", "k3", "k6"}
  assert recs["k0"].image == PNG and recs["k0"].texts == {"caption": "zero"} and recs["k0"].labels == {"label": 0}
  assert recs["k3"].texts == {} and recs["k6"].texts == {"caption": "café"}
  assert skipped["k1"].startswith("corrupt image") and skipped["k5"].startswith("corrupt image")
  assert skipped["k2"] == "no image bytes in column 'jpg'"
  assert skipped["k4"].startswith("decompression bomb")

  # Hugging Face layout: an `image` struct column, no key column -> FILE:ROW ids.
  struct_col = pa.array([{"bytes": PNG, "path": "a.png"}, {"bytes": None, "path": "b.png"}])
  pq.write_table(pa.table({"image": struct_col, "text": ["x", "y"]}), tmp_path / "hf.parquet")
  items = list(user.read_parquet(str(tmp_path / "hf.parquet")))
  assert _records(items)["hf.parquet:0"].texts == {"text": "x"}
  assert "hf.parquet:1" in _reasons(items)
  with pytest.raises(ValueError, match="column"):
    list(user.read_parquet(str(tmp_path / "hf.parquet"), text_columns=("nope",)))


# --- through the writer ---------------------------------------------------------------------------

def test_bad_fraction_through_write_corpus(folder, tmp_path):
  root, meta = folder
  out = tmp_path / "out"
  with pytest.raises(TooManyBadItems):  # 12 of 15 items are bad
    write_corpus(user.read_folder(str(root), str(meta)), str(out), name="user",
                 split_of=lambda r: "train", card={})
  assert read_card(str(out))["status"] == "failed"
  assert not any(f.endswith(".array_record") for f in os.listdir(out))

  card = user.prepare(str(out), format="folder", root=str(root), metadata=str(meta),
                      max_bad_fraction=0.9, val_fraction=0.5)
  assert card["status"] == "ok" and card["num_records"] == 3
  assert card["skipped"]["count"] == 12 and card["duplicates"]["count"] == 0
  got = {}
  for p in records.shard_paths(str(out)):
    for raw in records.read_shard(p):
      r = records.decode(raw, p)
      got[r.id] = r
  assert got["cat-a"].image == PNG and got["cat-a"].texts["caption"] == "été"
  assert {s: v["records"] for s, v in card["splits"].items()} == {
      s: sum(user.hash_split(i, 0.5) == s for i in got) for s in card["splits"]}


# --- string labels become classes -----------------------------------------------------------------

def _labelled_folder(tmp_path, rows, name="labelled"):
  """A folder of distinct small PNGs and a JSONL giving each the labels in `rows`."""
  root = tmp_path / name
  root.mkdir()
  lines = []
  for n, labels in enumerate(rows):
    (root / f"{n}.png").write_bytes(_img("PNG", size=(8, 8), seed=100 + n))
    lines.append({"image": f"{n}.png", "id": f"item-{n}", "caption": f"item {n}", **labels})
  meta = tmp_path / f"{name}.jsonl"
  meta.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
  return root, meta


def _stored(out):
  got = {}
  for p in records.shard_paths(str(out)):
    for raw in records.read_shard(p):
      r = records.decode(raw, p)
      got[r.id] = r.labels
  return got


STRING_ROWS = [{"category": "zoo", "tags": ["red", "round"]}, {"category": "animals"},
               {"category": "Ärger", "tags": "red"}, {"category": "animals", "tags": []},
               {"category": "zoo", "tags": ["square"]}, {"category": "bikes"}]


def test_string_labels_become_sorted_classes_and_map_back(tmp_path):
  root, meta = _labelled_folder(tmp_path, STRING_ROWS)
  out = tmp_path / "out"
  card = user.prepare(str(out), format="folder", root=str(root), metadata=str(meta),
                      label_fields=("category", "tags"), val_fraction=0.0)
  names = card["label_names"]
  assert names["category"] == ["animals", "bikes", "zoo", "Ärger"]  # sorted by code point
  assert names["tags"] == ["red", "round", "square"]
  fields = card["fields"]["labels"]
  assert fields["category"]["kind"] == "int" and fields["category"]["num_classes"] == 4
  assert fields["tags"]["kind"] == "list[int]" and fields["category"]["from_strings"]
  stored = _stored(out)
  for n, row in enumerate(STRING_ROWS):  # Ids in the records, names back through the card.
    labels = stored[f"item-{n}"]
    assert isinstance(labels["category"], int)
    assert names["category"][labels["category"]] == row["category"]
    if "tags" in row:
      want = row["tags"] if isinstance(row["tags"], list) else [row["tags"]]
      assert [names["tags"][i] for i in labels["tags"]] == want
  counts = card["splits"]["train"]["class_counts"]["category"]
  assert counts == {"animals": 2, "bikes": 1, "zoo": 2, "Ärger": 1}
  # The same input gives the same ids on a second run.
  again = user.prepare(str(tmp_path / "again"), format="folder", root=str(root),
                       metadata=str(meta), label_fields=("category", "tags"), val_fraction=0.0)
  assert again["label_names"] == names and _stored(tmp_path / "again") == stored
  # The input pipeline reads them like a built-in corpus's labels.
  from bigvis import data
  batch = next(iter(data.make_eval_dataset(
      records.shard_paths(str(out)), pp="decode|resize(8)|value_range(-1,1)",
      labels={"category": ("class", 4)}, batch_size=6, with_ids=True)))
  for i, label in zip(batch["id"], batch["labels"]["category"]):
    assert names["category"][label] == STRING_ROWS[int(i.split("-")[1])]["category"]


def test_class_lists_from_another_corpus_keep_its_ids_and_skip_unknown_values(tmp_path):
  root, meta = _labelled_folder(tmp_path, STRING_ROWS)
  first = tmp_path / "first"
  user.prepare(str(first), format="folder", root=str(root), metadata=str(meta),
               label_fields=("category",), val_fraction=0.0)
  rows = [{"category": "zoo"}, {"category": "bikes"}, {"category": "cars"}]
  root2, meta2 = _labelled_folder(tmp_path, rows, name="second")
  out = tmp_path / "second_out"
  card = user.prepare(str(out), format="folder", root=str(root2), metadata=str(meta2),
                      label_fields=("category",), val_fraction=0.0, max_bad_fraction=0.5,
                      label_classes_from=str(first))
  names = read_card(str(first))["label_names"]["category"]
  assert card["label_names"]["category"] == names
  stored = _stored(out)
  assert stored == {"item-0": {"category": names.index("zoo")},
                    "item-1": {"category": names.index("bikes")}}
  (skipped,) = card["skipped"]["items"]
  assert skipped["id"] == "item-2" and "'cars' is not one of its 4 classes" in skipped["reason"]


def test_a_field_mixing_ints_and_strings_is_refused_and_the_old_corpus_kept(tmp_path):
  root, meta = _labelled_folder(tmp_path, STRING_ROWS[:2])
  out = tmp_path / "out"
  user.prepare(str(out), format="folder", root=str(root), metadata=str(meta),
               label_fields=("category",), val_fraction=0.0)
  before = _stored(out)
  root2, meta2 = _labelled_folder(tmp_path, [{"category": 3}, {"category": "zoo"}], name="mixed")
  with pytest.raises(ValueError, match="label field 'category' mixes int and str"):
    user.prepare(str(out), format="folder", root=str(root2), metadata=str(meta2),
                 label_fields=("category",), val_fraction=0.0)
  assert _stored(out) == before and read_card(str(out))["status"] == "failed"
