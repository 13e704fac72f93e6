"""The emoji corpus: the same emoji drawn by several vendors, with multilingual keywords.

    python tools/prepare.py emoji --out runs/data/emoji

Sources (npm packages, pinned by version and sha512, fetched with `npm pack`):
- emoji-datasource-<vendor>@16.0.0: 64x64 PNGs `img/<vendor>/64/*.png` and
  `emoji.json` (name, short_names, category, subcategory, skin variations).
- emojibase-data@17.0.0: per locale `<locale>/data.json`, the Unicode CLDR
  annotations (localized name + keywords) for 28 locales.

One record per (emoji sequence, vendor), id `emoji/<vendor>/<unified>`.
Texts: `name`, `short_names`, `category`, `subcategory`, `keywords_<lang>`.
Labels (class names in card['label_names']; ids depend only on emoji.json, not
on the vendors or filters chosen, so a subset agrees with the full corpus):
- identity: the exact code point sequence, skin tones included. It is what
  cross-vendor retrieval matches: thumbs-up medium and thumbs-up dark are
  different pictures of different things, and each vendor draws both.
- base_identity: the emoji ignoring skin tone (the emoji.json entry).
- category (10), subcategory (~100), vendor.
- skin_tone: 0 none, 1 = Fitzpatrick type 1-2 (U+1F3FB) ... 5 = type 6
  (U+1F3FF), 6 = mixed (two-person emoji whose people have different tones:
  neither single tone is true of the picture, so it gets its own class that a
  skin-tone head can mask). The five modifier swatches themselves get their tone.
- skin_tones: the tones present (multi-label, sorted; [] for none), so mixed
  pairs are still usable.
Splits: base emoji are hashed into train / val / test (80/10/10), so skin-tone
variants stay together and no identity is in two of them. In val and test the
query vendor (default google: it draws every emoji) is `*_query` and the other
vendors are `*_index`: retrieval must find the same emoji drawn by someone else.
Licenses: see VENDOR_LICENSES; facebook and apple images are not freely
licensed and are left out unless asked for.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Iterator, Sequence

from PIL import Image

from bigvis.corpora.writer import Skipped, write_corpus
from bigvis.records import Record

DATASOURCE_VERSION = "16.0.0"
EMOJIBASE_VERSION = "17.0.0"
# npm's dist.integrity of each pinned tarball (npm view NAME@VERSION dist.integrity).
INTEGRITY = {
    "emoji-datasource-google": "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    "emoji-datasource-twitter": "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    "emoji-datasource-facebook": "sha512-b9ZxJdB7nMWGckH1vyCjPSosaa6MJYuojPPFiQ0LmDIZS8vlG454XKcmTFKrXIMAA72O4MRJMYFhvWI8pjyciQ==",
    "emoji-datasource-apple": "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtztUdAGPYiHYhZcVKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw==",
    "emojibase-data": "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
}
VENDORS = ("google", "twitter", "facebook", "apple")  # class ids of the `vendor` label
DEFAULT_VENDORS = ("google", "twitter")
DEFAULT_QUERY_VENDOR = "google"
DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "ru", "ja", "zh", "ko")
DEFAULT_CACHE = os.path.join("~", ".cache", "bigvis", "sources", "emoji")
DEFAULT_NUM_SHARDS = {"train": 4}
IMAGE_SIZE = 64

# From emoji-datasource's README and the vendors' own licenses.
VENDOR_LICENSES = {
    "google": "Apache-2.0: Noto Emoji images (c) Google, https://github.com/googlefonts/noto-emoji "
              "(flag images from region-flags, public domain)",
    "twitter": "CC-BY-4.0: Twemoji graphics (c) Twitter, Inc and other contributors, "
               "https://github.com/jdecked/twemoji, https://creativecommons.org/licenses/by/4.0/",
    "facebook": "NOT FREELY LICENSED: Facebook images (c) Facebook, Inc.; emoji-datasource says they "
                "'have no clear licensing'. Use only where you have the rights.",
    "apple": "NOT FREELY LICENSED: Apple images (c) Apple Inc., 'not licensed for commercial usage' "
             "(emoji-datasource README). Use only where you have the rights.",
}
UNFREE_VENDORS = ("facebook", "apple")
METADATA_LICENSES = {
    "emoji.json (emoji-datasource)": "MIT, (c) 2013 Cal Henderson, https://github.com/iamcal/emoji-data",
    "keywords (emojibase-data)": "MIT, (c) Miles Johnson, https://github.com/milesj/emojibase; "
                                "derived from Unicode CLDR annotations, Unicode License v3, "
                                "https://www.unicode.org/license.txt",
}
SKIN_TONE_NAMES = ["none", "type 1-2 (light)", "type 3 (medium-light)", "type 4 (medium)",
                   "type 5 (medium-dark)", "type 6 (dark)", "mixed (two different tones)"]
MIXED_TONE = 6
_TONES = {f"1F3F{c}": i for i, c in enumerate("BCDEF", start=1)}  # Fitzpatrick modifiers
_SPLIT_SALT = "bigvis-emoji-split-v1:"
FLAG_HELP = {  # tools/prepare.py turns prepare()'s keyword parameters into flags
    "vendors": f"comma-separated, from {','.join(VENDORS)}; facebook and apple images are not "
               "freely licensed (a warning is shown)",
    "languages": "emojibase locales for keywords_<lang> texts, comma-separated, or 'all' (28)",
    "query_vendor": "vendor whose images form the *_query splits",
    "cache_dir": f"where the npm packages are kept (default {DEFAULT_CACHE})",
    "num_shards": "shards per split (default: train 4, others 1)",
    "max_bad_fraction": "fail when more than this fraction of images cannot be read",
    "categories": "only these emoji categories, comma-separated (e.g. 'Flags'), for quick tries",
    "limit": "only the first N base emoji (with their skin-tone variants), for quick tries",
}


# ---------------------------------------------------------------- fetch

def _packages(vendors: Sequence[str]) -> dict[str, str]:
  pkgs = {f"emoji-datasource-{v}": DATASOURCE_VERSION for v in vendors}
  pkgs["emojibase-data"] = EMOJIBASE_VERSION
  return pkgs


def _wanted(name: str, member: str) -> bool:
  """The few files of each tarball we use (the tarballs are 75-100 MB of sprite sheets)."""
  if name == "emojibase-data":
    return member == "package/LICENSE" or member.endswith(("/data.json", "/messages.json"))
  vendor = name.removeprefix("emoji-datasource-")
  return (member in ("package/emoji.json", "package/LICENSE", "package/README.md")
          or (member.startswith(f"package/img/{vendor}/{IMAGE_SIZE}/") and member.endswith(".png")))


def _check_integrity(tgz: str, name: str) -> None:
  h = hashlib.sha512()
  with open(tgz, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  got = "sha512-" + base64.b64encode(h.digest()).decode()
  if got != INTEGRITY[name]:
    raise RuntimeError(f"{tgz}: sha512 does not match the pinned {name} tarball "
                       f"(got {got[:30]}..., want {INTEGRITY[name][:30]}...); delete it and retry")


def _npm_pack(name: str, version: str, cache_dir: str) -> str:
  tgz = os.path.join(cache_dir, f"{name}-{version}.tgz")
  url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
  by_hand = (f"or download {url} by hand into {cache_dir}/ "
             f"(any machine with npm: `npm pack {name}@{version}`)")
  with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
    try:
      proc = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", tmp],
                            capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
      raise RuntimeError(f"npm is not installed: install Node.js and npm (e.g. `apt-get install npm`), "
                         f"{by_hand}") from None
    except subprocess.TimeoutExpired:
      raise RuntimeError(f"`npm pack {name}@{version}` timed out; check the network, {by_hand}") from None
    if proc.returncode != 0:
      raise RuntimeError(f"`npm pack {name}@{version}` failed (offline?): "
                         f"{proc.stderr.strip()[-500:]}\nFix the network, {by_hand}")
    os.replace(os.path.join(tmp, os.path.basename(tgz)), tgz)
  return tgz


def _fetch_one(name: str, version: str, cache_dir: str) -> str:
  """cache_dir/NAME-VERSION/package/...: downloaded, verified, extracted; reused when present."""
  final = os.path.join(cache_dir, f"{name}-{version}")
  if os.path.isdir(final):
    return os.path.join(final, "package")
  tgz = os.path.join(cache_dir, f"{name}-{version}.tgz")
  downloaded = not os.path.exists(tgz)
  if downloaded:
    print(f"fetching {name}@{version} with npm pack ...", file=sys.stderr)
    _npm_pack(name, version, cache_dir)
  _check_integrity(tgz, name)
  tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
  try:  # extract into a temp dir and rename: a half-extracted package never looks complete
    with tarfile.open(tgz) as tar:
      members = [m for m in tar.getmembers() if m.isfile() and _wanted(name, m.name)]
      tar.extractall(tmp, members=members, filter="data")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if downloaded:
    os.remove(tgz)  # the extracted subset is all we read
  return os.path.join(final, "package")


def fetch(cache_dir: str | None = None, vendors: Sequence[str] = DEFAULT_VENDORS) -> dict:
  """Downloads (once) the pinned packages; returns {'emoji_json', 'emojibase', 'images': {vendor: dir}}."""
  cache_dir = os.path.expanduser(cache_dir or DEFAULT_CACHE)
  os.makedirs(cache_dir, exist_ok=True)
  _check_vendors(vendors)
  roots = {n: _fetch_one(n, v, cache_dir) for n, v in _packages(vendors).items()}
  first = roots[f"emoji-datasource-{vendors[0]}"]
  return {"emoji_json": os.path.join(first, "emoji.json"),
          "emojibase": roots["emojibase-data"],
          "images": {v: os.path.join(roots[f"emoji-datasource-{v}"], "img", v, str(IMAGE_SIZE))
                     for v in vendors}}


def _check_vendors(vendors: Sequence[str]) -> None:
  if not vendors or any(v not in VENDORS for v in vendors) or len(set(vendors)) != len(vendors):
    raise ValueError(f"vendors must be distinct names from {VENDORS}, got {list(vendors)}")


# ---------------------------------------------------------------- catalog

def _char(unified: str) -> str:
  return "".join(chr(int(h, 16)) for h in unified.split("-"))


def _norm(hexcode: str) -> str:
  """Emojibase drops the FE0F variation selector where emoji-datasource keeps it."""
  return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def tones_of(unified: str) -> list[int]:
  """Fitzpatrick types in a code point sequence, in order (1 = U+1F3FB ... 5 = U+1F3FF)."""
  return [_TONES[p] for p in unified.upper().split("-") if p in _TONES]


def skin_tone_label(unified: str) -> int:
  tones = set(tones_of(unified))
  return 0 if not tones else tones.pop() if len(tones) == 1 else MIXED_TONE


@functools.lru_cache(maxsize=4)
def _load_catalog(emoji_json: str) -> dict:
  """Every image-able sequence in emoji.json order, plus the label vocabularies."""
  with open(emoji_json, encoding="utf-8") as f:
    entries = sorted(json.load(f), key=lambda e: e["sort_order"])
  seqs, names = [], {"category": [], "subcategory": []}
  for base_id, e in enumerate(entries):
    for key in ("category", "subcategory"):
      if e[key] not in names[key]:
        names[key].append(e[key])
    variants = [e] + list((e.get("skin_variations") or {}).values())
    for v in variants:
      seqs.append({"unified": v["unified"], "image": v["image"], "base": e, "base_id": base_id,
                   "has_img": {vd: bool(v.get(f"has_img_{vd}")) for vd in VENDORS}})
  return {"seqs": seqs, "names": names}


@functools.lru_cache(maxsize=64)
def _load_locale(emojibase: str, locale: str) -> dict[str, tuple[str, list[str]]]:
  """normalized hexcode -> (localized name, keywords); skin variants inherit the base keywords."""
  path = os.path.join(emojibase, locale, "data.json")
  if not os.path.exists(path):
    have = sorted(d for d in os.listdir(emojibase) if os.path.exists(os.path.join(emojibase, d, "data.json")))
    raise ValueError(f"no emojibase locale {locale!r} ({path}); available: {', '.join(have)}")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  out = {}
  for e in data:
    tags = e.get("tags") or []
    out[_norm(e["hexcode"])] = (e.get("label", ""), tags)
    for s in e.get("skins") or []:
      out[_norm(s["hexcode"])] = (s.get("label", ""), tags)
  return out


def available_languages(paths: dict) -> list[str]:
  root = paths["emojibase"]
  return sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "data.json")))


def label_names(paths: dict) -> dict[str, list[str]]:
  cat = _load_catalog(paths["emoji_json"])
  en = _load_locale(paths["emojibase"], "en")
  identity = []
  for s in cat["seqs"]:
    label = en.get(_norm(s["unified"]), (s["base"]["name"].lower(), []))[0]
    identity.append(f"{_char(s['unified'])} {label}")
  # CLDR's English names (emoji.json's are older Unicode character names); bases come first
  base_names = [identity[i] for i, s in enumerate(cat["seqs"])
                if s["unified"] == s["base"]["unified"]]
  return {"identity": identity, "base_identity": base_names, **cat["names"],
          "skin_tone": list(SKIN_TONE_NAMES), "skin_tones": SKIN_TONE_NAMES[:MIXED_TONE],
          "vendor": list(VENDORS)}


def _selected(paths: dict, categories: Sequence[str] | None, limit: int | None) -> list[tuple[int, dict]]:
  """(identity id, sequence) for the chosen base emoji: `limit` first ones of `categories`."""
  out, bases = [], set()
  for identity, s in enumerate(_load_catalog(paths["emoji_json"])["seqs"]):
    if categories is not None and s["base"]["category"] not in categories:
      continue
    if s["base_id"] not in bases:
      if limit is not None and len(bases) >= limit:
        continue
      bases.add(s["base_id"])
    out.append((identity, s))
  return out


def count_items(paths: dict, *, vendors: Sequence[str] = DEFAULT_VENDORS,
                categories: Sequence[str] | None = None, limit: int | None = None) -> int:
  return sum(s["has_img"][v] for _, s in _selected(paths, categories, limit) for v in vendors)


def items(paths: dict, *, vendors: Sequence[str] = DEFAULT_VENDORS,
          languages: Sequence[str] = DEFAULT_LANGUAGES,
          categories: Sequence[str] | None = None, limit: int | None = None
          ) -> Iterator[Record | Skipped]:
  """One record per (sequence, vendor) that the vendor draws; `categories`/`limit` pick base emoji."""
  _check_vendors(vendors)
  names = label_names(paths)
  cat_ids = {n: i for i, n in enumerate(names["category"])}
  sub_ids = {n: i for i, n in enumerate(names["subcategory"])}
  locales = {lang: _load_locale(paths["emojibase"], lang) for lang in languages}
  for identity, s in _selected(paths, categories, limit):
    base, unified = s["base"], s["unified"]
    key = _norm(unified)
    texts = {"name": base["name"].lower(), "short_names": " ".join(base["short_names"]),
             "category": base["category"], "subcategory": base["subcategory"]}
    en_label = locales.get("en", {}).get(key, ("", []))[0]
    if tones_of(unified) and ":" in en_label:  # "thumbs up: medium skin tone" -> add the tone words
      texts["name"] += ":" + en_label.split(":", 1)[1]
    for lang, table in locales.items():
      if key in table:
        label, tags = table[key]
        words = list(dict.fromkeys(w for w in [label, *tags] if w))
        if words:
          texts[f"keywords_{lang.replace('-', '_')}"] = ", ".join(words)
    labels = {"identity": identity, "base_identity": s["base_id"],
              "category": cat_ids[base["category"]], "subcategory": sub_ids[base["subcategory"]],
              "skin_tone": skin_tone_label(unified), "skin_tones": sorted(set(tones_of(unified)))}
    for vendor in vendors:
      if not s["has_img"][vendor]:
        continue  # not drawn by this vendor: reported in the card, not an error
      rid = f"emoji/{vendor}/{unified}"
      path = os.path.join(paths["images"][vendor], s["image"])
      try:
        with open(path, "rb") as f:
          data = f.read()
        with Image.open(io.BytesIO(data)) as im:
          im.load()
          size = im.size
      except Exception as e:  # PIL raises many types for broken files
        yield Skipped(rid, f"unreadable image {path}: {type(e).__name__}: {e}")
        continue
      if size != (IMAGE_SIZE, IMAGE_SIZE):
        yield Skipped(rid, f"image {path} is {size[0]}x{size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
        continue
      yield Record(id=rid, image=data, texts=texts,
                   labels={**labels, "vendor": VENDORS.index(vendor)})


# ---------------------------------------------------------------- splits

def base_of(paths: dict) -> dict[str, str]:
  """unified sequence -> its base emoji's unified (e.g. the handshake 1FAF1-1F3FB-200D-1FAF2-1F3FC
  -> 1F91D): skin-tone variants cannot be mapped to their base by dropping modifiers alone."""
  return {s["unified"]: s["base"]["unified"] for s in _load_catalog(paths["emoji_json"])["seqs"]}


def identity_split(base: str) -> str:
  """train / val / test (80/10/10) by a hash of the base sequence: stable across versions."""
  bucket = int(hashlib.sha256((_SPLIT_SALT + base).encode()).hexdigest()[:8], 16) % 100
  return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def make_split_of(paths: dict, query_vendor: str = DEFAULT_QUERY_VENDOR):
  """split_of(record) for write_corpus, from the record id `emoji/<vendor>/<unified>`."""
  bases = base_of(paths)

  def split_of(record: Record) -> str:
    _, vendor, unified = record.id.split("/", 2)
    split = identity_split(bases[unified])
    if split == "train":
      return split
    return f"{split}_query" if vendor == query_vendor else f"{split}_index"
  return split_of


# ---------------------------------------------------------------- prepare

def prepare(out_dir: str, *, vendors: Sequence[str] = DEFAULT_VENDORS,
            languages: Sequence[str] | str = DEFAULT_LANGUAGES,
            query_vendor: str = DEFAULT_QUERY_VENDOR, cache_dir: str | None = None,
            num_shards: int | dict[str, int] = DEFAULT_NUM_SHARDS,
            max_bad_fraction: float = 0.01, categories: Sequence[str] | None = None,
            limit: int | None = None) -> dict:
  """fetch + items + write_corpus; returns the card. languages='all' takes every locale."""
  vendors = tuple(vendors)
  _check_vendors(vendors)
  if isinstance(categories, str):
    categories = tuple(c.strip() for c in categories.split(","))
  if query_vendor not in vendors or len(vendors) < 2:
    raise ValueError(f"need the query vendor {query_vendor!r} and at least one other among the "
                     f"vendors, got {list(vendors)}")
  for v in set(vendors) & set(UNFREE_VENDORS):
    warnings.warn(f"emoji vendor {v!r}: {VENDOR_LICENSES[v]}", stacklevel=2)
  paths = fetch(cache_dir, vendors)
  if languages in ("all", ("all",)):
    languages = available_languages(paths)
  languages = tuple(languages)
  selected = _selected(paths, categories, limit)
  missing = {v: [s["unified"] for _, s in selected if not s["has_img"][v]] for v in vendors}
  card = {
      "description": (
          "The same emoji drawn by several vendors, 64x64 RGBA PNGs; one record per (emoji "
          "sequence incl. skin tone, vendor). Cross-vendor retrieval: train on train, query "
          f"*_query ({query_vendor}) against *_index (other vendors) on identities unseen in "
          "training. Skin-tone classification from the Fitzpatrick modifiers."),
      "source": (f"npm emoji-datasource-{{{','.join(vendors)}}}@{DATASOURCE_VERSION} "
                 f"(img/<vendor>/64, emoji.json); npm emojibase-data@{EMOJIBASE_VERSION} "
                 "(CLDR names and keywords per locale)"),
      "homepage": "https://github.com/iamcal/emoji-data ; https://github.com/milesj/emojibase",
      "license": "per vendor: " + "; ".join(f"{v}: {VENDOR_LICENSES[v].split(':')[0]}" for v in vendors)
                 + "; metadata MIT; keywords Unicode License v3 (CLDR)",
      "licenses": {**{f"images: {v}": VENDOR_LICENSES[v] for v in vendors}, **METADATA_LICENSES},
      "attribution": "; ".join(VENDOR_LICENSES[v].split(": ", 1)[1] for v in vendors)
                     + "; emoji data by iamcal/emoji-data; keywords from Unicode CLDR via emojibase",
      "citation": "Unicode CLDR (https://cldr.unicode.org); iamcal/emoji-data; milesj/emojibase",
      "label_names": label_names(paths),
      "label_docs": {
          "identity": "exact code point sequence incl. skin tones (what cross-vendor retrieval matches)",
          "base_identity": "the emoji ignoring skin tone",
          "skin_tone": "0 none, 1-5 = Fitzpatrick type 1-2..6 (U+1F3FB..U+1F3FF), 6 = two people "
                       "with different tones",
          "skin_tones": "tones present, multi-label",
          "vendor": "who drew the image"},
      "texts_docs": {"name": "English name (+ skin tone words)", "short_names": "Slack-style short names",
                     "keywords_<lang>": "CLDR localized name and keywords, comma-separated",
                     "category": "emoji group", "subcategory": "emoji subgroup"},
      "split_rule": ("base emoji hashed (sha256, salt 'bigvis-emoji-split-v1:') into train/val/test "
                     f"80/10/10; in val/test, vendor {query_vendor!r} -> *_query, others -> *_index"),
      "vendors": list(vendors), "query_vendor": query_vendor, "languages": list(languages),
      "packages": {n: {"version": v, "integrity": INTEGRITY[n]} for n, v in _packages(vendors).items()},
      "missing_images": {v: {"count": len(m), "unified": m} for v, m in missing.items()},
  }
  return write_corpus(
      items(paths, vendors=vendors, languages=languages, categories=categories, limit=limit),
      out_dir, name="emoji", split_of=make_split_of(paths, query_vendor), num_shards=num_shards,
      card=card, max_bad_fraction=max_bad_fraction,
      progress_total=count_items(paths, vendors=vendors, categories=categories, limit=limit))
