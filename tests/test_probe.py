"""Frozen-feature evaluation: the linear probe, pooled-feature embeddings of a run with no
embedding head (pretrained only), and the probe tool and evaluator on them."""
import json
import os

import numpy as np
import pytest

from bigvis import config as config_lib, metrics, probe, synthetic, train
from bigvis.corpora.writer import CARD_JSON
from bigvis.tools import embed, eval_retrieval, probe as probe_tool
from tests import helpers

PP = 'decode|resize(32)|value_range(-1,1)'


def _blobs(n, seed, shift=0.0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n)
  centres = np.array([[4, 0, 0, 0, 0, 0], [0, 4, 0, 0, 0, 0], [0, 0, 4, 0, 0, 0]], float)
  return centres[y] + rng.normal(size=(n, 6)) + shift, y


def test_linear_probe_separates_blobs_and_chooses_l2_without_the_test_rows():
  (x, y), (tx, ty) = _blobs(300, 0), _blobs(100, 1)
  result = probe.linear_probe(x, y, tx, ty)
  assert result['accuracy'] > 0.95 and result['classes'] == 3
  assert set(result['val_accuracy']) == set(probe.DEFAULT_CS) and result['c'] in probe.DEFAULT_CS
  # The choice of C sees only the training rows: other test labels change the score, not C.
  scrambled = probe.linear_probe(x, y, tx, np.random.default_rng(2).permutation(ty))
  assert scrambled['c'] == result['c'] and scrambled['val_accuracy'] == result['val_accuracy']
  assert scrambled['accuracy'] < 0.6
  # Unknown labels (negative) are left out, on both sides.
  y_unknown, ty_unknown = y.copy(), ty.copy()
  y_unknown[:50], ty_unknown[:10] = -1, -1
  partial = probe.linear_probe(x, y_unknown, tx, ty_unknown)
  assert (partial['train_rows'], partial['test_rows']) == (250, 90)
  with pytest.raises(ValueError, match='at least 2'):
    probe.linear_probe(x, np.zeros_like(y), tx, ty)


@pytest.fixture(scope='module')
def pretrained_only(tmp_path_factory):
  """A corpus with train and validation splits, and a run whose only task is multi-label (no
  embedding head), with a linear-probe evaluator on the shape field at its last step."""
  data = str(tmp_path_factory.mktemp('probe_data'))
  synthetic.make_shapes_corpus(data, num_records=96, image_size=32, num_shards=2, seed=0)
  synthetic.make_shapes_corpus(data, num_records=48, image_size=32, num_shards=1, seed=1,
                               name='validation')
  # The card a prepared corpus has, for the field no task of this run names.
  card = {'status': 'ok', 'label_names': {'shape': list(synthetic.SHAPES)},
          'fields': {'labels': {'shape': {'kind': 'int'}}}}
  with open(os.path.join(data, CARD_JSON), 'w') as f:
    json.dump(card, f)
  c = helpers.tiny_config(data, total_steps=4, checkpoint_every_steps=4)
  del c.tasks['identity'], c.tasks['shape']
  c.evals.probe = config_lib.evaluator('linear_probe', every_steps=4, query_split='validation',
                                       index_split='train', label_field='shape', pp=PP)
  workdir = str(tmp_path_factory.mktemp('probe_run'))
  train.train(c, workdir)
  return data, workdir


def test_pooled_embeddings_of_a_pretrained_only_run_probe_and_retrieval(pretrained_only, tmp_path):
  data, workdir = pretrained_only
  files = {}
  for split in ('train', 'validation'):
    files[split] = str(tmp_path / f'{split}.npz')
    _, meta = embed.embed(workdir, data, split, files[split], pp=PP)  # features: auto -> pooled
    assert meta['features'] == 'pooled' and meta['task'] == ''
  with pytest.raises(ValueError, match="embedding tasks are \\[\\]"):
    embed.embed(workdir, data, 'train', str(tmp_path / 'x.npz'), pp=PP, features='embedding')

  report = probe_tool.main(['--train', files['train'], '--test', files['validation'],
                            '--label', 'shape', '--out', str(tmp_path / 'probe')])
  assert json.loads((tmp_path / 'probe' / 'probe.json').read_text()) == json.loads(
      json.dumps(report))
  # The trainer's evaluator saw the same params, pp and splits: the same probe result.
  last = [r for r in metrics.read_metrics(workdir) if 'eval/probe/linear_probe_accuracy' in r][-1]
  assert last['step'] == 4
  assert report['linear_probe']['accuracy'] == pytest.approx(
      last['eval/probe/linear_probe_accuracy'], abs=1 / 48 + 1e-9)  # at most one row differs
  assert set(report['knn_accuracy']) == {1, 10}

  eval_retrieval.main(['--queries', files['validation'], '--database', files['train'],
                       '--label', 'shape', '--examples', '0', '--repeats', '1',
                       '--out', str(tmp_path / 'retrieval')])
  scores = json.loads((tmp_path / 'retrieval' / 'retrieval.json').read_text())
  assert scores['queries_meta']['features'] == 'pooled'
  with pytest.raises(SystemExit, match='share record ids'):
    probe_tool.main(['--train', files['train'], '--test', files['train'], '--label', 'shape',
                     '--out', str(tmp_path / 'same')])


def test_a_probe_on_the_split_it_fits_is_refused():
  c = helpers.tiny_config('/nonexistent')
  c.evals.probe = config_lib.evaluator('linear_probe', every_steps=1, query_split='train',
                                       index_split='train', label_field='shape', pp=PP)
  with pytest.raises(config_lib.ConfigError, match='scored on other rows'):
    config_lib.validate(c)
