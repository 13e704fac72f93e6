"""Label mining: multilingual candidates, vocabulary, clustering, and local == Beam artifacts."""
import dataclasses
import filecmp
import importlib.util
import json
import os
import random
import unicodedata

import msgpack
import numpy as np
import pytest
from array_record.python import array_record_module

from bigvis import records, synthetic
from bigvis.corpora import read_card, write_corpus
from bigvis.labels import MinerConfig, cluster, text
from bigvis.labels import vocab as vocab_lib

CFG = MinerConfig(min_confidence=0.0)


def labels_of(texts, cfg=CFG):
  return set(text.candidates(texts, cfg)[0])


def test_phrases_and_tokens_multilingual():
  got = labels_of({"title": "Face with Tears of Joy (2 Half Hitches) Baby-Tux"})
  assert {"face", "tears of joy", "face with tears", "half hitches", "baby tux"} <= got
  assert not {"of", "with", "joy 2", "2", "hitches baby", "joy half"} & got  # no stop/junk ends, no crossing ")"
  # German keyword list: items stay whole phrases, NFKC + case folding (ß -> ss).
  got = labels_of({"keywords_de": "Grinsendes Gesicht mit großen Augen, Augen, und"})
  assert got == {"grinsendes gesicht mit grossen augen", "augen"}
  got = labels_of({"keywords_fr": "visage qui fond, à deux doigts, le, Émoticône"})
  assert got == {"visage qui fond", "à deux doigts", "émoticône"}
  # Japanese: short runs whole, long runs as character bigrams; ':' splits CLDR names.
  got = labels_of({"keywords_ja": "つまんでいる指: 中間の肌色, 手, 少しだけ"})
  assert {"手", "少しだけ", "中間", "肌色", "つま", "る指"} <= got and "中間の肌色" not in got
  # Emoji sequences (ZWJ, skin tone, flags) are labels; VS16 dropped so ❤️ == ❤.
  got = labels_of({"title": "I ❤️ pizza 🍕 👍🏽 🇩🇪 👨‍👩‍👧"})
  assert {"❤", "pizza", "🍕", "👍🏽", "🇩🇪", "👨\u200d👩\u200d👧"} <= got
  # Thai keeps vowel marks with their consonant; full-width letters fold to ASCII.
  assert all(not unicodedata.category(l[0]).startswith("M")
             for l in labels_of({"title": "ภาษาไทยเป็นภาษา"}))
  assert "full width" in labels_of({"keywords": "ＦＵＬＬ_width"})


def test_stop_words_follow_the_field_language():
  # 'die' is a German stop word, an English word; 'the' the reverse.
  assert labels_of({"keywords_de": "die, katze"}) == {"katze"}
  assert labels_of({"keywords_en": "die, the, cat"}) == {"die", "cat"}
  assert labels_of({"keywords_es": "el, gato"}) == {"gato"}
  assert labels_of({"title": "die katze"}, MinerConfig(min_confidence=0, default_langs=("de",))) \
      == {"katze"}


def test_confidence_from_source_weights():
  cfg = MinerConfig(weights=(("title", 1.0), ("keywords", 0.8), ("description", 0.2),
                             ("default", 0.5)), min_confidence=0.3)
  cands, _ = text.candidates({"title": "red fox", "keywords": "fox, forest",
                              "description": "a fox in the forest at night"}, cfg)
  assert cands["red fox"] == 1000 and cands["fox"] == 1000
  assert cands["forest"] == 840  # 1 - (1 - 0.8) * (1 - 0.2)
  assert "night" not in cands  # description alone: 0.2 < min_confidence


def test_empty_and_invalid_text_are_skipped_and_counted():
  cands, issues = text.candidates(
      {"title": "cat", "a": b"\xff\xfe", "b": "x\udcff", "c": "   ", "d": "", "e": None,
       "f": "dog".encode()}, CFG)
  assert set(cands) == {"cat", "dog"}
  assert issues == {"fields_invalid_text": 3, "fields_empty": 2}
  assert text.candidates({}, CFG)[1]["records_without_candidates"] == 1


