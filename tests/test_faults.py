"""Faults under training: corrupt records are replaced, counted and bounded; a non-finite loss or
gradient never reaches the params ('skip' steps over it, 'stop' ends the run before a checkpoint)."""
import os
import re

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python import array_record_module

from bigvis import config as config_lib, data, heads, metrics, optim, records, synthetic, train
from tests import helpers

NUM_RECORDS = 200
NUM_SHARDS = 2
# One record in every 20 is bad (on alternate shards), the kinds in turn: 10 of 200 (5%), two of
# each kind.
BAD_KINDS = {  # kind -> what RecordChecker's message says
    'not_msgpack': 'not a msgpack record',
    'off_schema': "unknown field(s) ['extra']",
    'undecodable_image': "field 'image': pp",
    'truncated_png': "field 'image': pp",
    'label_out_of_range': "field 'labels.shape': class label 99",
}
PP = 'decode|resize(32)|flip_lr|value_range(-1,1)'


def _raw(n):
  """Record n of the corpus, serialized: good, or bad in one of BAD_KINDS' ways."""
  record = synthetic.make_record(n, image_size=32)
  kind = list(BAD_KINDS)[(n // 20) % len(BAD_KINDS)] if n % 20 == 7 + (n // 20) % 2 else None
  if kind == 'not_msgpack':
    return kind, b'\xc1 never a msgpack byte'
  if kind == 'off_schema':
    return kind, msgpack.packb({'v': 1, 'id': record.id, 'image': record.image, 'texts': {},
                                'labels': {}, 'extra': 1}, use_bin_type=True)
  if kind == 'undecodable_image':
    record = records.Record(record.id, b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4,
                            record.texts, record.labels)
  elif kind == 'truncated_png':
    record = records.Record(record.id, record.image[:len(record.image) // 2], record.texts,
                            record.labels)
  elif kind == 'label_out_of_range':
    record = records.Record(record.id, record.image, record.texts,
                            {**record.labels, 'shape': 99})
  return kind, records.encode(record)


@pytest.fixture(scope='module')
def bad_corpus(tmp_path_factory):
  """(data_dir, paths, {global record number: kind}) of a 200-record corpus, 5% of it bad.

  Written with array_record's writer directly (write_shards validates, so it cannot write the
  undecodable kinds); records go round-robin over the shards, as write_shards does.
  """
  out = tmp_path_factory.mktemp('bad_corpus')
  paths = [str(out / records.shard_name('train', i, NUM_SHARDS)) for i in range(NUM_SHARDS)]
  shards = [[] for _ in paths]
  for n in range(NUM_RECORDS):
    shards[n % NUM_SHARDS].append(_raw(n))
  bad, offset = {}, 0
  for path, shard in zip(paths, shards):
    writer = array_record_module.ArrayRecordWriter(path, records.WRITER_OPTIONS)
    for i, (kind, raw) in enumerate(shard):
      writer.write(raw)
      if kind:
        bad[offset + i] = kind
    writer.close()
    offset += len(shard)
  assert sorted(bad.values()) == sorted(list(BAD_KINDS) * 2)
  return str(out), paths, bad


def _labels():
  return config_lib.label_specs(helpers.tiny_config('/unused'))


def _dataset(paths, **kwargs):
  return data.make_dataset(paths, **{'pp': PP, 'labels': _labels(), 'batch_size': 8, 'seed': 0,
                                     'bad_records': 'replace', **kwargs})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in ('index', 'bad_index', 'image'):
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    for field in x['labels']:
      np.testing.assert_array_equal(x['labels'][field], y['labels'][field], err_msg=field)


# --- the input pipeline -----------------------------------------------------------------------

def test_checker_names_shard_record_id_and_what_is_wrong(bad_corpus):
  _, paths, bad = bad_corpus
  checker = data.RecordChecker(paths, pp=PP, labels=_labels())
  per_shard = NUM_RECORDS // NUM_SHARDS
  for index, kind in bad.items():
    why = checker.problem(index)
    shard, position = divmod(index, per_shard)
    assert why.startswith(f'{paths[shard]} record {position}'), why
    assert BAD_KINDS[kind] in why, why
    if kind not in ('not_msgpack', 'off_schema'):  # the others have a readable id
      assert "(id 'shapes-train-0-" in why, why
  assert checker.problem(0) is None and checker.num_records == NUM_RECORDS


def test_replace_keeps_batches_full_and_marks_every_bad_record_once_per_epoch(bad_corpus):
  _, paths, bad = bad_corpus
  batches = _take(iter(_dataset(paths)), 2 * NUM_RECORDS // 8)  # two epochs
  for epoch in (batches[:25], batches[25:]):
    index = np.concatenate([b['index'] for b in epoch])
    bad_index = np.concatenate([b['bad_index'] for b in epoch])
    replaced = bad_index >= 0
    assert sorted(bad_index[replaced]) == sorted(bad)  # each bad record once, marked
    assert not set(index) & set(bad)  # what trains is always a good record
    np.testing.assert_array_equal(np.sort(index[~replaced]), sorted(set(range(NUM_RECORDS)) - set(bad)))
    # The replacement is the next good record in record order.
    for i, b in zip(index[replaced], bad_index[replaced]):
      assert i == next(j % NUM_RECORDS for j in range(b + 1, b + 65) if j % NUM_RECORDS not in bad)
  for b in batches:
    assert b['image'].shape == (8, 32, 32, 3) and np.isfinite(b['image']).all()
    assert (b['labels']['shape'] < synthetic.NUM_SHAPES).all()


def test_replacement_same_for_any_worker_count_and_after_resume(bad_corpus):
  _, paths, _ = bad_corpus
  expected = _take(iter(_dataset(paths)), 10)
  assert sum((b['bad_index'] >= 0).sum() for b in expected) > 0
  _assert_batches_equal(expected, _take(iter(_dataset(paths)), 10))  # a second run
  it = iter(_dataset(paths, worker_count=2))
  try:
    _assert_batches_equal(_take(it, 5), expected[:5])
    state = it.get_state()
  finally:
    it.close()
  fresh = iter(_dataset(paths, worker_count=2))
  try:
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 5), expected[5:])
  finally:
    fresh.close()


def test_raise_mode_and_eval_still_fail_on_the_first_bad_record(bad_corpus):
  _, paths, bad = bad_corpus
  with pytest.raises(records.RecordError, match=r'\.array_record record '):
    _take(iter(_dataset(paths, bad_records='raise')), 25)
  with pytest.raises(records.RecordError, match=r'\.array_record record '):
    list(data.make_eval_dataset(paths, pp=PP, labels=_labels(), batch_size=8))
  with pytest.raises(ValueError, match='bad_records'):
    _dataset(paths, bad_records='skip')


def test_replacement_search_is_bounded(tmp_path):
  path = str(tmp_path / records.shard_name('train', 0, 1))
  writer = array_record_module.ArrayRecordWriter(path, records.WRITER_OPTIONS)
  for _ in range(3):
    writer.write(b'\xc1 never a msgpack byte')
  writer.close()
  with pytest.raises(records.RecordError, match=r'not a msgpack record.*none of the next 2 records'):
    next(iter(_dataset([path], batch_size=1)))


def test_config_fields_validated():
  c = helpers.tiny_config('/unused')
  assert c.input.max_bad_fraction == 0.01 and c.nonfinite == 'skip'
  config_lib.validate(c)
  c.input.max_bad_fraction = 1.5
  with pytest.raises(config_lib.ConfigError, match=r'max_bad_fraction must be in \[0, 1\]'):
    config_lib.validate(c)
  c = helpers.tiny_config('/unused')
  c.nonfinite = 'ignore'
  with pytest.raises(config_lib.ConfigError, match=r"nonfinite='ignore'"):
    config_lib.validate(c)


# --- the trainer and bad records --------------------------------------------------------------

def _bad_in_first(paths, steps):
  """Bad examples in the trainer's first `steps` batches (tiny config: batch 8, seed 0)."""
  return int(sum((b['bad_index'] >= 0).sum() for b in _take(iter(_dataset(paths)), steps)))


def test_training_on_bad_records_runs_to_the_end_and_counts_them(bad_corpus, tmp_path):
  data_dir, paths, _ = bad_corpus
  c = helpers.tiny_config(data_dir, total_steps=30, checkpoint_every_steps=10,
                          **{'input.max_bad_fraction': 0.1})
  train.train(c, str(tmp_path))
  rows = metrics.read_metrics(tmp_path)
  assert [r['step'] for r in rows] == list(range(1, 31))
  assert all(np.isfinite(r['loss']) for r in rows)
  counts = [r['data/bad_examples'] for r in rows]
  assert counts == sorted(counts) and counts[-1] == _bad_in_first(paths, 30) >= 10  # > 1 epoch
  # Resumed, the count goes on from the checkpoint's (it is part of the train state).
  c.total_steps = 40
  train.train(c, str(tmp_path))
  rows = metrics.read_metrics(tmp_path)
  assert [r['step'] for r in rows] == list(range(1, 41))
  assert rows[-1]['data/bad_examples'] == _bad_in_first(paths, 40)


def test_too_many_bad_records_stop_the_run_naming_them(bad_corpus, tmp_path):
  data_dir, paths, _ = bad_corpus
  p = helpers.train_process(tmp_path, data_dir, '--config.total_steps=40',
                            '--config.checkpoint_every_steps=10',
                            '--config.input.max_bad_fraction=0.001')
  _, err = p.communicate(timeout=600)
  assert p.returncode != 0
  assert 'Traceback' not in err, err[-3000:]
  # Judged from one epoch (200 examples < 1000) on: step 25 of batch 8; all 10 bad ones seen.
  assert 'step 25: 10 of 200 training examples (5.00%) were bad records' in err, err[-3000:]
  assert 'input.max_bad_fraction=0.001' in err
  assert re.search(r'train-0000[01]-of-00002\.array_record record \d+', err), err[-3000:]
  assert sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()) == [10, 20]


# --- non-finite steps -------------------------------------------------------------------------

def test_step_with_nan_changes_nothing_but_the_counters(shapes_dir):
  # No warmup: its learning rate is 0 at the optimizer's first step, which would change nothing.
  c = helpers.tiny_config(shapes_dir, **{'optimizer.warmup_steps': 0})
  batch = next(iter(data.make_dataset(records.shard_paths(shapes_dir, 'train'), pp=c.input.pp,
                                      labels=config_lib.label_specs(c), batch_size=8, seed=0)))
  batch = {'image': jnp.asarray(batch['image']), 'labels': batch['labels'],
           'bad': np.array([0, 1, 0, 0, 0, 0, 1, 0], np.int32)}
  model = heads.build_model(c)
  tx, lr = optim.make_optimizer(c.optimizer, c.total_steps)
  params = model.init(jax.random.key(0), batch['image'][:1])['params']
  state = dict(step=jnp.array(3), params=params, opt_state=tx.init(params),
               nonfinite_steps=jnp.array(0), bad_examples=jnp.array(5))
  step = jax.jit(train.make_train_step(model, c, tx, lr))

  good_state, good = step(state, batch)
  assert int(good['nonfinite']) == 0 and int(good_state['nonfinite_steps']) == 0
  assert int(good_state['bad_examples']) == int(good['data/bad_examples']) == 7
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(good_state['params']),
                                                      jax.tree.leaves(state['params'])))

  nan_batch = dict(batch, image=batch['image'].at[0, 0, 0, 0].set(jnp.nan))
  new_state, out = step(good_state, nan_batch)
  assert int(out['nonfinite']) == 1 and not np.isfinite(out['loss'])
  assert int(new_state['nonfinite_steps']) == int(out['nonfinite_steps']) == 1
  assert int(new_state['step']) == 5 and int(new_state['bad_examples']) == 9
  for key in ('params', 'opt_state'):
    jax.tree.map(np.testing.assert_array_equal, new_state[key], good_state[key])


