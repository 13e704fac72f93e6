"""Fashion-MNIST from Debian (`dataset-fashion-mnist`) as records.

    python tools/prepare.py fashion_mnist --out runs/data/fashion_mnist

The package ships the four IDX files (gzip) under /usr/share/datasets/fashion-mnist/: 60,000
train and 10,000 test 28x28 grayscale Zalando product images, 10 classes. MIT (Expat) license,
Copyright 2017 Zalando SE.

  id        'train/00042' or 'test/00042' (index in the shipped file)
  image     8-bit grayscale PNG, 28x28, pixels as shipped
  texts     title: the class name (a weak text signal, identical to the label)
  labels    class (int 0-9; names in the card's label_names)
Splits: test as shipped; validation = the 5,000 train images with the smallest sha256(id);
train = the other 55,000.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from bigvis.corpora.openclipart import fetch_debian
from bigvis.corpora.writer import Skipped, write_corpus
from bigvis.records import Record

PACKAGES = ("dataset-fashion-mnist",)
DEFAULT_CACHE = os.path.join("~", ".cache", "bigvis", "sources", "fashion_mnist")
DATA_SUBDIR = os.path.join("usr", "share", "datasets", "fashion-mnist")
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
NUM_VAL = 5000
_IDX_DTYPES = {0x08: np.uint8}  # the only type Fashion-MNIST uses


def read_idx(path: str) -> np.ndarray:
  """An IDX array (gzip or plain): magic 0 0 TYPE NDIM, NDIM big-endian uint32 sizes, then data."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4]!r})")
  ndim = data[3]
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes, file has "
                     f"{len(data) - offset}")
  return np.frombuffer(data, _IDX_DTYPES[data[2]], offset=offset).reshape(dims)


def load_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [n, 28, 28], labels uint8 [n]) of 'train' or 'test' as shipped."""
  prefix = {"train": "train", "test": "t10k"}[split]
  images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
  labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f"{data_dir}: {split} images {images.shape} do not match labels {labels.shape}")
  if labels.max(initial=0) >= len(CLASS_NAMES):
    raise ValueError(f"{data_dir}: {split} has label {labels.max()} >= {len(CLASS_NAMES)}")
  return images, labels


def _png(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")  # uint8 HxW -> mode L
  return buf.getvalue()


def read_fashion_mnist(data_dir: str, *, limit: int | None = None) -> Iterator[Record | Skipped]:
  """Train then test records (`limit`: the first n of each)."""
  for split in ("train", "test"):
    images, labels = load_split(data_dir, split)
    for i in range(min(len(images), limit or len(images))):
      c = int(labels[i])
      yield Record(f"{split}/{i:05d}", _png(images[i]), {"title": CLASS_NAMES[c]}, {"class": c})


def _rank(item_id: str) -> bytes:
  return hashlib.sha256(item_id.encode()).digest()


def validation_ids(num_train: int, num_val: int = NUM_VAL) -> frozenset[str]:
  """The `num_val` train ids with the smallest sha256: a fixed, shuffled carve-out."""
  return frozenset(sorted((f"train/{i:05d}" for i in range(num_train)), key=_rank)[:num_val])


def card() -> dict:
  return {
      "description": "Fashion-MNIST: 28x28 grayscale Zalando article images in 10 classes.",
      "source": "Debian package dataset-fashion-mnist (apt-get download; dpkg-deb -x)",
      "homepage": "https://github.com/zalandoresearch/fashion-mnist",
      "license": "MIT (Expat), Copyright 2017 Zalando SE",
      "citation": "Xiao, Rasul, Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking "
                  "Machine Learning Algorithms. arXiv:1708.07747, 2017.",
      "label_names": {"class": CLASS_NAMES},
      "splits_rule": f"test as shipped; validation = the {NUM_VAL} train ids with the smallest "
                     "sha256(id); train = the rest of the shipped train set",
  }


FLAG_HELP = {  # for tools/prepare.py, which makes flags from prepare's keyword parameters
    "cache_dir": "where the .deb file and its unpacked tree are kept",
    "limit": "the first N images of train and of test only, for trials",
    "num_shards": "shards per split",
    "max_bad_fraction": "fail when more than this share of images cannot become records",
}


def prepare(out_dir: str, *, cache_dir: str = DEFAULT_CACHE, limit: int | None = None,
            num_shards: int = 1, max_bad_fraction: float = 0.01) -> dict:
  """Fetches (once) and writes the corpus to `out_dir`; returns the card."""
  data_dir = os.path.join(fetch_debian(PACKAGES, cache_dir), DATA_SUBDIR)
  num_train = min(60000, limit or 60000)
  val = validation_ids(num_train, min(NUM_VAL, num_train // 12))

  def split_of(r: Record) -> str:
    split = r.id.split("/")[0]
    return "validation" if r.id in val else split

  return write_corpus(read_fashion_mnist(data_dir, limit=limit), out_dir, name="fashion_mnist",
                      split_of=split_of, num_shards=num_shards, card=card(),
                      max_bad_fraction=max_bad_fraction,
                      progress_total=num_train + min(10000, limit or 10000))
