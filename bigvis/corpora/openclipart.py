"""OpenClipArt 0.18 from Debian (`openclipart-png` + `openclipart-svg`) as records.

    python tools/prepare.py openclipart --out runs/data/openclipart [--board_text]

Source: 6,900 PNG files under /usr/share/openclipart/png/<folder>/, plus 1,221 symlinks that list
an image in further folders; the SVG twin at the same path carries the metadata. Public domain
(Creative Commons Public Domain Dedication, per openclipart.org and debian/copyright).

One record per distinct image (files grouped by content hash, so a symlinked or copied image is
one record listing every folder it sits in):
  id        the image's path without .png, e.g. 'animals/birds/aquila_stilizzata_01'
  image     PNG, downscaled to at most 256 px on the long side (the source is up to 29,700 px)
  texts     title, keywords (dc:subject, comma-separated, minus the author's name), description
            (dc:description, emails/URLs removed) from the SVG's RDF; board (the folder path as
            words) only with board_text=True, since keywords already repeat folder names
  labels    folder (int, e.g. 'animals/birds'), category (int, its top-level folder), folders
            (list[int], every folder the image is in); class names in the card's label_names
Filler (filtered, counted in the card): generated stars, gradient swatches and UI icon themes.
Splits by sha256 of the id: validation and test 10% each, train the rest.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import defusedxml.ElementTree as DET

from bigvis.corpora.safety import BadItem, clean_text, record_image
from bigvis.corpora.writer import Skipped, write_corpus
from bigvis.records import Record

PACKAGES = ("openclipart-png", "openclipart-svg")
DEFAULT_CACHE = os.path.join("~", ".cache", "bigvis", "sources", "openclipart")
MAX_SIDE = 256
# The source is a trusted Debian package whose largest PNGs are 105-231 Mpx renders of ordinary
# clip art (a food set, a microchip, a flag): allow those. Two 623 Mpx stop signs (5 GB to decode,
# 30 s each) stay refused as decompression bombs and show up in the card as skipped.
MAX_PIXELS = 250_000_000
LICENSE = ("Public domain: Creative Commons Public Domain Dedication (openclipart.org; "
           "see /usr/share/doc/openclipart-png/copyright)")

# Filler, matched against the path under png/. Measured on openclipart 0.18+dfsg-19.
FILLER = (
    ("generated star", re.compile(r"^shapes/stars/star_\d+pt\d+step\.png$")),  # 1375 n-point stars
    ("gradient swatch", re.compile(r"^special/gradients/|(^|/)gradient-[^/]*\.png$")),
    # Toolbar/app icon themes (flat, lemon, etiquette, gold = 70a###, plastik): UI glyphs, not clip art.
    ("UI icon theme", re.compile(r"^computer/icons/([a-z]+-theme/|70a\d+\.png$|plastik_icon_v\d+\.png$)")),
)


# --- fetching Debian packages without installing them ---------------------------------------------

def fetch_debian(packages: Sequence[str], cache_dir: str) -> str:
  """Downloads and unpacks `packages` under `cache_dir` once; returns the unpacked root.

  `apt-get download` + `dpkg-deb -x`: no root install. .deb files already in cache_dir/debs are
  used as they are (copy them there on a machine without apt).
  """
  cache_dir = os.path.expanduser(cache_dir)
  root, debs = os.path.join(cache_dir, "root"), os.path.join(cache_dir, "debs")
  done = os.path.join(root, ".complete")
  if os.path.exists(done):
    return root
  os.makedirs(debs, exist_ok=True)

  def have(pkg):
    return next((os.path.join(debs, f) for f in sorted(os.listdir(debs))
                 if f.startswith(f"{pkg}_") and f.endswith(".deb")), None)

  missing = [p for p in packages if not have(p)]
  if missing:
    if not shutil.which("apt-get"):
      raise RuntimeError(f"need Debian packages {missing} but apt-get is not on PATH: download "
                         f"the .deb files elsewhere and put them in {debs}")
    try:
      _run(["apt-get", "download", *missing], debs)
    except RuntimeError:
      print(f"apt-get download {' '.join(missing)} failed; running apt-get update (needs root) "
            "and trying again", flush=True)
      _run(["apt-get", "update"], debs)
      _run(["apt-get", "download", *missing], debs)
  if not shutil.which("dpkg-deb"):
    raise RuntimeError(f"dpkg-deb is not on PATH; it is needed to unpack the .deb files in {debs}")
  tmp = tempfile.mkdtemp(prefix=".unpack-", dir=cache_dir)
  try:
    for pkg in packages:
      _run(["dpkg-deb", "-x", have(pkg), tmp], debs)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)  # complete trees only: an interrupted unpack never looks done
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  with open(done, "w") as f:
    f.write("\n".join(sorted(os.listdir(debs))) + "\n")
  return root


def _run(cmd: list[str], cwd: str) -> None:
  r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  if r.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}) in {cwd}: {r.stderr.strip()[-800:]}")


# --- scanning the tree ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipArt:
  """One distinct image: every path under png/ with these bytes, filler paths removed."""
  id: str               # primary path without .png
  path: str             # primary path (a regular file if any kept path is one)
  folders: tuple[str, ...]


@dataclass
class Catalog:
  png_dir: str
  svg_dir: str
  images: list[ClipArt]
  folder_names: list[str]       # class id -> folder path
  category_names: list[str]     # class id -> top-level folder
  filtered: dict[str, dict]     # reason -> {"images": distinct images dropped, "paths": PNG paths}
  files: int                    # regular PNG files
  links: int                    # symlinked PNG paths


def filler_reason(rel: str) -> str | None:
  return next((why for why, rx in FILLER if rx.search(rel)), None)


def scan(root: str) -> Catalog:
  """Groups the PNG tree under `root` (an unpacked package root) into distinct images."""
  png_dir = os.path.join(root, "usr", "share", "openclipart", "png")
  svg_dir = os.path.join(root, "usr", "share", "openclipart", "svg")
  if not os.path.isdir(png_dir):
    raise FileNotFoundError(f"no OpenClipArt PNG tree at {png_dir} (fetch_debian({PACKAGES}) first)")
  real_dir = os.path.realpath(png_dir)
  groups: dict[bytes, list[tuple[str, bool]]] = {}
  files = links = 0
  for dirpath, _, names in os.walk(png_dir):
    for n in names:
      if not n.endswith(".png"):
        continue
      path = os.path.join(dirpath, n)
      rel = os.path.relpath(path, png_dir).replace(os.sep, "/")
      is_link = os.path.islink(path)
      target = os.path.realpath(path)
      if not target.startswith(real_dir + os.sep) or not os.path.isfile(target):
        continue  # a link out of the tree or a dangling one: not part of the corpus
      with open(target, "rb") as f:
        digest = hashlib.sha256(f.read()).digest()
      groups.setdefault(digest, []).append((rel, is_link))
      links += is_link
      files += not is_link
  images, filtered, filtered_paths = [], Counter(), Counter()
  for paths in groups.values():
    kept = sorted((p for p in paths if not filler_reason(p[0])), key=lambda p: (p[1], p[0]))
    filtered_paths.update(r for p, _ in paths if (r := filler_reason(p)))
    if not kept:
      filtered[filler_reason(min(paths)[0])] += 1
      continue
    primary = kept[0][0]
    folders = tuple(sorted({os.path.dirname(p) for p, _ in kept}))
    images.append(ClipArt(id=primary[:-4], path=primary, folders=folders))
  images.sort(key=lambda im: im.id)
  folder_names = sorted({f for im in images for f in im.folders})
  category_names = sorted({f.split("/")[0] for f in folder_names})
  filtered_counts = {r: {"images": filtered[r], "paths": filtered_paths[r]} for r in sorted(filtered_paths)}
  return Catalog(png_dir, svg_dir, images, folder_names, category_names, filtered_counts, files, links)


# --- metadata -------------------------------------------------------------------------------------

_EMAIL_URL = re.compile(r"\S+@\S+\.\S+|\b(?:https?://|www\.)\S+")
_RDF_BLOCK = re.compile(rb"<rdf:RDF\b.*?</rdf:RDF>", re.S)
_DC = "{http://purl.org/dc/elements/1.1/}"


def _local(tag) -> str:
  return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def svg_metadata(data: bytes) -> dict[str, str]:
  """title / keywords / description of the SVG's RDF cc:Work; {} when there is none.

  defusedxml refuses entity declarations and external references, so nothing is fetched or
  expanded. For a file it refuses (a few Illustrator exports declare entities), the rdf:RDF block
  alone is parsed (it declares its own namespaces there); failing that, no texts.
  """
  try:
    tree = DET.fromstring(data)
  except Exception:  # noqa: BLE001  ParseError, EntitiesForbidden, DTDForbidden, ...
    m = _RDF_BLOCK.search(data)
    try:
      tree = DET.fromstring(m.group(0)) if m else None
    except Exception:  # noqa: BLE001
      tree = None
    if tree is None:
      return {}
  work = next((e for e in tree.iter() if _local(e.tag) == "Work"), None)
  if work is None:
    return {}

  def text(e) -> str:
    return " ".join("".join(e.itertext()).split())

  def agent(name):
    e = work.find(f"{_DC}{name}")
    return text(e).lower() if e is not None else ""

  out = {}
  if (e := work.find(f"{_DC}title")) is not None:
    out["title"] = text(e)
  if (e := work.find(f"{_DC}description")) is not None:
    out["description"] = _EMAIL_URL.sub(" ", text(e))
  if (e := work.find(f"{_DC}subject")) is not None:
    authors = {agent("creator"), agent("rights")} - {""}
    words = [text(li) for li in e.iter() if _local(li.tag) == "li"] or [text(e)]
    # Authors put their own name among the keywords; it is not about the picture.
    words = [w for w in words if w and w.lower() not in authors and "@" not in w]
    out["keywords"] = ", ".join(dict.fromkeys(words))
  return out


# --- records --------------------------------------------------------------------------------------

def _texts(svg_dir: str, im: ClipArt, board_text: bool) -> dict[str, str]:
  raw = {}
  for folder in (os.path.dirname(im.path),) + im.folders:  # the primary's SVG first
    svg = os.path.join(svg_dir, folder, os.path.basename(im.path)[:-4] + ".svg")
    if os.path.isfile(svg):
      with open(svg, "rb") as f:
        raw = svg_metadata(f.read())
      break
  if board_text:
    raw["board"] = os.path.dirname(im.path).replace("/", " ").replace("_", " ").replace("-", " ")
  texts = {}
  for k, v in raw.items():
    try:
      if (t := clean_text(v, f"texts.{k}")) is not None:
        texts[k] = t
    except BadItem:
      pass  # optional text; the image is still good
  return texts


def _make(task) -> Record | Skipped:
  """One image -> record (a top-level function so worker processes can run it)."""
  cat, im, board_text, max_pixels = task
  try:
    with open(os.path.join(cat.png_dir, im.path), "rb") as f:
      image, _ = record_image(f.read(), im.id, max_pixels=max_pixels, max_side=MAX_SIDE)
  except BadItem as e:
    return Skipped(im.id, e.reason)
  except OSError as e:
    return Skipped(im.id, f"cannot read {im.path}: {e}")
  folder = os.path.dirname(im.path)
  labels = {"folder": cat.folder_names.index(folder),
            "category": cat.category_names.index(folder.split("/")[0]),
            "folders": [cat.folder_names.index(f) for f in im.folders]}
  return Record(im.id, image, _texts(cat.svg_dir, im, board_text), labels)


def read_openclipart(cat: Catalog, *, board_text: bool = False, limit: int | None = None,
                     max_pixels: int = MAX_PIXELS, workers: int = 0) -> Iterator[Record | Skipped]:
  """Records of the catalog's images in id order (`limit`: the first n; `workers`: processes)."""
  # Small catalogs pickle quickly; ship the label vocabularies with each task.
  lite = Catalog(cat.png_dir, cat.svg_dir, [], cat.folder_names, cat.category_names, {}, 0, 0)
  tasks = [(lite, im, board_text, max_pixels) for im in cat.images[:limit]]
  if workers <= 1:
    yield from map(_make, tasks)
    return
  # spawn: safe beside jax threads. An executor (not a Pool) fails with BrokenProcessPool when a
  # worker dies (e.g. killed for memory) instead of waiting forever for its task.
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
    yield from pool.map(_make, tasks, chunksize=8)


