"""Label text embeddings: the JAX MiniLM encoder against `transformers`, and clustering with it."""
import filecmp
import json
import os
import shutil

import numpy as np
import pytest

from bigvis import synthetic
from bigvis.corpora import write_corpus
from bigvis.labels import MinerConfig, cluster, text_model
from bigvis.labels import vocab as vocab_lib

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.json")


def test_matches_transformers_reference():
  with open(REFERENCE, encoding="utf-8") as f:
    ref = json.load(f)  # bench/minilm_reference.py: transformers BertModel + mean pool + normalize
  enc = text_model.encoder()
  assert enc.tokenize(ref["sentences"]) == ref["token_ids"]
  got = text_model.embed_texts(ref["sentences"])
  want = np.asarray(ref["embeddings"], np.float32)
  assert got.dtype == np.float32 and got.shape == (len(ref["sentences"]), 384)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert (got * want).sum(1).min() > 0.9999
  # Order, batch size and the company a text keeps do not change its embedding.
  again = text_model.embed_texts(ref["sentences"][::-1] + ["x"] * 40, batch_size=4)
  np.testing.assert_allclose(again[:len(got)][::-1], got, atol=1e-5)


def test_nearer_neighbours():
  x = text_model.embed_texts(["cat", "kitten", "airplane", "aeroplane", "red heart", "love"])
  sim = x @ x.T
  assert sim[0, 1] > sim[0, 2] + 0.2       # cat ~ kitten, not airplane
  assert sim[2, 3] > sim[2, 0]              # airplane ~ aeroplane
  assert sim[4, 5] > sim[4, 2]
  assert text_model.embed_texts([]).shape == (0, 384)


def _model_copy(tmp_path, weights: bytes | None):
  """The package's model folder with model.safetensors replaced (None: missing)."""
  src = text_model.model_dir()
  for name in ("tokenizer.json", "config.json"):
    os.symlink(os.path.join(src, name), tmp_path / name)
  if weights is not None:
    (tmp_path / "model.safetensors").write_bytes(weights)
  return str(tmp_path)


def test_missing_or_corrupt_weights_name_the_file_or_tensor(tmp_path):
  path = os.path.join(str(tmp_path), "model.safetensors")
  with pytest.raises(text_model.ModelFileError, match=f"{path}: model weights file not found"):
    text_model.TextEncoder(_model_copy(tmp_path, None))
  (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
  with pytest.raises(text_model.ModelFileError, match=f"{path}: cannot read safetensors"):
    text_model.TextEncoder(str(tmp_path))
  with open(os.path.join(text_model.model_dir(), "model.safetensors"), "rb") as f:
    (tmp_path / "model.safetensors").write_bytes(f.read()[:1_000_000])  # truncated download
  with pytest.raises(text_model.ModelFileError, match="model.safetensors: cannot read"):
    text_model.TextEncoder(str(tmp_path))
  from safetensors.numpy import save_file
  save_file({"embeddings.word_embeddings.weight": np.zeros((30522, 384), np.float32),
             "embeddings.position_embeddings.weight": np.zeros((128, 384), np.float32)},
            path)
  with pytest.raises(text_model.ModelFileError, match="'embeddings.position_embeddings.weight' "
                                                      r"has shape \(128, 384\), expected \(512"):
    text_model.TextEncoder(str(tmp_path))
  save_file({"embeddings.word_embeddings.weight": np.zeros((30522, 384), np.float32)}, path)
  with pytest.raises(text_model.ModelFileError, match="'embeddings.position_embeddings.weight' "
                                                      "missing"):
    text_model.TextEncoder(str(tmp_path))
  with pytest.raises(ValueError, match="label_embeddings='sbert'"):
    MinerConfig(label_embeddings="sbert")


ANIMALS = ("cat", "kitten", "dog", "puppy", "horse", "cow")
VEHICLES = ("airplane", "car", "bicycle", "truck", "train", "boat")


def test_text_model_clusters_by_meaning_deterministically():
  # Two topics, each half animals and half vehicles: records draw 3 labels of one topic, so
  # co-occurrence clusters the topics; the text model separates animals from vehicles.
  labels = ANIMALS + VEHICLES
  n = len(labels)
  topics = [(0, 1, 2, 6, 7, 8), (3, 4, 5, 9, 10, 11)]
  rng = np.random.default_rng(0)
  lists = [sorted(rng.choice(topics[r % 2], 3, replace=False).tolist()) for r in range(200)]
  pairs = cluster.pair_counts(lists)
  df = [int(sum(i in l for l in lists)) for i in range(n)]
  v = vocab_lib.Vocab(labels=labels, df=tuple(df), conf_sum=tuple(1000 * d for d in df),
                      num_labels=n)
  runs = {}
  for kind in ("cooccurrence", "text_model", "both"):
    cfg = MinerConfig(clusters=2, embed_dim=4, seed=0, label_embeddings=kind)
    runs[kind] = cluster.fit(cluster.ppmi(pairs, n), v, cfg)
    assert cluster.fit(cluster.ppmi(pairs, n), v, cfg) == runs[kind]  # deterministic for a seed
  t = runs["text_model"].assign
  assert len(set(t[:6])) == 1 and len(set(t[6:])) == 1 and t[0] != t[6]
  co = runs["cooccurrence"].assign
  assert len({co[i] for i in topics[0]}) == 1 and co[0] != co[3]  # the topics
  x = cluster.label_vectors(cluster.ppmi(pairs, n), v,
                            MinerConfig(embed_dim=4, label_embeddings="both"))
  assert x.shape == (n, 4 + 384)
  np.testing.assert_allclose(np.linalg.norm(x[:, :4], axis=1), 2 ** -0.5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(x[:, 4:], axis=1), 2 ** -0.5, atol=1e-6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("text_model") / "shapes")
  recs = list(synthetic.shapes_records(90, image_size=8))
  write_corpus(recs, out, name="shapes", split_of=lambda r: "train" if int(r.id[-3:]) < 70
               else "val", num_shards={"train": 2, "val": 1}, card={"description": "test"})
  return out


def _clusters(out):
  with open(os.path.join(out, "clusters.json"), encoding="utf-8") as f:
    return json.load(f)["label_to_cluster"]


def test_local_and_beam_agree_with_text_model(corpus, tmp_path):
  from bigvis.labels import beam, local
  base = dict(weights=(("title", 1.0), ("description", 0.5)), min_count=3, max_size=6,
              cluster_max_size=24, clusters=5, embed_dim=8)
  cfg = MinerConfig(**base, label_embeddings="text_model")
  a, b, c = (str(tmp_path / n) for n in ("local", "beam", "cooc"))
  stats = local.run(corpus, a, cfg, workers=1, chunk_size=40, progress=False)
  beam.run(corpus, b, cfg, chunk_size=40)
  names = sorted(os.listdir(a))
  assert names == sorted(os.listdir(b))
  _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
  assert not mismatch and not errors, mismatch
  assert stats["config"]["label_embeddings"] == "text_model"
  local.run(corpus, c, MinerConfig(**base), workers=1, chunk_size=40, progress=False)
  text, cooc = _clusters(a), _clusters(c)
  assert text.keys() == cooc.keys() and len(text) > 5
  assert text != cooc  # a different partition of the same labels
  shutil.rmtree(c)
