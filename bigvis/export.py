"""Exports a trained run's embedding model (trunk + embedding head, or the pooled trunk features)
for serving as a jax.export StableHLO artifact; `bigvis/serving.py` loads and runs it.

The weights travel beside the program (params.npz), not inside it as constants, so a ViT-g
exports as readily as a ViT-Ti. The ViT is exported with `model.impl='flax'` (stock layers, no
CPU kernel), whose params are the same tree, so one export runs on CPU, GPU and TPU.
"""
import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from bigvis import fileio, heads, runs, serving

DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
_SIZED = re.compile(r'^resize\((\d+)\)$')


def preprocess_spec(pp):
  """serving.json's 'preprocess' for an eval pp 'decode|resize(S)|value_range(lo,hi)' (or
  '...|normalize'); other pps are refused, since the loader must redo them without bigvis."""
  ops = [op.replace(' ', '') for op in pp.split('|')]
  bad = ValueError(f"pp {pp!r}: export supports 'decode|resize(S)|value_range(lo,hi)' or "
                   "'decode|resize(S)|normalize' (pass --pp)")
  if len(ops) != 3 or ops[0] != 'decode' or not _SIZED.match(ops[1]):
    raise bad
  size = int(_SIZED.match(ops[1])[1])
  spec = {'pp': pp, 'height': size, 'width': size}
  if m := re.match(r'^value_range(?:\(([-\d.e]+),([-\d.e]+)\))?$', ops[2]):
    lo, hi = (float(m[1]), float(m[2])) if m[1] else (-1.0, 1.0)
    return {**spec, 'scale': 'value_range', 'value_range': [lo, hi]}
  if ops[2] == 'normalize':
    from bigvis import preprocess
    return {**spec, 'scale': 'normalize', 'mean': list(preprocess.IMAGENET_MEAN),
            'std': list(preprocess.IMAGENET_STD)}
  raise bad


def _flat(params, prefix=''):
  out = {}
  for k, v in params.items():
    name = f'{prefix}{k}'
    out.update(_flat(v, name + '/') if isinstance(v, dict) else {name: np.asarray(v)})
  return out


def export_model(workdir, out, *, step=None, task=None, features='auto', pp=None,
                 platforms=DEFAULT_PLATFORMS):
  """Writes the export folder `out` (local or a bucket; serving.json last, with the sha256 of the
  files the loader checks); returns serving.json's content."""
  config = runs.load_run(workdir)
  features, task = runs.resolve_features(config, features, task)
  spec = preprocess_spec(pp or runs.default_pp(config))
  config.model.impl = 'flax'  # Portable layers; the same params.
  model = heads.build_model(config)
  image = np.zeros((1, spec['height'], spec['width'], 3), np.float32)
  params = runs.restore_params(model, workdir, image, step)

  def embed(params, images):
    outputs, intermediates = model.apply({'params': params}, images, train=False)
    if features == 'embedding':
      return {'embedding': outputs[task]['embedding'].astype(jnp.float32)}
    pooled = intermediates['pre_logits'].astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(pooled * pooled, axis=-1, keepdims=True))
    return {'embedding': pooled / jnp.maximum(norm, 1e-12)}

  (batch,) = jax_export.symbolic_shape('b')
  exported = jax_export.export(jax.jit(embed), platforms=tuple(platforms))(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
      jax.ShapeDtypeStruct((batch, spec['height'], spec['width'], 3), jnp.float32))
  dim = int(exported.out_avals[0].shape[-1])
  with fileio.output_dir(out, last=serving.SERVING_JSON) as local:
    for name, write in ((serving.MODEL_FILE, lambda f: f.write(exported.serialize())),
                        (serving.PARAMS_FILE, lambda f: np.savez(f, **_flat(params)))):
      with tempfile.NamedTemporaryFile(dir=local, prefix=f'.{name}.', delete=False) as f:
        write(f)
      os.replace(f.name, os.path.join(local, name))
    meta = {'format': serving.FORMAT, 'features': features, 'task': task,
            'embedding_dim': dim, 'preprocess': spec, 'platforms': list(platforms),
            'run': fileio.absolute(workdir), 'step': int(runs.restored_step(workdir, step)),
            'model': {'name': config.model.name, 'variant': config.model.variant},
            'jax_version': jax.__version__,
            'sha256': {name: serving._sha256(os.path.join(local, name))
                       for name in (serving.MODEL_FILE, serving.PARAMS_FILE)}}
    fileio.write_text_atomic(os.path.join(local, serving.SERVING_JSON),
                             json.dumps(meta, indent=1) + '\n')
  return meta
