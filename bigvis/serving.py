"""Runs an exported bigvis embedding model: jax + numpy + PIL only, none of bigvis's training code.

    model = serving.load('runs/finetune/export')
    embeddings = model.embed_images([open('a.png', 'rb').read(), ...])   # float32 [N, D], L2 = 1
    embeddings = model(images)     # already preprocessed float32 [N, H, W, 3]

An export folder (written by `tools/export_model.py`, bigvis/export.py):
    model.jax_export   jax.export serialized StableHLO: (params, images f32[b, H, W, 3]) ->
                       {'embedding': f32[b, D]}; the batch b is symbolic (any size)
    params.npz         the weights, one array per '/'-joined parameter path
    serving.json       the preprocessing, shapes, source run and sha256 of both files

Preprocessing (serving.json 'preprocess'), as the run's evaluation pp did it: decode the PNG/JPEG
(transparency composited on white) to RGB, resize to height x width with PIL's bilinear filter
(ignoring the aspect ratio), then uint8 -> float32 by value_range [lo, hi] or by normalize (x/255
- mean) / std.
"""
import hashlib
import io
import json
import os

import jax
import numpy as np
from jax import export as jax_export
from PIL import Image

SERVING_JSON, MODEL_FILE, PARAMS_FILE = 'serving.json', 'model.jax_export', 'params.npz'
FORMAT = 1


def _sha256(path):
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def _nest(flat):
  tree = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def preprocess(image_bytes, spec):
  """PNG/JPEG bytes -> float32 [H, W, 3] as serving.json's 'preprocess' says."""
  pil = Image.open(io.BytesIO(image_bytes))
  if pil.mode in ('RGBA', 'LA', 'PA') or 'transparency' in pil.info:
    white = Image.new('RGBA', pil.size, (255, 255, 255, 255))
    pil = Image.alpha_composite(white, pil.convert('RGBA'))
  pil = pil.convert('RGB').resize((spec['width'], spec['height']), Image.Resampling.BILINEAR)
  x = np.asarray(pil).astype(np.float32) / 255.0
  if spec['scale'] == 'value_range':
    lo, hi = spec['value_range']
    return x * np.float32(hi - lo) + np.float32(lo)
  return (x - np.asarray(spec['mean'], np.float32)) / np.asarray(spec['std'], np.float32)


class EmbeddingModel:
  """An export folder, loaded: call it on preprocessed images, or `embed_images` on bytes."""

  def __init__(self, directory):
    path = os.path.join(directory, SERVING_JSON)
    try:
      with open(path, encoding='utf-8') as f:
        self.meta = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f'{path}: not found; export a run with tools/export_model.py') from None
    if self.meta.get('format') != FORMAT:
      raise ValueError(f'{path}: format {self.meta.get("format")!r}, this loader reads {FORMAT}')
    for name in (MODEL_FILE, PARAMS_FILE):
      file = os.path.join(directory, name)
      if _sha256(file) != self.meta['sha256'][name]:
        raise ValueError(f'{file}: sha256 differs from {SERVING_JSON}: damaged or replaced')
    with open(os.path.join(directory, MODEL_FILE), 'rb') as f:
      self.exported = jax_export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(directory, PARAMS_FILE), allow_pickle=False) as z:
      self.params = jax.device_put(_nest({k: z[k] for k in z.files}))
    self.preprocess_spec = self.meta['preprocess']

  def __call__(self, images):
    """float32 [N, H, W, 3] preprocessed images -> float32 [N, D] embeddings."""
    images = np.asarray(images, np.float32)
    want = (self.preprocess_spec['height'], self.preprocess_spec['width'], 3)
    if images.ndim != 4 or images.shape[1:] != want:
      raise ValueError(f'images must be float32 [N, {want[0]}, {want[1]}, 3], got {images.shape}')
    return np.asarray(self.exported.call(self.params, images)['embedding'])

  def embed_images(self, images_bytes, batch_size=64):
    """Embeds encoded images (bytes), `batch_size` at a time."""
    out = []
    for start in range(0, len(images_bytes), batch_size):
      batch = [preprocess(b, self.preprocess_spec) for b in images_bytes[start:start + batch_size]]
      out.append(self(np.stack(batch)))
    return np.concatenate(out) if out else np.zeros((0, self.meta['embedding_dim']), np.float32)


def load(directory):
  return EmbeddingModel(directory)
