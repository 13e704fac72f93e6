"""The corpus writer (dedup, splits, card, all-or-nothing writes) and the real emoji corpus."""
import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from bigvis import records, synthetic
from bigvis.corpora import Skipped, TooManyBadItems, emoji, read_card, write_corpus
from tests.helpers import REPO

CARD = {"description": "test corpus", "source": "synthetic", "license": "CC0",
        "label_names": {"shape": list(synthetic.SHAPES)}}


def _rec(i, name="a"):
  r = synthetic.make_record(i, image_size=16, name=name)
  return records.Record(id=f"{name}{i}", image=r.image, texts=r.texts, labels={"shape": r.labels["shape"]})


def _by_parity(record):
  return "train" if int(record.id[1:]) % 2 == 0 else "val"


def _read_split(out_dir, split):
  return [records.decode(raw, p) for p in records.shard_paths(out_dir, split)
          for raw in records.read_shard(p)]


def _snapshot(out_dir):
  return {f: open(os.path.join(out_dir, f), "rb").read() for f in sorted(os.listdir(out_dir))}


@pytest.fixture
def corpus(tmp_path):
  """A finished corpus: 10 records (train 5 in 2 shards, val 5), then overwritten by tests."""
  out = str(tmp_path / "c")
  write_corpus((_rec(i) for i in range(10)), out, name="t", split_of=_by_parity,
               num_shards={"train": 2}, card=CARD)
  return out


def test_dedup_routing_card_round_trip(tmp_path):
  out = str(tmp_path / "c")
  items = [_rec(i) for i in range(6)]
  items.insert(3, records.Record("dup", items[1].image, {}, {"shape": 0}))  # same bytes as a1
  items.append(Skipped("bad.png", "undecodable image: truncated"))
  items.append(records.Record("gif", b"GIF89a...", {}, {}))  # invalid: skipped, not fatal
  items.append(records.Record("a2", _rec(50).image, {}, {"shape": 0}))  # a2 again, new image
  card = write_corpus(iter(items), out, name="t", split_of=_by_parity, num_shards=3, card=CARD,
                      max_bad_fraction=0.5, progress_total=len(items))
  assert card == read_card(out) and card["status"] == "ok"
  assert card["duplicates"]["count"] == 1
  assert card["duplicates"]["items"] == [{"id": "dup", "duplicate_of": "a1"}]
  assert card["skipped"]["count"] == 3
  assert {s["id"] for s in card["skipped"]["items"]} == {"bad.png", "gif", "a2"}
  assert {s: v["records"] for s, v in card["splits"].items()} == {"train": 3, "val": 3}
  assert card["splits"]["train"]["shards"] == 3
  assert card["fields"]["labels"]["shape"]["num_classes"] == len(synthetic.SHAPES)
  assert card["fields"]["texts"] == {"description": 6, "title": 6}
  assert card["schema_version"] == records.VERSION and card["license"] == "CC0"
  got = {r.id: r for r in _read_split(out, "train") + _read_split(out, "val")}
  assert sorted(got) == [f"a{i}" for i in range(6)]
  assert all(got[f"a{i}"].image == items[i if i < 3 else i + 1].image for i in range(6))
  assert {r.id for r in _read_split(out, "val")} == {"a1", "a3", "a5"}
  md = open(os.path.join(out, "DATASET_CARD.md")).read()
  assert "# t" in md and "bad.png" in md and "| val | 3 | 3 |" in md
  with pytest.raises(FileNotFoundError, match="dataset_card.json"):
    read_card(str(tmp_path))


def test_fewer_records_than_shards_and_old_shards_replaced(corpus):
  card = write_corpus((_rec(i, "b") for i in range(3)), corpus, name="t2",
                      split_of=lambda r: "test", num_shards=8, card=CARD)
  assert card["splits"] == {"test": {"records": 3, "shards": 3, "bytes": card["splits"]["test"]["bytes"],
                                     "class_counts": card["splits"]["test"]["class_counts"]}}
  shards = sorted(f for f in os.listdir(corpus) if f.endswith(".array_record"))
  assert shards == [records.shard_name("test", i, 3) for i in range(3)]  # old train/val gone
  assert [r.id for r in _read_split(corpus, "test")] == ["b0", "b1", "b2"]


def test_failing_stream_leaves_previous_corpus(corpus):
  before = _snapshot(corpus)

  def stream():
    for i in range(6):
      yield _rec(i, "b")
    raise OSError("disk on fire")

  with pytest.raises(OSError, match="disk on fire"):
    write_corpus(stream(), corpus, name="t", split_of=lambda r: "other", num_shards=4, card=CARD)
  assert _snapshot(corpus) == before  # no new shard names, no staging dirs, same card


def test_too_many_bad_items(corpus):
  before = {f: b for f, b in _snapshot(corpus).items() if f.endswith(".array_record")}
  items = [_rec(i, "b") for i in range(8)] + [Skipped("x/1.png", "non-UTF-8 text in title"),
                                              Skipped("x/2.png", "undecodable image")]
  with pytest.raises(TooManyBadItems, match=r"20\.00%.*10\.00%.*x/1.png: non-UTF-8"):
    write_corpus(iter(items), corpus, name="t", split_of=_by_parity, card=CARD, max_bad_fraction=0.1)
  after = _snapshot(corpus)
  assert {f: b for f, b in after.items() if f.endswith(".array_record")} == before
  assert not [f for f in after if f.startswith(".")]
  card = read_card(corpus)
  assert card["status"] == "failed" and "max_bad_fraction" in card["error"]
  assert [s["id"] for s in card["skipped"]["items"]] == ["x/1.png", "x/2.png"]
  assert card["previous_card"]["status"] == "ok" and card["previous_card"]["num_records"] == 10
  assert "failed" in open(os.path.join(corpus, "DATASET_CARD.md")).read()
  # A second failure in a row still describes the shards on disk, not the first failure.
  with pytest.raises(TooManyBadItems):
    write_corpus(iter(items), corpus, name="t", split_of=_by_parity, card=CARD, max_bad_fraction=0.1)
  again = read_card(corpus)["previous_card"]
  assert again["status"] == "ok" and again["num_records"] == 10


