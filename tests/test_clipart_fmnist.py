"""OpenClipArt and Fashion-MNIST from the real Debian packages (fetched once into ~/.cache/bigvis)."""

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from bigvis import records
from bigvis.corpora import fashion_mnist, openclipart


def _fetch(module):
  # Every machine of this project (dev and CI) is Debian with apt: a failed fetch is a failure.
  return openclipart.fetch_debian(module.PACKAGES, module.DEFAULT_CACHE)


@pytest.fixture(scope="module")
def catalog():
  return openclipart.scan(_fetch(openclipart))


@pytest.fixture(scope="module")
def fmnist_dir():
  return f"{_fetch(fashion_mnist)}/{fashion_mnist.DATA_SUBDIR}"


def _pick(cat, *ids):
  by_id = {im.id: im for im in cat.images}
  return dataclasses.replace(cat, images=[by_id[i] for i in ids])


# --- OpenClipArt ----------------------------------------------------------------------------------

def test_openclipart_scan_counts_and_filter(catalog):
  assert catalog.files == 6900 and catalog.links > 1000
  f = catalog.filtered
  assert f["generated star"]["images"] > 1300
  assert f["UI icon theme"]["images"] > 1000
  assert f["gradient swatch"]["paths"] > 100  # 117 links to one swatch
  assert 3500 < len(catalog.images) < 5000
  assert not any(openclipart.filler_reason(p) for im in catalog.images for p in [im.path])
  assert 100 < len(catalog.folder_names) < 170 and len(catalog.category_names) == 22
  assert "animals/birds/penguin" in catalog.folder_names and "shapes/stars" in catalog.folder_names
  assert len({im.id for im in catalog.images}) == len(catalog.images)
  # Symlinked copies are one image listing every folder it sits in.
  floppy = next(im for im in catalog.images if im.id == "computer/floppy_frederic_moser_01")
  assert floppy.folders == ("computer", "computer/icons", "computer/icons/applications", "office")


def test_openclipart_records(catalog):
  ids = ("animals/birds/penguin/plush_tux_anita_01", "computer/floppy_frederic_moser_01",
         "food/fruit/apple_mateya_01")  # the last is 10524x16000 px at the source
  recs = list(openclipart.read_openclipart(_pick(catalog, *ids)))
  assert [r.id for r in recs] == list(ids) and all(isinstance(r, records.Record) for r in recs)
  tux, floppy, apple = recs
  assert tux.texts == {"title": "Plush Tux", "keywords": "penguin, tux, computer, linux"}  # no author
  # This SVG declares XML entities: only its RDF block is parsed, nothing is expanded.
  assert floppy.texts["title"] == "Floppy" and "storage" in floppy.texts["keywords"]
  names = catalog.folder_names
  assert names[tux.labels["folder"]] == "animals/birds/penguin"
  assert catalog.category_names[tux.labels["category"]] == "animals"
  assert [names[i] for i in floppy.labels["folders"]] == list(
      next(im for im in catalog.images if im.id == floppy.id).folders)
  for r in recs:
    records.validate(r, "test")
    img = Image.open(io.BytesIO(r.image))
    assert img.format == "PNG" and max(img.size) <= openclipart.MAX_SIDE
  assert max(Image.open(io.BytesIO(apple.image)).size) == 256
  assert "board" not in tux.texts
  tux_board = next(openclipart.read_openclipart(_pick(catalog, ids[0]), board_text=True))
  assert tux_board.texts["board"] == "animals birds penguin"


def test_svg_metadata_resolves_no_entities():
  laughs = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b'<svg xmlns="http://www.w3.org/2000/svg"><title>&b;</title></svg>')
  external = (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
              b'<svg xmlns="http://www.w3.org/2000/svg"><metadata>&x;</metadata></svg>')
  assert openclipart.svg_metadata(laughs) == {} and openclipart.svg_metadata(external) == {}
  assert openclipart.svg_metadata(b"<svg") == {}


def test_openclipart_prepare_small(tmp_path):
  card = openclipart.prepare(str(tmp_path), limit=40, workers=1)
  assert card["status"] == "ok" and card["num_records"] + card["duplicates"]["count"] == 40
  assert set(card["label_names"]) == {"folder", "category", "folders"}
  assert card["filtered"]["counts"]["generated star"]["images"] > 1300
  assert "Public domain" in card["license"]
  paths = records.shard_paths(str(tmp_path))
  first = records.decode(records.read_shard(paths[0])[0], paths[0])
  assert 0 <= first.labels["folder"] < len(card["label_names"]["folder"])


# --- Fashion-MNIST --------------------------------------------------------------------------------

def test_fashion_mnist_files(fmnist_dir):
  images, labels = fashion_mnist.load_split(fmnist_dir, "train")
  assert images.shape == (60000, 28, 28) and images.dtype == np.uint8 and labels.shape == (60000,)
  assert np.bincount(labels).tolist() == [6000] * 10
  test_images, test_labels = fashion_mnist.load_split(fmnist_dir, "test")
  assert test_images.shape == (10000, 28, 28) and np.bincount(test_labels).tolist() == [1000] * 10


def test_fashion_mnist_records_and_splits(fmnist_dir, tmp_path):
  recs = list(fashion_mnist.read_fashion_mnist(fmnist_dir, limit=3))
  assert [r.id for r in recs] == ["train/00000", "train/00001", "train/00002",
                                  "test/00000", "test/00001", "test/00002"]
  images, labels = fashion_mnist.load_split(fmnist_dir, "train")
  r = recs[0]
  assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.image))), images[0])  # lossless
  assert r.labels == {"class": int(labels[0])}
  assert r.texts == {"title": fashion_mnist.CLASS_NAMES[labels[0]]}
  val = fashion_mnist.validation_ids(60000)
  assert len(val) == 5000 and val == fashion_mnist.validation_ids(60000)
  card = fashion_mnist.prepare(str(tmp_path), limit=240)
  assert card["status"] == "ok"
  counts = {s: v["records"] for s, v in card["splits"].items()}
  assert counts["test"] == 240 and counts["validation"] == 20
  assert counts["train"] + card["duplicates"]["count"] == 220
  assert card["label_names"]["class"][9] == "Ankle boot" and "MIT" in card["license"]


def test_read_idx_rejects_bad_files(tmp_path):
  bad = tmp_path / "x-idx1-ubyte"
  bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
  with pytest.raises(ValueError, match="header says"):
    fashion_mnist.read_idx(str(bad))
  bad.write_bytes(b"PK\x03\x04")
  with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
    fashion_mnist.read_idx(str(bad))