def test_vocabulary_thresholds_and_ties():
  items = [("b", 5, 5000), ("a", 5, 4000), ("c", 9, 9000), ("d", 2, 2000), ("e", 3, 3000)]
  for _ in range(3):
    random.shuffle(items)
    v = vocab_lib.select(items, MinerConfig(min_count=3, max_size=2, cluster_max_size=3))
    assert v.labels == ("c", "a", "b") and v.df == (9, 5, 5) and v.num_labels == 2
  v = vocab_lib.select(items, MinerConfig(min_count=1, max_size=10, cluster_max_size=0))
  assert v.labels == ("c", "a", "b", "e", "d") and v.num_labels == 5
  stats = vocab_lib.long_tail([100, 50, 10, 5, 5, 5, 1, 1, 1, 1])
  # P90 = 50 (lower), P50 = 5: head {100, 50}, torso {10}, tail the rest.
  assert (stats["head"]["class_share"], stats["torso"]["class_share"],
          stats["tail"]["class_share"]) == (0.2, 0.1, 0.7)
  assert stats["head"]["assignment_share"] == round(150 / 179, 4)
  assert stats["few_shot_share"] == 0.7 and vocab_lib.histogram({0: 4, 2: 1}) == {"1": 4, "4-7": 1}


def test_pair_counts_merge_exactly_in_any_order():
  rng = np.random.default_rng(0)
  lists = [sorted(rng.choice(30, rng.integers(0, 6), replace=False).tolist()) for _ in range(200)]
  parts = [cluster.pair_counts(lists[i:i + 17]) for i in range(0, 200, 17)]
  a = cluster.merge_pairs(parts)
  b = cluster.merge_pairs(parts[::-1])
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  x = np.zeros((200, 30), np.int64)
  for r, ids in enumerate(lists):
    x[r, ids] = 1
  np.testing.assert_array_equal(cluster.cooccurrence(a, 30).toarray(), x.T @ x)


def _dense_ppmi(c: np.ndarray, alpha: float = 0.75) -> np.ndarray:
  c = c.astype(np.float64) * (1 - np.eye(len(c)))  # the diagonal (df) is no co-occurrence
  total, row = c.sum(), c.sum(axis=1)
  ctx = row ** alpha / (row ** alpha).sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    pmi = np.log(c / total) - np.log(row / total)[:, None] - np.log(ctx)[None, :]
  return np.where(c > 0, np.maximum(pmi, 0), 0)


