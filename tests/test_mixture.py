"""Several corpora in one run: each task trains on the examples of the corpora that label it."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigvis import config as config_lib, heads, metrics, optim, synthetic, train, train_input
from tests import helpers


@pytest.fixture(scope='module')
def corpora(tmp_path_factory):
  a = helpers.make_corpus(tmp_path_factory.mktemp('a'), num_records=64)
  b = str(tmp_path_factory.mktemp('b'))
  synthetic.make_shapes_corpus(b, num_records=40, image_size=32, num_shards=1, seed=1)
  return a, b


def mixture_config(a, b, **fields):
  """Corpus a gives every field; b gives only `tags`, so the embedding and shape tasks must not
  train on b's examples."""
  c = helpers.tiny_config('', **fields)
  c.input.split = ''
  c.input.sources.a = config_lib.source(a, weight=1, labels=('tags', 'identity', 'shape'))
  c.input.sources.b = config_lib.source(b, weight=1, labels=('tags',))
  return c


def _batch_and_step(c):
  sources = train_input.resolve(c)
  train_input.resolve_num_classes(c, sources)
  batch = next(iter(train_input.make_train_iter(c, sources, batch_size=8, worker_count=0,
                                                process_index=0, process_count=1)))
  batch = jax.tree.map(jnp.asarray, train.device_batch(batch))
  model = heads.build_model(c)
  tx, lr = optim.make_optimizer(c.optimizer, c.total_steps)
  params = model.init(jax.random.key(0), batch['image'][:1])['params']
  kernel = params['head_shape']['Dense_0']['kernel']  # Zero-initialized: labels would not show.
  params['head_shape']['Dense_0']['kernel'] = jax.random.normal(jax.random.key(1), kernel.shape)
  state = dict(step=jnp.array(3), params=params, opt_state=tx.init(params))
  return batch, jax.jit(train.make_train_step(model, c, tx, lr)), state


def test_a_task_ignores_the_examples_without_its_label(corpora):
  c = mixture_config(*corpora)
  batch, step, state = _batch_and_step(c)
  masks = batch['label_mask']
  assert 0 < int(masks['shape'].sum()) < 8 and bool(masks['tags'].all())
  np.testing.assert_array_equal(masks['shape'], masks['identity'])

  def relabel(where):  # Other shape and identity classes at the rows `where`.
    labels = dict(batch['labels'])
    for field, n in (('shape', synthetic.NUM_SHAPES), ('identity', synthetic.NUM_IDENTITIES)):
      labels[field] = jnp.where(where, (labels[field] + 1) % n, labels[field])
    return {**batch, 'labels': labels}

  new, out = step(state, batch)
  new2, out2 = step(state, relabel(~masks['shape']))  # Only unlabelled examples differ.
  for key in ('loss', 'grad_norm', 'loss/shape', 'loss/identity'):
    assert float(out[key]) == float(out2[key]), key
  jax.tree.map(np.testing.assert_array_equal, new['params'], new2['params'])
  _, out3 = step(state, relabel(masks['shape']))  # The labelled ones do count.
  assert float(out3['loss/shape']) != float(out['loss/shape'])
  # The shape loss is the mean over corpus a's examples alone.
  _, unmasked = step(state, {**batch, 'label_mask': {**masks, 'shape': jnp.ones(8, bool)}})
  assert float(unmasked['loss/shape']) != float(out['loss/shape'])


def test_a_mixture_run_resumes_exactly(corpora, tmp_path):
  c = mixture_config(*corpora, total_steps=4, checkpoint_every_steps=2)
  workdir = tmp_path / 'run'
  train.train(c, str(workdir))
  train_rows = lambda: [r for r in metrics.read_metrics(workdir) if 'loss' in r]
  straight = train_rows()
  shutil.rmtree(workdir / 'checkpoints' / '4')  # As if killed after the checkpoint at step 2.
  train.train(mixture_config(*corpora, total_steps=4, checkpoint_every_steps=2), str(workdir))
  resumed = train_rows()
  assert [r['step'] for r in resumed] == list(range(1, 5))
  for key in ('loss', 'loss/shape', 'loss/labels', 'grad_norm'):
    assert [r[key] for r in straight] == [r[key] for r in resumed], key


