"""data/: prepared corpora as TFDS datasets (ArrayRecord), built and read back without TensorFlow."""

import dataclasses
import io
import json
import os
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from bigvis import fileio, synthetic
from bigvis.corpora import write_corpus
from data import bigvis_corpus, bigvis_emoji  # noqa: F401  (registers the builders)
from data import build
from tests import gcs

# TFDS 4.9.10 calls protobuf's deprecated FieldDescriptor.label().
pytestmark = pytest.mark.filterwarnings("ignore:label\\(\\) is deprecated:DeprecationWarning")

NAMES = {"shape": list(synthetic.SHAPES), "color": list(synthetic.COLOR_NAMES),
         "tags": list(synthetic.TAG_WORDS)}


def _records(n=40):
  """Shapes records, plus str / list[str] labels and some missing fields."""
  for i, r in enumerate(synthetic.shapes_records(n, image_size=32)):
    labels = {**r.labels, "shape_name": NAMES["shape"][r.labels["shape"]],
              "words": r.texts["title"].split()}
    texts = dict(r.texts)
    if i % 7 == 3:
      del labels["color"], texts["description"]
    yield dataclasses.replace(r, texts=texts, labels=labels)


def _split(r):
  i = int(r.id.rsplit("-", 1)[1])
  return "test" if i % 5 == 0 else "val_query" if i % 5 == 1 else "train"


def _write(out_dir, n=40):
  return write_corpus(_records(n), str(out_dir), name="shapes", split_of=_split,
                      num_shards={"train": 2}, card={
                          "description": "tiny shapes", "license": "CC0-1.0",
                          "citation": "none", "homepage": "https://example.org",
                          "label_names": NAMES})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  card = _write(root / "shapes")
  builder = tfds.builder("bigvis_corpus/shapes", data_dir=str(root / "tfds"),
                         corpus_dir=str(root / "shapes"))
  builder.download_and_prepare()
  return root, card, builder


def _by_id(source):
  return {source[i]["id"].decode(): source[i] for i in range(len(source))}


def test_round_trip(built):
  root, card, builder = built
  assert set(card["splits"]) == {"train", "test", "val_query"}
  info = builder.info
  assert info.file_format.value == "array_record"
  assert info.description == "tiny shapes"
  assert info.redistribution_info.license == "CC0-1.0"
  assert info.metadata["card"]["num_records"] == 40
  assert info.features["labels"]["shape"].names == NAMES["shape"]
  assert info.features["labels"]["tags"].feature.names == NAMES["tags"]
  originals = {r.id: r for r in _records()}
  for split, s in card["splits"].items():
    source = tfds.data_source("bigvis_corpus/shapes", split=split, data_dir=str(root / "tfds"))
    assert len(source) == s["records"] == info.splits[split].num_examples
    got = _by_id(source)
    assert set(got) == {i for i, r in originals.items() if _split(r) == split}
    for rid, ex in got.items():
      r = originals[rid]
      assert ex["image"] == r.image
      assert {k: v.decode() for k, v in ex["texts"].items()} == {
          "title": r.texts["title"], "description": r.texts.get("description", "")}
      labels = ex["labels"]
      assert [int(labels[k]) for k in ("shape", "identity")] == [r.labels["shape"], r.labels["identity"]]
      assert int(labels["color"]) == r.labels.get("color", -1)
      assert list(labels["tags"]) == r.labels["tags"]
      # String labels became classes when the corpus was written (corpora/label_classes.py).
      shape_names = info.features["labels"]["shape_name"].names
      word_names = info.features["labels"]["words"].feature.names
      assert shape_names[int(labels["shape_name"])] == r.labels["shape_name"]
      assert [word_names[int(w)] for w in labels["words"]] == r.labels["words"]


def test_read_only_without_the_builder_code(built):
  """The built directory describes itself: ReadOnlyBuilder needs neither data/ nor the corpus."""
  _, _, builder = built
  reader = tfds.builder_from_directory(builder.data_path)
  assert type(reader).__name__ == "ReadOnlyBuilder"
  a, b = reader.as_data_source("test"), builder.as_data_source("test")
  assert _by_id(a).keys() == _by_id(b).keys() and a[0]["image"] == b[0]["image"]
  assert reader.info.features["labels"]["color"].names == NAMES["color"]