def test_ppmi_by_row_blocks_and_spilled_to_disk_equals_the_whole_matrix(tmp_path, monkeypatch):
  from bigvis.labels import local
  rng = np.random.default_rng(0)
  n = 30
  lists = [sorted(rng.choice(n - 2, rng.integers(0, 6), replace=False).tolist())
           for _ in range(300)]  # the last two labels never occur: empty rows
  parts = [cluster.pair_counts(lists[i:i + 23]) for i in range(0, 300, 23)]
  whole = cluster.merge_pairs(parts)
  one_block = cluster.ppmi(whole, n)
  np.testing.assert_allclose(one_block.toarray(), _dense_ppmi(cluster.cooccurrence(whole, n)
                                                              .toarray()), rtol=1e-12, atol=1e-12)
  monkeypatch.setattr(cluster, "ROWS_PER_BLOCK", 7)
  assert cluster.num_blocks(n) == 5
  blocks = cluster.split_blocks(whole, n)
  assert [b for b, _ in blocks] == [0, 1, 2, 3]  # block 4 (rows 28, 29) holds no pair
  for b, (keys, _) in blocks:
    assert np.all(keys[1:] > keys[:-1]) and np.all((keys >> 32) // 7 == b)
  many = cluster.ppmi(whole, n)
  assert many.shape == (n, n) and np.array_equal(many.indptr, one_block.indptr)
  assert np.array_equal(many.indices, one_block.indices)
  assert np.array_equal(many.data, one_block.data)  # the same floats, bit for bit
  # Row sums are linear: partial sums add up to the whole's.
  np.testing.assert_array_equal(sum(cluster.row_sums(p, n) for p in parts),
                                cluster.row_sums(whole, n))
  # The local runner's spill: partial counts on disk per block, reduced in small slabs.
  monkeypatch.setattr(local._PairSpill, "SLAB", 5)
  spill = local._PairSpill(str(tmp_path / "pairs"), n)
  for p in parts[::-1]:
    spill.add(p)
  spilled = spill.ppmi(progress=False)
  spill.close()
  assert not (tmp_path / "pairs").exists()
  assert all(np.array_equal(getattr(spilled, a), getattr(many, a))
             for a in ("data", "indices", "indptr"))


def test_clustering_is_deterministic_and_finds_groups():
  # Two topics: labels 0-9 co-occur with each other, labels 10-19 with each other.
  rng = np.random.default_rng(1)
  lists = [sorted(rng.choice(10, 4, replace=False) + 10 * (r % 2)) for r in range(400)]
  pairs = cluster.pair_counts(lists)
  v = vocab_lib.Vocab(labels=tuple(f"l{i:02d}" for i in range(20)), df=tuple([200] * 20),
                      conf_sum=tuple([200000] * 20), num_labels=20)
  cfg = MinerConfig(clusters=2, embed_dim=8, seed=3)
  c1, c2 = (cluster.fit(cluster.ppmi(pairs, 20), v, cfg),
            cluster.fit(cluster.ppmi(pairs, 20), v, cfg))
  assert c1 == c2
  assert len(set(c1.assign[:10])) == 1 and len(set(c1.assign[10:])) == 1
  assert c1.assign[0] != c1.assign[10]
  assert c1.names[c1.assign[0]] == "l00 / l01 / l02"


def _bad_text_record(image: bytes) -> bytes:
  """A record whose title is not valid UTF-8 (as a foreign writer might produce)."""
  raw = msgpack.packb({"v": 1, "id": "broken-1", "image": image,
                       "texts": {"title": "QQQQ", "description": "blue star"},
                       "labels": {"shape": 4}}, use_bin_type=True)
  return raw.replace(b"QQQQ", b"\xff\xfe\xfd\xfc")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("labels") / "shapes")
  recs = list(synthetic.shapes_records(160, image_size=16))
  write_corpus(recs, out, name="shapes", split_of=lambda r: "train" if int(r.id[-3:]) < 130
               else "val", num_shards={"train": 3, "val": 1}, card={"description": "test"})
  w = array_record_module.ArrayRecordWriter(os.path.join(out, "extra-00000-of-00001.array_record"),
                                            records.WRITER_OPTIONS)
  w.write(_bad_text_record(recs[0].image))
  w.write(b"not a record")
  w.write(records.encode(recs[1]))
  w.close()
  return out


MINE = MinerConfig(weights=(("title", 1.0), ("description", 0.5)), min_count=3, max_size=6,
                   cluster_max_size=20, clusters=5, embed_dim=8, fit_splits=("train", "extra"))


