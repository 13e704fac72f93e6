"""The serving export: a jax.export program + weights that bigvis/serving.py runs without bigvis's
training code, giving the trainer's embeddings on any batch size."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bigvis import export, records, retrieval, serving
from bigvis.tools import embed
from tests import helpers

_SERVE = r'''
import json, sys
import numpy as np
from bigvis import serving
model = serving.load(sys.argv[1])
images = [open(p, 'rb').read() for p in sys.argv[3:]]
out = {'five': model.embed_images(images, batch_size=5).tolist(),
       'threes': model.embed_images(images, batch_size=3).tolist(),
       'loaded': sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax', 'grain')
                        or m in ('bigvis.train', 'bigvis.models', 'bigvis.heads', 'bigvis.data'))}
json.dump(out, open(sys.argv[2], 'w'))
'''


@pytest.fixture(scope='module')
def exported(embedding_run, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('exported') / 'export')
  return out, export.export_model(embedding_run[1], out)


def test_exported_model_equals_the_trainer_on_other_batch_sizes(embedding_run, exported,
                                                                  tmp_path):
  shapes_dir, run = embedding_run  # the 40 px corpus and its 2-step run (conftest)
  folder, meta = exported
  assert meta['features'] == 'embedding' and meta['task'] == 'identity'
  assert meta['platforms'] == ['cpu', 'cuda', 'tpu'] and meta['embedding_dim'] == 16
  assert meta['preprocess'] == {'pp': 'decode|resize(32)|value_range(-1,1)', 'height': 32,
                                'width': 32, 'scale': 'value_range', 'value_range': [-1.0, 1.0]}
  rows, _ = embed.embed(run, shapes_dir, 'train', str(tmp_path / 'e.npz'))
  want = retrieval.load_embeddings(str(tmp_path / 'e.npz'))
  paths = records.shard_paths(shapes_dir, 'train')
  raw = records.read_shard(paths[0])[:7]
  files = []
  for i, r in enumerate(raw):
    files.append(str(tmp_path / f'{i}.png'))
    with open(files[-1], 'wb') as f:
      f.write(records.decode(r, 'x').image)
  out = tmp_path / 'served.json'
  subprocess.run([sys.executable, '-c', _SERVE, folder, str(out), *files],
                 check=True, cwd=str(tmp_path), env={**os.environ, 'PYTHONPATH': helpers.REPO})
  served = json.loads(out.read_text())
  assert served['loaded'] == []  # No training code, no flax: jax, numpy and PIL.
  # Shard 0's records are the split's first rows (records.shard_paths order); batches of 5 and 3.
  np.testing.assert_allclose(served['five'], want['embedding'][:7], atol=2e-5)
  np.testing.assert_allclose(served['threes'], want['embedding'][:7], atol=2e-5)
  assert rows == len(want['embedding'])


def test_a_damaged_export_and_an_unportable_pp_are_refused(embedding_run, exported, tmp_path):
  run = embedding_run[1]
  out = str(tmp_path / 'export')
  shutil.copytree(exported[0], out)
  with open(os.path.join(out, serving.PARAMS_FILE), 'r+b') as f:
    f.seek(100)
    f.write(b'\0\0\0\0')
  with pytest.raises(ValueError, match='params.npz: sha256 differs'):
    serving.load(out)
  with pytest.raises(ValueError, match="export supports 'decode|resize"):
    export.export_model(run, str(tmp_path / 'x'),
                        pp='decode|resize_small(40)|center_crop(32)|value_range(-1,1)')
