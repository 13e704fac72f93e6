"""Record schema, ArrayRecord shards and the synthetic shapes corpus."""

import glob
import io
import os

import msgpack
import numpy as np
import pytest
from array_record.python import array_record_module
from PIL import Image

from bigvis import records, synthetic


def _png(size=8) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", (size, size), (10, 20, 30)).save(out, format="PNG")
  return out.getvalue()


def _record(i=0, **overrides) -> records.Record:
  fields = dict(id=f"r{i}", image=_png(), texts={"title": f"thing {i}"},
                labels={"cls": i, "name": "x", "tags": [1, 2], "words": ["a", "b"]})
  fields.update(overrides)
  return records.Record(**fields)


def _raw(**changes) -> bytes:
  obj = {"v": 1, "id": "r0", "image": _png(), "texts": {"title": "t"}, "labels": {"cls": 1}}
  for key, value in changes.items():
    if value is _DROP:
      del obj[key]
    else:
      obj[key] = value
  return msgpack.packb(obj, use_bin_type=True)


_DROP = object()


def test_round_trip():
  rec = _record(3)
  assert records.decode(records.encode(rec), "here") == rec


@pytest.mark.parametrize("raw, field", [
    (_raw(v=2), "'v'"),
    (_raw(image=_DROP), "image"),
    (_raw(labels=_DROP), "labels"),
    (_raw(image=b"GIF89a not png"), "'image'"),
    (_raw(image="a str"), "'image'"),
    (_raw(texts={"title": 7}), "'texts.title'"),
    (_raw(texts=["not", "a map"]), "'texts'"),
    (_raw(labels={"cls": 1.5}), "'labels.cls'"),
    (_raw(labels={"cls": True}), "'labels.cls'"),
    (_raw(labels={"cls": [1, "a"]}), "'labels.cls'"),
    (_raw(labels={"cls": {"nested": 1}}), "'labels.cls'"),
    (_raw(id=""), "'id'"),
    (_raw(id=5), "'id'"),
    (_raw(extra=1), "extra"),
    (b"\xc1\xff garbage", "msgpack"),
    (msgpack.packb([1, 2]), "map"),
])
def test_bad_records_name_where_and_field(raw, field):
  with pytest.raises(records.RecordError) as e:
    records.decode(raw, "s.array_record record 17")
  assert "s.array_record record 17" in str(e.value)
  assert field in str(e.value)


def test_encode_validates():
  with pytest.raises(records.RecordError, match="'image'"):
    records.encode(_record(image=b"nope"))


def test_write_shards_round_robin_and_read_back(tmp_path):
  recs = [_record(i) for i in range(7)]
  paths = records.write_shards(recs, str(tmp_path), "train", 3)
  assert [os.path.basename(p) for p in paths] == [
      f"train-0000{i}-of-00003.array_record" for i in range(3)]
  assert records.shard_paths(str(tmp_path), "train") == paths
  assert records.shard_paths(str(tmp_path / "train-*")) == paths
  for shard, path in enumerate(paths):
    reader = array_record_module.ArrayRecordReader(path)
    assert "group_size:1," in reader.writer_options_string()  # cheap random access
    raw = reader.read_all()
    reader.close()
    assert [records.decode(r, path) for r in raw] == recs[shard::3]
  assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_write_shards_interrupted_leaves_nothing(tmp_path):
  def gen():
    for i in range(5):
      yield _record(i)
    raise RuntimeError("source broke")

  with pytest.raises(RuntimeError, match="source broke"):
    records.write_shards(gen(), str(tmp_path), "train", 2)
  assert glob.glob(str(tmp_path / "train-*-of-*.array_record")) == []
  assert os.listdir(tmp_path) == []  # no temporary files either


def test_write_shards_rejects_invalid_record(tmp_path):
  with pytest.raises(records.RecordError, match="input record 1: field 'id'"):
    records.write_shards([_record(0), _record(1, id="")], str(tmp_path), "x", 1)
  assert os.listdir(tmp_path) == []


def test_shard_paths_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no record shards"):
    records.shard_paths(str(tmp_path), "train")
  paths = records.write_shards([_record(i) for i in range(3)], str(tmp_path), "train", 3)
  os.remove(paths[1])
  with pytest.raises(FileNotFoundError, match=r"lacks shard\(s\) \[1\]"):
    records.shard_paths(str(tmp_path), "train")
  for p in paths[::2]:
    os.remove(p)
  # A rerun with another shard count beside an old set: training would silently read both.
  records.write_shards([_record(i) for i in range(4)], str(tmp_path), "train", 2)
  records.write_shards([_record(i) for i in range(4)], str(tmp_path), "train", 4)
  with pytest.raises(ValueError, match="several shard sets"):
    records.shard_paths(str(tmp_path), "train")


def test_synthetic_deterministic_and_valid(tmp_path):
  a = synthetic.make_shapes_corpus(str(tmp_path / "a"), num_records=12, image_size=24, seed=5)
  b = synthetic.make_shapes_corpus(str(tmp_path / "b"), num_records=12, image_size=24, seed=5)
  c = synthetic.make_shapes_corpus(str(tmp_path / "c"), num_records=12, image_size=24, seed=6)
  read = lambda paths: [r for p in paths for r in records.read_shard(p)]  # noqa: E731
  assert read(a) == read(b)
  assert read(a) != read(c)
  recs = [records.decode(r, "synthetic") for r in read(a)]
  assert len({r.id for r in recs}) == 12
  for r in recs:
    image = Image.open(io.BytesIO(r.image))
    assert image.size == (24, 24) and image.mode == "RGB"
    shape, color = r.labels["shape"], r.labels["color"]
    assert 0 <= shape < synthetic.NUM_SHAPES and 0 <= color < synthetic.NUM_COLORS
    assert r.labels["identity"] == shape * synthetic.NUM_COLORS + color < synthetic.NUM_IDENTITIES
    words = [synthetic.TAG_WORDS[t] for t in r.labels["tags"]]
    assert all(0 <= t < synthetic.NUM_TAGS for t in r.labels["tags"])
    assert synthetic.SHAPES[shape] in words and synthetic.COLOR_NAMES[color] in words
    assert r.texts["title"] == f"{synthetic.COLOR_NAMES[color]} {synthetic.SHAPES[shape]}"
    assert r.texts["description"]


def test_synthetic_images_vary():
  pixels = [np.asarray(Image.open(io.BytesIO(synthetic.make_record(i, image_size=16).image)))
            for i in range(4)]
  assert all(not np.array_equal(pixels[0], p) for p in pixels[1:])
  val = synthetic.make_record(0, image_size=16, name="validation")
  assert val.image != synthetic.make_record(0, image_size=16).image
