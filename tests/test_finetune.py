"""Fine-tuning from a pretrained run, frozen-trunk warm-up, evaluators during training, and the
embed tool, on the synthetic shapes corpus with the tiny 2-layer ViT."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigvis import config as config_lib, evaluators, metrics, retrieval, train
from tests import helpers
from bigvis.tools import embed

PP = 'decode|resize(32)|value_range(-1,1)'


def _params(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)['params']


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def pretrained_run(shapes_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  train.train(helpers.tiny_config(shapes_dir, total_steps=4, checkpoint_every_steps=4), workdir)
  return workdir


def test_accuracy_precision_and_knn_by_hand():
  logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
  assert evaluators.accuracy(logits, np.array([1, 1, 1])) == pytest.approx(2 / 3)
  multi_hot = np.array([[0, 1], [0, 1], [0, 0]], np.float32)  # the last has no label: left out
  assert evaluators.precision_at_1(logits, multi_hot) == pytest.approx(1 / 2)
  # Index: two points of class 0 near +x, one of class 1 near +y. A query near +y: 1-NN says 1,
  # 3-NN votes 0 (two votes against one).
  index = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
  index_labels = np.array([0, 0, 1])
  query = np.array([[0.2, 1.0]])
  assert evaluators.knn_accuracy(query, np.array([1]), index, index_labels, k=1) == 1.0
  assert evaluators.knn_accuracy(query, np.array([1]), index, index_labels, k=3) == 0.0
  # A 1-1 tie with k=2 goes to the nearer neighbour's class.
  assert evaluators.knn_accuracy(query, np.array([1]), index[1:], index_labels[1:], k=2) == 1.0


def test_search_without_self_never_returns_the_query():
  x = np.random.RandomState(0).randn(20, 8).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  x[3] = x[4]  # A duplicate: the tie must still drop only the query's own row.
  ids = evaluators.search_without_self(x, x, 5, 'dot', same_split=True)
  assert ids.shape == (20, 5)
  assert not (ids == np.arange(20)[:, None]).any()
  assert ids[3, 0] == 4 and ids[4, 0] == 3
  full = np.argsort(-(x @ x.T), axis=1, kind='stable')
  for q in range(20):
    assert list(ids[q]) == [i for i in full[q] if i != q][:5]


def test_evaluator_config_errors_name_the_field(shapes_dir):
  c = helpers.tiny_config(shapes_dir)
  c.evals.r = config_lib.evaluator('retrieval', every_steps=2, query_split='train',
                                   index_split='train', label_field='identity', task='shape', pp=PP)
  with pytest.raises(config_lib.ConfigError, match=r"evals.r.task='shape' is not an embedding"):
    config_lib.validate(c)
  c.evals.r.task = 'identity'
  c.evals.r.every_step = 3
  with pytest.raises(config_lib.ConfigError, match=r"evals.r.'every_step'.*every_steps"):
    config_lib.validate(c)
  del c.evals.r['every_step']
  c.evals.r.kind = 'recall'
  with pytest.raises(config_lib.ConfigError, match='evals.r.kind'):
    config_lib.validate(c)


def test_finetune_from_pretrained_with_frozen_warmup_and_evals(shapes_dir, pretrained_run, tmp_path):
  c = helpers.tiny_config(shapes_dir, total_steps=6, checkpoint_every_steps=2, log_every_steps=2)
  c.init.path = pretrained_run
  c.freeze_trunk_steps = 2
  c.evals.retrieval = config_lib.evaluator(
      'retrieval', every_steps=3, query_split='train', index_split='train',
      label_field='identity', task='identity', ks=(1, 5), pp=PP)
  c.evals.heads = config_lib.evaluator('classification', every_steps=3, split='train', pp=PP)
  c.evals.knn = config_lib.evaluator('knn', every_steps=6, query_split='train',
                                     index_split='train', label_field='shape', k=3, pp=PP)
  workdir = str(tmp_path)
  train.train(c, workdir)

  source = _params(pretrained_run, 4)
  after_warmup, final = _params(workdir, 2), _params(workdir, 6)
  assert _equal(after_warmup['trunk'], source['trunk'])  # Loaded, then frozen for 2 steps.
  assert not _equal(final['trunk'], source['trunk'])  # Then trained.
  for name in ('head_identity', 'head_shape', 'head_labels'):  # Heads start fresh, not loaded.
    assert not _equal(after_warmup[name], source[name])

  rows = [r for r in metrics.read_metrics(workdir) if any(k.startswith('eval/') for k in r)]
  assert [r['step'] for r in rows] == [3, 6]
  assert {'eval/retrieval/float/recall@1', 'eval/retrieval/binary/recall@5',
          'eval/heads/shape/accuracy', 'eval/heads/labels/precision@1'} <= set(rows[0])
  assert 'eval/knn/3nn_accuracy' in rows[1] and 'eval/knn/3nn_accuracy' not in rows[0]
  for row in rows:
    for key, value in row.items():
      if key.startswith('eval/') and key != 'eval/seconds':
        assert 0.0 <= value <= 1.0, key
    assert row['eval/retrieval/float/recall@1'] <= row['eval/retrieval/float/recall@5']


def test_embed_tool_writes_every_record_with_its_id(shapes_dir, pretrained_run, tmp_path):
  out = str(tmp_path / 'train.npz')
  embed.main(['--workdir', pretrained_run, '--split', 'train', '--out', out, '--pp', PP,
              '--batch_size', '16'])
  arrays = retrieval.load_embeddings(out)
  meta = arrays.pop('meta')
  n = 96  # helpers.make_corpus
  assert arrays['embedding'].shape == (n, 16) and len(arrays['id']) == n
  assert list(arrays['index']) == list(range(n))
  assert len(set(arrays['id'])) == n
  np.testing.assert_allclose(np.linalg.norm(arrays['embedding'], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(arrays['codes'], np.packbits(arrays['embedding'] > 0, axis=-1))
  assert set(arrays) >= {'pred/shape', 'label/shape', 'label/identity', 'pooled'}
  assert meta['step'] == 4 and meta['split'] == 'train' and meta['task'] == 'identity'
  # The predictions are the saved model's own: its shape head on the saved pooled features.
  head = _params(pretrained_run, 4)['head_shape']['Dense_0']
  logits = arrays['pooled'].astype(np.float64) @ np.asarray(head['kernel']) + np.asarray(head['bias'])
  assert len(set(logits.argmax(-1))) > 1  # A head that has learned something, not a constant.
  np.testing.assert_array_equal(arrays['pred/shape'], logits.argmax(-1))
  # The same checkpoint embeds the same way again, and the predictions are the model's.
  again = str(tmp_path / 'again.npz')
  embed.main(['--workdir', pretrained_run, '--split', 'train', '--out', again, '--pp', PP,
              '--batch_size', '32'])
  np.testing.assert_allclose(retrieval.load_embeddings(again)['embedding'], arrays['embedding'],
                             atol=1e-6)
