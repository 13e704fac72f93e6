"""Frozen-feature evaluation: the linear probe, pooled-feature embeddings of a run with no
embedding head (pretrained only), and the probe tool and evaluator on them."""
import json
import os

import numpy as np
import pytest

from bigvis import config as config_lib, evaluators, metrics, probe, retrieval, synthetic, train
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
  card = {'status': 'ok',
          'label_names': {'shape': list(synthetic.SHAPES), 'tags': list(synthetic.TAG_WORDS)},
          'fields': {'labels': {'shape': {'kind': 'int'}, 'tags': {'kind': 'list_int'}}}}
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


def test_frequency_bands_split_the_assignments_half_torso_fifth():
  # Class counts 50, 25, 10, 10, 5, 0 (100 assignments): the classes before 3 hold 85%.
  counts = [50, 25, 10, 10, 5, 0]
  rows = np.zeros((50, 6), np.uint8)
  for c, n in enumerate(counts):
    rows[:n, c] = 1
  bands = evaluators.frequency_bands(rows)
  assert {k: v.tolist() for k, v in bands.items()} == {'head': [0], 'torso': [1, 2],
                                                         'tail': [3, 4]}  # 5: never assigned


def test_knn_band_precision_scores_each_band_on_the_rows_that_carry_it():
  # Index rows sit on the axes of a 4-d space; classes: 0 head (every row), 1-3 one per row.
  index = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
  index_y = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [1, 0, 0, 0]], np.uint8)
  queries = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]] + 0.01
  query_y = np.array([[1, 1, 0, 0],   # neighbour 0 carries 1: right
                      [1, 0, 0, 1],   # neighbour 1 carries 2, the row carries 3: wrong
                      [0, 0, 0, 0],   # carries no tail class: not counted in 'tail'
                      [1, 1, 0, 0]],  # neighbour 3 carries no tail class: no guess, wrong
                     np.uint8)
  bands = {'head': np.array([0]), 'tail': np.array([1, 2, 3]), 'empty': np.array([], int)}
  out = evaluators.knn_band_precision(queries, query_y, index, index_y, 1, bands)
  assert out['tail'] == {'precision@1': pytest.approx(1 / 3), 'queries': 3, 'classes': 3}
  assert out['head'] == {'precision@1': 1.0, 'queries': 3, 'classes': 1}
  assert out['empty']['queries'] == 0 and out['empty']['precision@1'] != out['empty']['precision@1']


def test_multi_hot_labels_embedded_and_probed_by_band(pretrained_only, tmp_path):
  data, workdir = pretrained_only
  files = {}
  for split in ('train', 'validation'):
    files[split] = str(tmp_path / f'{split}.npz')
    embed.embed(workdir, data, split, files[split], pp=PP, multi_hot=('tags',))
  train_rows = retrieval.load_embeddings(files['train'])
  tags = train_rows['label/tags']
  assert tags.dtype == np.uint8 and tags.shape == (96, synthetic.NUM_TAGS)
  assert (tags.sum(1) == 4).all()  # shape, colour, size and style words: 4 tags per record
  report = probe_tool.main(['--train', files['train'], '--test', files['validation'],
                            '--label', 'tags', '--ks', '1,5', '--out', str(tmp_path / 'bands')])
  per_band = report['band_precision'][5]
  assert set(per_band) == {'head', 'torso', 'tail'}
  assert sum(b['classes'] for b in per_band.values()) == int((tags.sum(0) > 0).sum())
  # Each band is scored on the validation rows that carry one of its classes.
  val_tags = retrieval.load_embeddings(files['validation'])['label/tags'].astype(bool)
  bands = evaluators.frequency_bands(tags)
  for name, b in per_band.items():
    assert b['queries'] == int(val_tags[:, bands[name]].any(1).sum())
    assert 0 <= b['precision@1'] <= 1
  with pytest.raises(ValueError, match="--multi_hot 'shape': not a list label field"):
    embed.embed(workdir, data, 'train', str(tmp_path / 'x.npz'), pp=PP, multi_hot=('shape',))


def test_a_probe_on_the_split_it_fits_is_refused():
  c = helpers.tiny_config('/nonexistent')
  c.evals.probe = config_lib.evaluator('linear_probe', every_steps=1, query_split='train',
                                       index_split='train', label_field='shape', pp=PP)
  with pytest.raises(config_lib.ConfigError, match='scored on other rows'):
    config_lib.validate(c)