def split_of(item_id: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
  u = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") / 2**64
  return "validation" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"


def card(cat: Catalog, *, board_text: bool) -> dict:
  return {
      "description": "OpenClipArt 0.18 clip art (Debian openclipart-png + openclipart-svg): one "
                     "record per distinct image, texts from the SVG metadata, folders as labels.",
      "source": "Debian packages " + ", ".join(PACKAGES) + " (apt-get download; dpkg-deb -x)",
      "homepage": "https://openclipart.org", "license": LICENSE,
      "attribution": "OpenClipArt contributors (author per image in the SVG metadata)",
      "label_names": {"folder": cat.folder_names, "category": cat.category_names,
                      "folders": cat.folder_names},
      "preprocessing": f"PNG downscaled (Lanczos) to <= {MAX_SIDE} px on the long side; "
                       f"images over {MAX_PIXELS} pixels refused as decompression bombs",
      "board_text": board_text,
      "filtered": {"counts": cat.filtered, "rules": {w: rx.pattern for w, rx in FILLER}},
      "source_files": {"png_files": cat.files, "png_symlinks": cat.links,
                       "distinct_images_kept": len(cat.images)},
      "splits_rule": "sha256(id): validation < 0.1 <= test < 0.2 <= train",
  }


FLAG_HELP = {  # for tools/prepare.py, which makes flags from prepare's keyword parameters
    "cache_dir": "where the .deb files and their unpacked tree are kept",
    "board_text": "add texts.board = the folder path as words (off: keywords already repeat it)",
    "limit": "the first N images (by id) only, for trials",
    "workers": "decode processes",
    "num_shards": "shards per split",
    "max_bad_fraction": "fail when more than this share of images cannot become records",
}


def prepare(out_dir: str, *, cache_dir: str = DEFAULT_CACHE, board_text: bool = False,
            limit: int | None = None, workers: int = os.cpu_count() or 1,
            num_shards: int = 1, max_bad_fraction: float = 0.01) -> dict:
  """Fetches (once), scans, and writes the corpus to `out_dir`; returns the card."""
  cat = scan(fetch_debian(PACKAGES, cache_dir))
  n = len(cat.images[:limit])
  return write_corpus(read_openclipart(cat, board_text=board_text, limit=limit, workers=workers),
                      out_dir, name="openclipart", split_of=lambda r: split_of(r.id),
                      num_shards=num_shards, card=card(cat, board_text=board_text),
                      max_bad_fraction=max_bad_fraction,
                      progress_total=n)