def test_local_and_beam_runners_write_identical_artifacts(corpus, tmp_path, monkeypatch):
  from bigvis.labels import beam, local
  a, b = str(tmp_path / "local"), str(tmp_path / "beam")
  # Several row blocks (20 clustered labels), small spill slabs: both reduce block by block.
  monkeypatch.setattr(cluster, "ROWS_PER_BLOCK", 8)
  monkeypatch.setattr(local._PairSpill, "SLAB", 16)
  stats = local.run(corpus, a, MINE, workers=2, chunk_size=40, progress=False)
  beam.run(corpus, b, MINE, chunk_size=40)
  names = sorted(os.listdir(a))
  assert names == sorted(os.listdir(b))
  assert {"vocab.json", "clusters.json", "stats.json", "dataset_card.json",
          "train-00000-of-00003.array_record"} <= set(names)
  match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
  assert not mismatch and not errors, mismatch

  # Broken text repaired and counted; an undecodable record dropped and counted.
  assert stats["text_issues"]["fields_invalid_text"] == 1
  assert stats["text_issues"]["records_invalid"] == 1
  assert stats["records"] == {"train": 130, "val": 30, "extra": 2}
  assert stats["vocabulary"]["mined_labels"] == 6 and stats["clusters"]["num_clusters"] == 5

  # The labelled copy is a corpus the trainer reads: classes from the card, targets per record.
  card = read_card(a)
  vocab, names = card["label_names"]["mined_labels"], card["label_names"]["mined_clusters"]
  assert len(vocab) == 6 and len(names) == 5
  rec = records.decode(records.read_shard(os.path.join(a, "extra-00000-of-00001.array_record"))[0],
                       "t")
  assert rec.id == "broken-1" and rec.texts == {"description": "blue star"}
  labelled = 0
  for raw in records.read_shard(os.path.join(a, "train-00000-of-00003.array_record"))[:20]:
    rec = records.decode(raw, "t")
    mined = {vocab[i] for i in rec.labels["mined_labels"]}
    assert mined <= labels_of(rec.texts, MINE)
    labelled += bool(mined)
    assert len(rec.labels["mined_label_confidence"]) == len(rec.labels["mined_labels"])
    assert all(0 <= c < len(names) for c in rec.labels["mined_clusters"])
  assert labelled >= 15  # Shapes titles always yield vocabulary labels: mining must find them.

  from bigvis import config as config_lib
  from bigvis import data, train_input
  c = config_lib.defaults()
  c.input.data_dir = a
  c.tasks.mined = config_lib.task("multilabel", "mined_clusters")
  train_input.resolve_num_classes(c, train_input.resolve(c))
  assert c.tasks.mined.num_classes == 5
  ds = data.make_dataset(records.shard_paths(a, "train"), pp="decode|value_range(-1,1)",
                         labels=config_lib.label_specs(c), batch_size=4, seed=0, num_epochs=1)
  batch = next(iter(ds))
  assert batch["labels"]["mined_clusters"].shape == (4, 5)


def _mine_labels_tool():
  spec = importlib.util.spec_from_file_location(
      "mine_labels", os.path.join(os.path.dirname(__file__), "..", "tools", "mine_labels.py"))
  mine_labels = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mine_labels)
  return mine_labels


def test_tool_writes_plots(corpus, tmp_path):
  mine_labels = _mine_labels_tool()
  out = str(tmp_path / "tool")
  mine_labels.main(["--corpus", corpus, "--out", out, "--workers", "1", "--min_count", "3",
                    "--max_size", "6", "--cluster_max_size", "20", "--clusters", "4",
                    "--weights", "description=0.5"])
  assert os.path.getsize(os.path.join(out, "plots", "label_frequency.png")) > 1000
  assert os.path.getsize(os.path.join(out, "plots", "clusters.png")) > 1000
  assert len(read_card(out)["label_names"]["mined_clusters"]) == 4


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
  """A second corpus whose titles all carry a word the first never has."""
  out = str(tmp_path_factory.mktemp("labels_other") / "sketches")
  recs = [dataclasses.replace(r, id=f"sketch-{r.id}", texts={**r.texts,
                                                             "title": r.texts["title"] + " zebra"})
          for r in synthetic.shapes_records(60, image_size=16, seed=1)]
  write_corpus(recs, out, name="sketches", split_of=lambda r: "train", num_shards={"train": 2},
               card={"description": "test", "label_names": {"shape": list(synthetic.SHAPES)}})
  return out