# ----------------------------------------------------------------- emoji (real npm packages)

@pytest.fixture(scope="module")
def emoji_paths():
  return emoji.fetch(os.environ.get("BIGVIS_EMOJI_CACHE"))  # default ~/.cache/bigvis/sources/emoji


@pytest.fixture(scope="module")
def people(emoji_paths, tmp_path_factory):
  """The 'People & Body' category (all skin tones), google + twitter, prepared for real."""
  out = str(tmp_path_factory.mktemp("emoji"))
  card = emoji.prepare(out, categories=("People & Body",), languages=("en", "de", "ja"),
                       cache_dir=os.environ.get("BIGVIS_EMOJI_CACHE"))
  recs = {s: _read_split(out, s) for s in card["splits"]}
  return card, recs


def test_emoji_counts_per_vendor(emoji_paths):
  for vendor in emoji.VENDORS[:2]:
    assert 3500 < emoji.count_items(emoji_paths, vendors=(vendor,)) < 6000


def test_emoji_records(people):
  card, recs = people
  every = [r for rs in recs.values() for r in rs]
  assert card["skipped"]["count"] == 0 and len(every) > 4000
  for r in every:
    with Image.open(io.BytesIO(r.image)) as im:
      assert im.size == (64, 64)
  by_id = {r.id: r for r in every}
  names = card["label_names"]
  thumbs = by_id["emoji/twitter/1F44D-1F3FD"]  # thumbs up: medium skin tone = Fitzpatrick type 4
  assert names["skin_tone"][thumbs.labels["skin_tone"]] == "type 4 (medium)"
  assert thumbs.labels["skin_tone"] == 3 and thumbs.labels["skin_tones"] == [3]
  assert "medium skin tone" in names["identity"][thumbs.labels["identity"]]
  assert by_id["emoji/twitter/1F44D"].labels["skin_tone"] == 0
  assert by_id["emoji/google/1F44D-1F3FF"].labels["skin_tone"] == 5
  mixed = by_id["emoji/google/1FAF1-1F3FB-200D-1FAF2-1F3FF"]  # handshake light + dark
  assert mixed.labels["skin_tone"] == emoji.MIXED_TONE and mixed.labels["skin_tones"] == [1, 5]
  same = [r for r in every if r.labels["base_identity"] == thumbs.labels["base_identity"]]
  assert len({r.labels["identity"] for r in same}) == 6 and len(same) == 12  # 6 tones x 2 vendors
  assert by_id["emoji/google/1F44D-1F3FD"].labels["identity"] == thumbs.labels["identity"]
  assert "Daumen" in thumbs.texts["keywords_de"] and "keywords_ja" in thumbs.texts
  assert sum("keywords_de" in r.texts and "keywords_ja" in r.texts for r in every) > 0.95 * len(every)
  assert "Apache-2.0" in card["license"] and "CC-BY-4.0" in card["license"]


def test_emoji_splits(people):
  card, recs = people
  assert set(recs) == {"train", "val_query", "val_index", "test_query", "test_index"}
  groups = {g: {r.labels["base_identity"] for s, rs in recs.items() if s.startswith(g) for r in rs}
            for g in ("train", "val", "test")}
  assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
              or groups["val"] & groups["test"])
  assert len(groups["val"]) > 10 and len(groups["test"]) > 10
  vendor = card["label_names"]["vendor"]
  for split, rs in recs.items():
    vendors = {vendor[r.labels["vendor"]] for r in rs}
    assert vendors == ({"google"} if split.endswith("_query") else
                       {"twitter"} if split.endswith("_index") else {"google", "twitter"})


def test_prepare_tool(tmp_path):
  out = str(tmp_path / "e")
  cmd = [sys.executable, "tools/prepare.py", "emoji", "--out", out, "--limit", "30",
         "--languages", "en,fr", "--num_shards", "2"]
  if os.environ.get("BIGVIS_EMOJI_CACHE"):
    cmd += ["--cache", os.environ["BIGVIS_EMOJI_CACHE"]]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "prepared emoji in" in proc.stdout and "train" in proc.stdout
  card = read_card(out)
  assert card["languages"] == ["en", "fr"]
  assert len({r.labels["base_identity"] for s in card["splits"] for r in _read_split(out, s)}) == 30


def test_stops_early_once_over_the_limit(corpus):
  pulled = []

  def stream():
    for i in range(100):
      pulled.append(i)
      yield Skipped(f"s{i}", "broken") if i < 2 else _rec(i, "b")

  with pytest.raises(TooManyBadItems, match="s0: broken"):
    write_corpus(stream(), corpus, name="t", split_of=_by_parity, card=CARD, progress_total=100)
  assert len(pulled) == 2  # 2/100 > 1%: no need to read the rest


def test_emoji_fetch_without_npm_says_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
  with pytest.raises(RuntimeError, match=r"npm is not installed.*registry\.npmjs\.org"):
    emoji.fetch(str(tmp_path / "cache"))
