"""Retrieval: exact search, metrics by hand, binary codes, ScaNN, index and embeddings files,
and the tools end to end."""

import importlib.util
import json
import os

import grain
import numpy as np
import pytest

from bigvis import records, retrieval, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _clustered(n, dim, clusters, noise, seed):
  """L2-normalized points around `clusters` random centres, and their cluster labels."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, dim))
  labels = rng.integers(clusters, size=n)
  x = centres[labels] + noise * rng.normal(size=(n, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels.astype(np.int32)


# --- Metrics, worked out by hand --------------------------------------------------------------
#
# database labels by id:  0:0  1:0  2:1  3:2  4:0  5:1
# query  label  relevant ids (n)  retrieved ids -> labels -> relevant
# q0     0      0,1,4 (3)         2,0,4 -> 1,0,0 -> 0,1,1
# q1     1      2,5   (2)         2,3,5 -> 1,2,1 -> 1,0,1
# q2     2      3     (1)         0,1,4 -> 0,0,0 -> 0,0,0
# q3     3      none  (0)         excluded from every mean, counted
# q4     -1     unknown label     excluded as well (a negative label is never relevant)
DB_LABELS = np.array([0, 0, 1, 2, 0, 1])
Q_LABELS = np.array([0, 1, 2, 3, -1])
IDS = np.array([[2, 0, 4], [2, 3, 5], [0, 1, 4], [0, 1, 2], [0, 1, 2]])


def test_metrics_by_hand():
  got = retrieval.retrieval_metrics(IDS, Q_LABELS, DB_LABELS, ks=(1, 3))
  # R@1: q0 no, q1 yes, q2 no -> 1/3.        R@3: q0 yes, q1 yes, q2 no -> 2/3.
  # P@1: (0 + 1 + 0) / 3 = 1/3.              P@3: (2/3 + 2/3 + 0) / 3 = 4/9.
  # AP@1: q0 0; q1 P@1 * 1 / min(1, 2) = 1; q2 0 -> mAP@1 = 1/3.
  # AP@3: q0 (P@2 + P@3) / min(3, 3) = (1/2 + 2/3) / 3 = 7/18;
  #       q1 (P@1 + P@3) / min(3, 2) = (1 + 2/3) / 2 = 5/6 = 15/18; q2 0
  #       -> mAP@3 = (7/18 + 15/18 + 0) / 3 = 11/27.
  want = {"queries": 3, "queries_without_relevant": 2,
          "recall@1": 1 / 3, "recall@3": 2 / 3, "precision@1": 1 / 3, "precision@3": 4 / 9,
          "map@1": 1 / 3, "map@3": 11 / 27}
  assert got.keys() == want.keys()
  for key, value in want.items():
    assert got[key] == pytest.approx(value), key


def test_head_accuracy_pools_files_and_counts_examples():
  a = {"pred/skin": np.array([0, 1, 2]), "label/skin": np.array([0, 1, 1])}
  b = {"pred/skin": np.array([3]), "label/skin": np.array([3])}
  assert retrieval.head_accuracy([a, b], "skin") == (0.75, 4)
  assert retrieval.head_accuracy([a], "skin") == (pytest.approx(2 / 3), 3)


def test_metric_functions_and_counts():
  labels = DB_LABELS[IDS]
  np.testing.assert_array_equal(retrieval.num_relevant(Q_LABELS, DB_LABELS), [3, 2, 1, 0, 0])
  # Without database_labels every query counts (q3, q4 retrieve nothing relevant): R@3 = 2/5.
  assert retrieval.recall_at_k(labels, Q_LABELS, 3) == pytest.approx(2 / 5)
  assert retrieval.precision_at_k(labels, Q_LABELS, 3, DB_LABELS) == pytest.approx(4 / 9)
  with pytest.raises(ValueError, match="database_labels"):
    retrieval.map_at_k(labels, Q_LABELS, 3, None)
  with pytest.raises(ValueError, match="k must be"):
    retrieval.recall_at_k(labels, Q_LABELS, 4)
  # A single query whose only relevant item is at rank 2 of 2: AP@2 = (1/2) / min(2, 1) = 1/2.
  assert retrieval.map_at_k([[1, 0]], [0], 2, [0, 1]) == pytest.approx(0.5)
  # -1 ids (ScaNN found fewer) get label -1 and are never relevant.
  np.testing.assert_array_equal(retrieval.labels_of([[1, -1]], DB_LABELS), [[0, -1]])


def test_ann_recall_by_hand():
  ann = np.array([[0, 1, 2], [5, 6, -1]])
  exact = np.array([[2, 1, 0], [5, 8, 9]])
  # k=3: q0 finds {0,1,2} of {2,1,0} -> 3/3; q1 finds {5} of {5,8,9} -> 1/3 (-1 is no hit);
  # mean 2/3.
  assert retrieval.ann_recall(ann, exact, 3) == pytest.approx(2 / 3)
  # k=1: q0 top 0 vs 2 -> 0; q1 5 vs 5 -> 1; mean 1/2.
  assert retrieval.ann_recall(ann, exact, 1) == pytest.approx(0.5)
  # Ties: exact costs [1, 2, 2] (k-th = 2); ANN returned costs [1, 2, 3]: 2 of 3 as good.
  assert retrieval.ann_recall_ties([[1, 2, 3]], [[1, 2, 2]], 3) == pytest.approx(2 / 3)
  assert retrieval.ann_recall_ties([[1, 2, np.inf]], [[1, 2, 2]], 2) == 1.0


# --- Exact search -----------------------------------------------------------------------------


def _reference_top_k(cost, k):
  """Sort every row fully by (cost, id): the definition exact_search must match."""
  ids = np.broadcast_to(np.arange(cost.shape[1]), cost.shape)
  return np.lexsort((ids, cost), axis=1)[:, :k]


def test_exact_dot_matches_full_sort_with_ties():
  rng = np.random.default_rng(0)
  database = rng.integers(-2, 3, size=(2000, 6)).astype(np.float32)  # small ints: many ties
  queries = rng.integers(-2, 3, size=(40, 6)).astype(np.float32)
  for k in (1, 7, 300, 2000):
    ids, scores = retrieval.exact_search(queries, database, k)
    np.testing.assert_array_equal(ids, _reference_top_k(-(queries @ database.T), k))
    np.testing.assert_array_equal(scores, np.take_along_axis(queries @ database.T, ids, 1))
  with pytest.warns(UserWarning, match="clipped to 2000"):
    ids, _ = retrieval.exact_search(queries, database, 2500)
  assert ids.shape == (40, 2000)


def _popcount_loop(queries, database):
  return np.array([[sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(q, d)) for d in database]
                   for q in queries])


@pytest.mark.parametrize("dim", [20, 70])  # 3 bytes (partial byte), 9 bytes (more than a word)
def test_exact_hamming_matches_popcount_loop(dim):
  rng = np.random.default_rng(dim)
  db = retrieval.binary_codes(rng.normal(size=(150, dim)))
  q = retrieval.binary_codes(rng.normal(size=(12, dim)))
  dist = _popcount_loop(q, db)
  ids, got = retrieval.exact_search(q, db, 10, metric="hamming")
  np.testing.assert_array_equal(ids, _reference_top_k(dist, 10))
  np.testing.assert_array_equal(got, np.take_along_axis(dist, ids, 1))
  assert (np.diff(got, axis=1) >= 0).all()


def test_exact_search_rejects_bad_input():
  x = np.ones((4, 3), np.float32)
  with pytest.raises(ValueError, match="3 dims but the database has 2"):
    retrieval.exact_search(x, np.ones((4, 2), np.float32), 1)
  with pytest.raises(ValueError, match="k must be"):
    retrieval.exact_search(x, x, 0)
  bad = x.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match="database: row 2 has a non-finite"):
    retrieval.exact_search(x, bad, 1)
  with pytest.raises(ValueError, match="uint8"):
    retrieval.exact_search(x, x, 1, metric="hamming")
  with pytest.raises(ValueError, match="metric"):
    retrieval.exact_search(x, x, 1, metric="cosine")


def test_binary_codes_are_the_sign():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(30, 19)).astype(np.float32)
  x[0, :5] = [0.0, -0.0, 1e-30, -1e-30, 2.0]
  codes = retrieval.binary_codes(x)
  assert codes.dtype == np.uint8 and codes.shape == (30, 3)
  np.testing.assert_array_equal(np.unpackbits(codes, axis=1)[:, :19], x > 0)
  signs = retrieval.codes_to_signs(codes, 19)
  np.testing.assert_array_equal(signs, np.where(x > 0, 1.0, -1.0))
  # For ±1 vectors, dot = D - 2 * Hamming: the same ranking.
  np.testing.assert_array_equal(signs @ signs.T, 19 - 2 * _popcount_loop(codes, codes))
  with pytest.raises(ValueError, match="codes must be uint8"):
    retrieval.codes_to_signs(codes, 30)


# --- ScaNN ------------------------------------------------------------------------------------


def test_default_params_and_overrides():
  small = retrieval.default_scann_params(1000, 64, 10)
  large = retrieval.default_scann_params(10**6, 64, 10)
  assert small["algorithm"] == "brute_force" and large["algorithm"] == "tree_ah"
  assert large["num_leaves"] == 1000 and large["num_leaves_to_search"] == 100
  assert large["training_sample_size"] == 250_000 and large["reorder"] == 100
  p = retrieval.resolve_scann_params(10**6, 64, 10, {"num_leaves": 50})
  assert p["num_leaves_to_search"] == 10  # follows the overridden num_leaves
  with pytest.raises(ValueError, match=r"\['num_leafs'\]"):
    retrieval.resolve_scann_params(1000, 64, 10, {"num_leafs": 3})
  with pytest.raises(ValueError, match="num_leaves_to_search=20 exceeds num_leaves=10"):
    retrieval.resolve_scann_params(1000, 64, 10, {"algorithm": "tree_ah", "num_leaves": 10,
                                                  "num_leaves_to_search": 20})
  assert retrieval.parse_scann_params(["algorithm=tree_ah", "reorder=50"]) == {
      "algorithm": "tree_ah", "reorder": 50}
  with pytest.raises(ValueError, match="unknown ScaNN param"):
    retrieval.parse_scann_params(["leaves=3"])


TREE_AH = {"algorithm": "tree_ah", "num_leaves": 20, "num_leaves_to_search": 5}


def test_scann_tree_ah_matches_exact_top1_on_clusters():
  x, _ = _clustered(2300, 32, 40, 0.3, seed=0)
  queries, database = x[:300], x[300:]
  exact, _ = retrieval.exact_search(queries, database, 10)
  searcher = retrieval.build_scann(database, 10, TREE_AH)  # a tree although the data is small
  ids, scores = retrieval.scann_search(searcher, queries, 10)
  assert ids.dtype == np.int64 and ids.shape == (300, 10)
  assert (ids[:, 0] == exact[:, 0]).mean() >= 0.99
  assert retrieval.ann_recall(ids, exact, 10) >= 0.9


def test_index_save_load_identical(tmp_path):
  x, _ = _clustered(800, 16, 10, 0.3, seed=1)
  searcher = retrieval.build_scann(x[100:], 5, TREE_AH)
  meta = {"params": TREE_AH, "metric": "dot", "num_points": 700, "dim": 16, "build_seconds": 0.1,
          "ids": [f"r{i}" for i in range(700)]}
  out = str(tmp_path / "index")
  retrieval.save_index(searcher, out, meta)
  retrieval.save_index(searcher, out, meta)  # over an existing index
  assert sorted(os.listdir(tmp_path)) == ["index"]  # no temporary folders left
  loaded, got = retrieval.load_index(out)
  assert got["ids"] == meta["ids"] and got["params"] == TREE_AH
  before = retrieval.scann_search(searcher, x[:100], 5)
  after = retrieval.scann_search(loaded, x[:100], 5)
  np.testing.assert_array_equal(before[0], after[0])
  np.testing.assert_array_equal(before[1], after[1])

  with open(os.path.join(out, "dataset.npy"), "r+b") as f:  # damage one byte
    f.seek(-1, os.SEEK_END)
    f.write(b"\x7f")
  with pytest.raises(ValueError, match=f"{out}: index file dataset.npy is damaged"):
    retrieval.load_index(out)
  os.remove(os.path.join(out, "meta.json"))
  with pytest.raises(ValueError, match=f"{out}: not a saved index"):
    retrieval.load_index(out)
  with pytest.raises(ValueError, match="lacks"):
    retrieval.save_index(searcher, out, {"metric": "dot"})


# --- Embeddings files -------------------------------------------------------------------------


def _embeddings(n=6, dim=12, seed=0):
  x, labels = _clustered(n, dim, 3, 0.3, seed)
  arrays = {"id": np.array([f"r{i}" for i in range(n)]), "index": np.arange(n, dtype=np.int64),
            "embedding": x, "codes": retrieval.binary_codes(x), "label/cls": labels,
            "pred/cls": labels}
  meta = {"corpus": "/c", "split": "test", "checkpoint": "/ck", "step": 3, "task": "emb"}
  return arrays, meta


def test_embeddings_round_trip(tmp_path):
  arrays, meta = _embeddings()
  path = str(tmp_path / "e.npz")
  retrieval.save_embeddings(path, arrays, meta)
  assert os.listdir(tmp_path) == ["e.npz"]
  got = retrieval.load_embeddings(path)
  assert got["meta"] == meta
  for key, value in arrays.items():
    np.testing.assert_array_equal(got[key], value)


def test_embeddings_writer_streams_batches_and_publishes_only_when_closed(tmp_path):
  arrays, meta = _embeddings(n=10)
  arrays["id"] = np.array([f"id-{'x' * i}" for i in range(10)])  # ids widen batch by batch
  path = str(tmp_path / "e.npz")
  writer = retrieval.EmbeddingsWriter(path)
  for start in (0, 3, 7):
    writer.append({k: v[start:start + {0: 3, 3: 4, 7: 3}[start]] for k, v in arrays.items()})
    assert not os.path.exists(path)  # Nothing is published before close.
  writer.close(meta)
  assert os.listdir(tmp_path) == ["e.npz"]  # The parts folder is gone.
  got = retrieval.load_embeddings(path)
  for key, value in arrays.items():
    np.testing.assert_array_equal(got[key], value)

  again = retrieval.EmbeddingsWriter(str(tmp_path / "dup.npz"))
  again.append({k: v[:5] for k, v in arrays.items()})
  again.append({k: v[:5] for k, v in arrays.items()})
  with pytest.raises(ValueError, match="'id': ids repeat"):
    again.close(meta)
  aborted = retrieval.EmbeddingsWriter(str(tmp_path / "aborted.npz"))
  aborted.append({k: v[:5] for k, v in arrays.items()})
  aborted.abort()
  assert os.listdir(tmp_path) == ["e.npz"]


@pytest.mark.parametrize("change, field", [
    (lambda a: a.pop("codes"), "'codes': missing"),
    (lambda a: a.update(embedding=a["embedding"].astype(np.float64)),
     "'embedding': expected float32"),
    (lambda a: a.update({"label/cls": a["label/cls"].astype(np.int64)}),
     "'label/cls': expected int32"),
    (lambda a: a.update(index=a["index"][:3]), "'index': expected shape"),
    (lambda a: a.update(embedding=a["embedding"] * 2), "'embedding': rows must be L2-normalized"),
    (lambda a: a.update(codes=a["codes"] ^ 1), "'codes': differ"),
    (lambda a: a.update(id=np.array(["a"] * 6)), "'id': ids repeat"),
    (lambda a: a.update(extra=np.zeros(6)), r"unknown field\(s\) \['extra'\]"),
])
def test_load_embeddings_names_the_field(tmp_path, change, field):
  arrays, meta = _embeddings()
  change(arrays)
  path = str(tmp_path / "bad.npz")
  np.savez(path, **arrays, meta=np.array(json.dumps(meta)))
  with pytest.raises(ValueError, match=f"{path}: (field )?{field}"):
    retrieval.load_embeddings(path)


def test_load_embeddings_bad_meta_and_pickle(tmp_path):
  arrays, meta = _embeddings()
  path = str(tmp_path / "m.npz")
  np.savez(path, **arrays, meta=np.array(json.dumps({**meta, "step": "3"})))
  with pytest.raises(ValueError, match="'meta': 'step' must be int"):
    retrieval.load_embeddings(path)
  np.savez(path, **{**arrays, "id": np.array(list(arrays["id"]), dtype=object)},
           meta=np.array(json.dumps(meta)))
  with pytest.raises(ValueError, match=f"{path}: not a readable"):  # object arrays need pickle
    retrieval.load_embeddings(path)


# --- The tools, end to end on a tiny real corpus ----------------------------------------------


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
  """A shapes corpus with 'query' and 'index' splits, a card, and embeddings files for both.

  The embeddings stand in for a model's: a point near the record's shape centre, so retrieval
  by 'shape' works well but not perfectly.
  """
  root = tmp_path_factory.mktemp("retrieval")
  corpus = str(root / "corpus")
  synthetic.make_shapes_corpus(corpus, num_records=20, image_size=16, num_shards=2, name="query")
  synthetic.make_shapes_corpus(corpus, num_records=60, image_size=16, num_shards=2, name="index")
  with open(os.path.join(corpus, "dataset_card.json"), "w") as f:
    json.dump({"label_names": {"shape": list(synthetic.SHAPES)}}, f)
  centres = np.random.default_rng(0).normal(size=(synthetic.NUM_SHAPES, 24))
  files = {}
  for split in ("query", "index"):
    source = grain.sources.ArrayRecordDataSource(records.shard_paths(corpus, split))
    recs = [records.decode(source[i], split) for i in range(len(source))]
    shape = np.array([r.labels["shape"] for r in recs], np.int32)
    rng = np.random.default_rng(1 if split == "query" else 2)
    x = centres[shape] + 1.5 * rng.normal(size=(len(recs), 24))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    arrays = {"id": np.array([r.id for r in recs]), "index": np.arange(len(recs), dtype=np.int64),
              "embedding": x, "codes": retrieval.binary_codes(x), "label/shape": shape}
    files[split] = str(root / f"{split}.npz")
    meta = {"corpus": corpus, "split": split, "checkpoint": "none", "step": 0, "task": "emb"}
    retrieval.save_embeddings(files[split], arrays, meta)
  return root, files


def test_eval_tool_end_to_end(split_files):
  root, files = split_files
  out = str(root / "eval")
  _tool("eval_retrieval").main(["--queries", files["query"], "--database", files["index"],
                                "--label", "shape", "--ks", "1,5", "--out", out, "--examples", "3",
                                "--repeats", "1"])
  with open(os.path.join(out, "retrieval.json")) as f:
    report = json.load(f)
  want = {"command", "versions", "num_queries", "num_database", "dim", "ks", "methods", "examples"}
  assert want <= report.keys()
  assert report["num_queries"] == 20 and report["num_database"] == 60 and report["ks"] == [1, 5]
  assert set(report["methods"]) == {"float_exact", "float_scann", "binary_exact", "binary_scann"}
  for name, m in report["methods"].items():
    for key in ("recall@1", "recall@5", "precision@5", "map@5"):
      assert 0 <= m[key] <= 1, (name, key)
    assert m["queries_per_sec"] > 0 and len(m["search_seconds"]) == 1
  f, b = report["methods"]["float_scann"], report["methods"]["binary_scann"]
  # 60 points: default params are brute force, so ScaNN must equal exact search.
  assert f["params"]["algorithm"] == "brute_force" and f["index"] == "built"
  assert f["ann_recall@5"] == 1.0 and f["recall@5"] == report["methods"]["float_exact"]["recall@5"]
  assert b["ann_recall_ties@5"] == 1.0
  assert report["methods"]["float_exact"]["recall@5"] > 0.5  # the embeddings carry the shape
  with open(os.path.join(out, "retrieval.md")) as f:
    table = f.read()
  assert "| float ScaNN |" in table and "R@5" in table and "mAP@5" in table
  assert os.path.getsize(os.path.join(out, "examples.png")) > 5000
  examples = report["examples"]  # what the figure shows, captions from the card's class names
  assert len(examples) == 3 and all(len(e["results"]) == 5 for e in examples)
  assert {e["label"] for e in examples} <= set(synthetic.SHAPES)
  assert all(r["relevant"] == (r["label"] == e["label"]) for e in examples for r in e["results"])


def test_build_index_tool_then_eval(split_files):
  root, files = split_files
  build = _tool("build_index")
  build.main(["--embeddings", files["index"], "--out", str(root / "fidx"), "--k", "5",
              "--param", "algorithm=tree_ah", "--param", "num_leaves=6",
              "--param", "num_leaves_to_search=6"])  # every leaf: exact up to quantization
  build.main(["--embeddings", files["index"], "--out", str(root / "bidx"), "--binary", "--k", "5"])
  _, meta = retrieval.load_index(str(root / "bidx"))
  assert meta["metric"] == "hamming" and meta["num_points"] == 60
  out = str(root / "eval2")
  _tool("eval_retrieval").main(["--queries", files["query"], "--database", files["index"],
                                "--label", "shape", "--ks", "1,5", "--out", out, "--examples", "0",
                                "--repeats", "1", "--index", str(root / "fidx"),
                                "--binary_index", str(root / "bidx")])
  with open(os.path.join(out, "retrieval.json")) as f:
    methods = json.load(f)["methods"]
  assert methods["float_scann"]["index"] == str(root / "fidx")
  assert methods["float_scann"]["params"]["algorithm"] == "tree_ah"
  assert methods["float_scann"]["ann_recall@5"] >= 0.9
  assert methods["binary_scann"]["ann_recall_ties@5"] == 1.0
  assert not os.path.exists(os.path.join(out, "examples.png"))


def test_tools_fail_with_a_message(split_files):
  root, files = split_files
  _tool("build_index").main(["--embeddings", files["index"], "--out", str(root / "bidx3"),
                             "--binary"])
  with pytest.raises(SystemExit, match="no label 'colour'; the file has labels \\['shape'\\]"):
    _tool("eval_retrieval").main(["--queries", files["query"], "--database", files["index"],
                                  "--label", "colour", "--out", str(root / "e3")])
  with pytest.raises(SystemExit, match="a 'hamming' index, but the float search needs 'dot'"):
    _tool("eval_retrieval").main(["--queries", files["query"], "--database", files["index"],
                                  "--label", "shape", "--out", str(root / "e3"),
                                  "--index", str(root / "bidx3")])
  with pytest.raises(SystemExit, match="missing.npz: no such embeddings file"):
    _tool("build_index").main(["--embeddings", str(root / "missing.npz"), "--out", str(root / "x")])
  with pytest.raises(SystemExit, match="unknown ScaNN param"):
    _tool("build_index").main(["--embeddings", files["index"], "--out", str(root / "x"),
                               "--param", "leaves=3"])


def test_an_index_that_does_not_fit_the_search_is_refused(split_files, tmp_path):
  root, files = split_files
  build, evaluate = _tool("build_index"), _tool("eval_retrieval")
  # Built on the query split: other data than --database.
  build.main(["--embeddings", files["query"], "--out", str(tmp_path / "other")])
  with pytest.raises(SystemExit, match="built on other data \\(20 points, dim 24\\) than this "
                                       "database \\(60 points"):
    evaluate.main(["--queries", files["query"], "--database", files["index"], "--label", "shape",
                   "--out", str(tmp_path / "e"), "--index", str(tmp_path / "other")])
  # Re-orders fewer candidates than the k asked for (built for k=3, searched for 5; the build
  # itself refuses reorder < its own k).
  with pytest.raises(SystemExit, match="reorder=3 is below k=5"):
    build.main(["--embeddings", files["index"], "--out", str(tmp_path / "few"), "--k", "5",
                "--param", "algorithm=tree_ah", "--param", "reorder=3"])
  build.main(["--embeddings", files["index"], "--out", str(tmp_path / "few"), "--k", "3",
              "--param", "algorithm=tree_ah", "--param", "num_leaves=4", "--param", "reorder=3"])
  with pytest.raises(SystemExit, match="re-orders 3 candidates, fewer than k=5"):
    evaluate.main(["--queries", files["query"], "--database", files["index"], "--label", "shape",
                   "--ks", "1,5", "--out", str(tmp_path / "e"), "--index", str(tmp_path / "few")])
  # A folder with ScaNN's pickled doc ids (ours never has one) is not unpickled.
  import pickle
  with open(tmp_path / "few" / "scann_docids.pkl", "wb") as f:
    pickle.dump(["x"], f)
  with pytest.raises(ValueError, match="holds scann_docids.pkl, a pickle; refusing to load it"):
    retrieval.load_index(str(tmp_path / "few"))