def test_grain_map_dataset(built):
  _, card, builder = built
  source = builder.as_data_source(split="train")

  def decode(ex):
    image = np.asarray(Image.open(io.BytesIO(ex["image"])).convert("RGB"))
    return {"image": image, "shape": ex["labels"]["shape"], "id": ex["id"]}

  ds = grain.MapDataset.source(source).seed(0).shuffle().map(decode).batch(8, drop_remainder=False)
  batches = list(ds.to_iter_dataset())
  assert batches[0]["image"].shape == (8, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
  ids = [i for b in batches for i in b["id"]]
  assert len(ids) == len(set(ids)) == card["splits"]["train"]["records"]


def test_emoji_builder_finds_corpus_in_env_dir(tmp_path, monkeypatch):
  _write(tmp_path / "corpora" / "emoji")  # stands in for runs/data/emoji
  monkeypatch.setenv("BIGVIS_CORPORA", str(tmp_path / "corpora"))
  builder = tfds.builder("bigvis_emoji", data_dir=str(tmp_path / "tfds"))
  assert builder.corpus_dir == str(tmp_path / "corpora" / "emoji")
  builder.download_and_prepare()
  source = tfds.data_source("bigvis_emoji", split="val_query", data_dir=str(tmp_path / "tfds"))
  assert len(source) == 8


def test_missing_card_fails_loudly(tmp_path):
  builder = tfds.builder("bigvis_corpus/openclipart", data_dir=str(tmp_path / "tfds"),
                         corpus_dir=str(tmp_path / "nothing"))
  with pytest.raises(FileNotFoundError, match="no dataset card"):
    builder.download_and_prepare()


def test_overwrite_rebuilds_from_the_corpus_as_it_is_now(tmp_path):
  _write(tmp_path / "shapes")
  kw = dict(data_dir=str(tmp_path / "tfds"), corpus_dir=str(tmp_path / "shapes"))
  assert build.build("bigvis_corpus/shapes", **kw).info.splits["train"].num_examples == 24
  _write(tmp_path / "shapes", n=60)
  assert build.build("bigvis_corpus/shapes", **kw).info.splits["train"].num_examples == 24
  assert build.build("bigvis_corpus/shapes", overwrite=True, **kw).info.splits[
      "train"].num_examples == 36


def test_corpus_and_build_in_a_bucket(built, tmp_path):
  """Read from a bucket corpus, written to a bucket data dir (ArrayRecord's writer opens only
  local files): the upload is the whole build, and a failed rebuild leaves it as it was."""
  root, card, local = built
  with gcs.emulator() as emu:
    url = emu.make_bucket("bigvis-tfds")
    for f in (root / "shapes").iterdir():
      epath.Path(f).copy(epath.Path(f"{url}/shapes/{f.name}"))
    remote = build.build("bigvis_corpus/shapes", data_dir=f"{url}/tfds",
                         corpus_dir=f"{url}/shapes")
    assert os.fspath(remote.data_path).startswith(f"{url}/tfds/bigvis_corpus/shapes/")
    assert {s: i.num_examples for s, i in remote.info.splits.items()} == {
        s: v["records"] for s, v in card["splits"].items()}
    objects = emu.list("bigvis-tfds", "tfds/")
    assert not [o for o in objects if "incomplete" in o or "tmp" in o], objects
    copy = tmp_path / "copy"
    fileio.download_dir(os.fspath(remote.data_path), str(copy))
    got = _by_id(tfds.builder_from_directory(str(copy)).as_data_source("train"))
    want = _by_id(local.as_data_source("train"))
    assert got.keys() == want.keys()
    assert all(got[i]["image"] == want[i]["image"] for i in got)

    card_path = epath.Path(f"{url}/shapes/dataset_card.json")
    card_path.write_text(json.dumps({**card, "status": "failed", "error": "disk full"}))
    with pytest.raises(ValueError, match="disk full"):
      build.build("bigvis_corpus/shapes", data_dir=f"{url}/tfds", corpus_dir=f"{url}/shapes",
                  overwrite=True)
    assert emu.list("bigvis-tfds", "tfds/") == objects


def test_no_tensorflow():
  assert "tensorflow" not in sys.modules