def _first_records_of_step(c, step):
  """A record that the tiny run first reads at `step` (1-based), and every step that reads it."""
  ds = data.make_dataset(records.shard_paths(c.input.data_dir, 'train'), pp=c.input.pp,
                         labels=config_lib.label_specs(c), batch_size=c.batch_size, seed=c.seed)
  batches = [b['index'] for b in _take(iter(ds), c.total_steps)]
  record = int(batches[step - 1][0])
  assert all(record not in b for b in batches[:step - 1])
  return record, [s + 1 for s, b in enumerate(batches) if record in b]


class _Poison:
  """Batches holding record `index` get a NaN image: a loss that is NaN at known steps."""

  def __init__(self, index):
    self.index = index

  def __call__(self, batch):
    hit = batch['index'] == self.index
    if hit.any():
      batch = dict(batch, image=batch['image'].copy())
      batch['image'][hit] = np.nan
    return batch


def _poison(monkeypatch, index):
  make_dataset = data.make_dataset
  monkeypatch.setattr(data, 'make_dataset',
                      lambda *a, **k: make_dataset(*a, **k).map(_Poison(index)))


def test_nan_mid_run_skipped(shapes_dir, tmp_path, monkeypatch):
  c = helpers.tiny_config(shapes_dir, total_steps=30, checkpoint_every_steps=10)
  record, poisoned = _first_records_of_step(c, 8)
  _poison(monkeypatch, record)
  state = train.train(c, str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
  rows = metrics.read_metrics(tmp_path)
  assert [r['step'] for r in rows] == list(range(1, 31))
  assert [r['step'] for r in rows if r['nonfinite']] == poisoned
  assert rows[-1]['nonfinite_steps'] == len(poisoned) >= 2  # once per epoch of 12 steps
  assert all(np.isfinite(r['loss']) for r in rows if not r['nonfinite'])


def test_nan_mid_run_stops_before_the_next_checkpoint(shapes_dir, tmp_path, monkeypatch):
  # Checks at log steps (every 5) and before saves (every 3): the NaN at step 8 is found at 9.
  c = helpers.tiny_config(shapes_dir, total_steps=30, checkpoint_every_steps=3,
                          log_every_steps=5, nonfinite='stop')
  record, _ = _first_records_of_step(c, 8)
  _poison(monkeypatch, record)
  with pytest.raises(train.NonFiniteError, match=r"^step 8: non-finite loss \(nan\).*nonfinite="
                                                 r"'stop'.*latest: step 6"):
    train.train(c, str(tmp_path))
  saved = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  assert saved == [3, 6]
  for step in saved:
    state = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / str(step) / 'state')
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
    assert int(state['nonfinite_steps']) == 0