def _source(name, fields, names):
  card = {'label_names': names, 'fields': {'labels': {f: {} for f in names}}}
  return train_input.Source(name, f'/data/{name}', 'train', 1.0, '', (), card, fields)


def test_a_field_two_corpora_name_differently_is_refused():
  same = train_input.label_names([_source('x', ('c',), {'c': ['a', 'b']}),
                                  _source('y', ('c',), {'c': ['a', 'b']})])
  assert same == {'c': ['a', 'b']}
  with pytest.raises(config_lib.ConfigError, match=r"'c': the cards of /data/x and /data/y"):
    train_input.label_names([_source('x', ('c',), {'c': ['a', 'b']}),
                             _source('y', ('c',), {'c': ['b', 'a']})])
  # A field a source does not give is not compared.
  assert train_input.label_names([_source('x', ('c',), {'c': ['a']}),
                                  _source('y', (), {'c': ['z']})]) == {'c': ['a']}


def test_mixture_config_errors(corpora):
  a, b = corpora
  c = mixture_config(a, b)
  c.input.data_dir = a
  with pytest.raises(config_lib.ConfigError, match="set input.data_dir"):
    config_lib.validate(c)
  c = mixture_config(a, b)
  c.evals.knn = config_lib.evaluator('knn', every_steps=1, query_split='train',
                                     index_split='train', label_field='shape', pp='decode')
  with pytest.raises(config_lib.ConfigError, match="evals.knn.data_dir is empty"):
    config_lib.validate(c)
  c = mixture_config(a, b)
  c.input.sources.a.labels = ('tags',)
  with pytest.raises(config_lib.ConfigError, match="no input source gives its label field"):
    train_input.resolve(c)
  c = mixture_config(a, b)
  c.input.sources.b.labels = ('color',)
  with pytest.raises(config_lib.ConfigError, match=r"names \['color'\], which no task"):
    train_input.resolve(c)


def test_mix_by_records_weighs_each_source_by_its_record_count(corpora):
  c = mixture_config(*corpora)
  c.input.sources.b.weight = 3
  assert [s.weight for s in train_input.resolve(c)] == [1, 3]
  c.input.mix = 'records'  # a holds 64 records, b 40.
  assert [s.weight for s in train_input.resolve(c)] == [64, 120]
  c.input.mix = 'pooled'
  with pytest.raises(config_lib.ConfigError, match=r"input.mix='pooled': choose from"):
    config_lib.validate(c)


def test_the_multitask_config_validates():
  from bigvis.configs import multitask
  c = config_lib.validate(multitask.get_config('runlocal'))
  assert sorted(c.input.sources) == ['clipart', 'emoji']
  assert c.input.sources.clipart.labels == ('category',)
  assert {e.data_dir for e in c.evals.values()} == {'runs/data/emoji', 'runs/data/openclipart'}


def test_a_classification_eval_on_a_corpus_with_other_classes_is_refused(corpora, tmp_path):
  from bigvis import evaluators, sharding
  from bigvis.corpora.writer import CARD_JSON
  names = list(synthetic.SHAPES)
  for folder, shape_names in (('same', names), ('other', names[::-1])):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / CARD_JSON).write_text(json.dumps(
        {'status': 'ok', 'label_names': {'shape': shape_names}}))
  c = mixture_config(*corpora)
  model = heads.build_model(c)
  mesh = sharding.make_mesh(c.mesh)
  for folder in ('same', 'other'):
    c.evals.heads = config_lib.evaluator('classification', every_steps=1, split='train',
                                         task='shape', pp='decode', data_dir=str(tmp_path / folder))
    make = lambda: evaluators.Evaluators(c, model, mesh, None, {'shape': names})
    if folder == 'same':
      make()
    else:
      with pytest.raises(config_lib.ConfigError, match="names other classes for 'shape'"):
        make()
  # k-NN compares the corpus's labels with themselves: other class names are fine there.
  c.evals.heads = config_lib.evaluator('knn', every_steps=1, query_split='a', index_split='b',
                                       label_field='shape', pp='decode',
                                       data_dir=str(tmp_path / 'other'))
  evaluators.Evaluators(c, model, mesh, None, {'shape': names})