def test_corpora_mined_jointly_share_one_vocabulary(corpus, other_corpus, tmp_path):
  from bigvis import config as config_lib
  from bigvis import train_input
  from bigvis.labels import beam, local
  a, b = str(tmp_path / "local"), str(tmp_path / "beam")
  stats = local.run([corpus, other_corpus], a, MINE, workers=2, chunk_size=40, progress=False)
  beam.run([corpus, other_corpus], b, MINE, chunk_size=40)
  assert sorted(stats) == sorted(os.listdir(a)) == ["shapes", "sketches"]
  for name in stats:
    names = sorted(os.listdir(os.path.join(a, name)))
    assert names == sorted(os.listdir(os.path.join(b, name)))
    _, mismatch, errors = filecmp.cmpfiles(os.path.join(a, name), os.path.join(b, name), names,
                                           shallow=False)
    assert not mismatch and not errors, (name, mismatch)
  assert stats["shapes"]["records"] == {"train": 130, "val": 30, "extra": 2}
  assert stats["sketches"]["records"] == {"train": 60}

  # One vocabulary, its counts over both corpora: each label's df is the sum of its dfs when
  # each corpus is mined alone; the word only the second corpus has is in the vocabulary.
  cards = [read_card(os.path.join(a, n)) for n in ("shapes", "sketches")]
  assert cards[0]["label_names"] == {**cards[0]["label_names"], **{
      k: cards[1]["label_names"][k] for k in ("mined_labels", "mined_clusters")}}
  assert cards[1]["mined"]["jointly_with"] == [corpus]
  joint_cfg = dataclasses.replace(MINE, cluster_max_size=0)  # Every label that passes min_count.
  joint = local.run([corpus, other_corpus], str(tmp_path / "all"), joint_cfg, workers=1,
                    chunk_size=40, progress=False)
  alone = [local.run(c, str(tmp_path / f"alone{i}"), joint_cfg, workers=1, chunk_size=40,
                     progress=False) for i, c in enumerate((corpus, other_corpus))]
  df = lambda path: {l["label"]: l["df"] for l in json.load(open(f"{path}/vocab.json"))["labels"]}
  both = df(tmp_path / "all" / "shapes")
  first, second = df(tmp_path / "alone0"), df(tmp_path / "alone1")
  assert both["zebra"] == second["zebra"] == 60 and "zebra" not in first
  assert all(both[l] == first.get(l, 0) + second.get(l, 0)
                      for l in set(first) & set(second))
  assert joint["sketches"]["fit"]["records"] == alone[1]["fit"]["records"] == 60

  # The trainer mixes the jointly mined copies; separately mined ones name different classes.
  def mixed(shapes_dir, sketches_dir):
    c = config_lib.defaults()
    c.input.data_dir, c.input.split = "", ""
    c.input.sources.shapes = config_lib.source(shapes_dir)
    c.input.sources.sketches = config_lib.source(sketches_dir)
    c.tasks.mined = config_lib.task("multilabel", "mined_clusters")
    return train_input.resolve_num_classes(c, train_input.resolve(c))
  assert mixed(f"{a}/shapes", f"{a}/sketches").tasks.mined.num_classes == 5
  with pytest.raises(config_lib.ConfigError, match="different classes"):
    mixed(str(tmp_path / "alone0"), str(tmp_path / "alone1"))

  with pytest.raises(ValueError, match="share a folder name"):
    local.run([corpus, corpus + "/"], str(tmp_path / "dup"), MINE, progress=False)


def test_tool_mines_corpora_jointly(corpus, other_corpus, tmp_path, capsys):
  out = str(tmp_path / "joint")
  args = ["--corpus", corpus, other_corpus, "--out", out, "--workers", "1", "--min_count", "3",
          "--max_size", "6", "--cluster_max_size", "20", "--clusters", "4"]
  with pytest.raises(SystemExit, match="--exclude_names_of nope: no card names classes for it"):
    _mine_labels_tool().main(args + ["--exclude_names_of", "nope"])
  assert not os.path.exists(out)
  _mine_labels_tool().main(args + ["--exclude_names_of", "shape"])  # A field of one corpus only.
  report = json.loads(capsys.readouterr().out)
  assert sorted(report["corpora"]) == [f"{out}/shapes", f"{out}/sketches"]
  assert report["corpora"][f"{out}/sketches"]["records"] == {"train": 60}
  for name in ("shapes", "sketches"):
    assert os.path.getsize(os.path.join(out, name, "plots", "label_frequency.png")) > 1000
    assert len(read_card(os.path.join(out, name))["label_names"]["mined_clusters"]) == 4
    mined = {l["label"] for l in json.load(open(f"{out}/{name}/vocab.json"))["labels"]}
    assert mined and not mined & set(synthetic.SHAPES)  # Excluded in both corpora.
