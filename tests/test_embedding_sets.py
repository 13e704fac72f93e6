"""Embeddings sets (shards + manifest, several processes, resumable) and sharded ScaNN indexes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigvis import embedding_sets, retrieval, sharded_index
from bigvis.tools import eval_retrieval
from bigvis.tools import embed
from tests import helpers


def _by_index(emb):
  order = np.argsort(emb['index'])
  return {k: v[order] for k, v in emb.items() if k != 'meta'}


def test_two_processes_write_one_set_equal_to_the_single_file(embedding_run, tmp_path):
  shapes_dir, run = embedding_run  # the 40 px corpus and its 2-step run (conftest)
  rows, _ = embed.embed(run, shapes_dir, 'train', str(tmp_path / 'one.npz'), batch_size=16)
  single = _by_index(retrieval.load_embeddings(str(tmp_path / 'one.npz')))
  out = str(tmp_path / 'set')
  first, meta = embed.embed(run, shapes_dir, 'train', out, batch_size=16, num_shards=3,
                            process_index=0, process_count=2)
  assert first is None and not meta['complete']  # Shard 1 is process 1's.
  assert sorted(f for f in os.listdir(out) if f.endswith('.npz')) == [
      'shard-00000-of-00003.npz', 'shard-00002-of-00003.npz']
  total, meta = embed.embed(run, shapes_dir, 'train', out, batch_size=16, num_shards=3,
                            process_index=1, process_count=2)
  assert total == rows and meta['complete']
  manifest = embedding_sets.read_manifest(out)
  assert [s['rows'] for s in manifest['shards']] == [16, 16, 16]
  loaded = retrieval.load_embeddings(out)  # Every tool reads a set folder as one file.
  assert loaded['meta']['num_shards'] == 3
  # Shard i holds records i, i + 3, ...
  np.testing.assert_array_equal(loaded['index'][:16], np.arange(0, 48, 3))
  got = _by_index(loaded)
  assert set(got) == set(single)
  np.testing.assert_array_equal(got['id'], single['id'])
  for key in got:
    if got[key].dtype.kind == 'f':
      np.testing.assert_allclose(got[key], single[key], atol=1e-5, err_msg=key)
    else:
      np.testing.assert_array_equal(got[key], single[key], err_msg=key)

  # A changed shard is refused by everything that reads the set.
  path = os.path.join(out, 'shard-00001-of-00003.npz')
  with open(path, 'r+b') as f:
    f.seek(200)
    f.write(b'\1\2\3')
  with pytest.raises(ValueError, match='shard-00001-of-00003.npz: size or sha256 differs'):
    retrieval.load_embeddings(out)
  # And a set folder of another run's settings is not mixed into.
  with pytest.raises(ValueError, match=r"written for another set \(differs in \['batch_size'\]"):
    embed.embed(run, shapes_dir, 'train', out, batch_size=8, num_shards=3, process_index=0,
                process_count=2)


def test_killed_set_resumes_keeping_finished_shards(embedding_run, tmp_path):
  shapes_dir, run = embedding_run  # the 40 px corpus and its 2-step run (conftest)
  out = str(tmp_path / 'set')
  cmd = [sys.executable, os.path.join(helpers.REPO, 'tools', 'embed.py'), '--workdir', run,
         '--corpus', shapes_dir, '--split', 'train', '--out', out, '--num_shards', '6',
         '--batch_size', '8']
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  first = os.path.join(out, 'shard-00000-of-00006.npz.json')
  deadline = time.time() + 240
  while not os.path.exists(first):
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    assert time.time() < deadline
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(out, embedding_sets.MANIFEST))  # Killed mid-set.
  kept = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)
          if f.endswith('.npz')}
  assert 'shard-00000-of-00006.npz' in kept
  # Resumed by the same function the command runs (in process: a second start-up costs ~10 s).
  rows, _ = embed.embed(run, shapes_dir, 'train', out, batch_size=8, num_shards=6,
                        process_index=0, process_count=1)
  assert rows == 48
  for f, mtime in kept.items():  # Finished shards were kept, not written again.
    assert os.stat(os.path.join(out, f)).st_mtime_ns == mtime, f
  resumed = retrieval.load_embeddings(out)
  reference = str(tmp_path / 'reference')
  embed.embed(run, shapes_dir, 'train', reference, batch_size=8, num_shards=6, process_index=0,
              process_count=1)
  want = retrieval.load_embeddings(reference)
  np.testing.assert_array_equal(resumed['id'], want['id'])
  np.testing.assert_allclose(resumed['embedding'], want['embedding'], atol=1e-6)


def _clustered_set(directory, n, dim, num_shards, seed=0):
  """An embeddings set of clustered unit vectors, written through write_set."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(50, dim))
  labels = rng.integers(50, size=n)
  x = centres[labels] + 0.4 * rng.normal(size=(n, dim))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  meta = {'corpus': 'synthetic', 'split': 'db', 'checkpoint': '-', 'step': 0, 'task': ''}

  def write_shard(i, path):
    rows = np.arange(i, n, num_shards)
    retrieval.save_embeddings(path, {
        'id': np.array([f'r{r}' for r in rows]), 'index': rows.astype(np.int64),
        'embedding': x[rows], 'codes': retrieval.binary_codes(x[rows]),
        'label/c': labels[rows].astype(np.int32)}, meta)
    return len(rows)

  embedding_sets.write_set(directory, num_shards, write_shard, {'seed': seed}, meta=meta)
  return retrieval.load_embeddings(directory)


def test_jax_distributed_processes_write_one_set(embedding_run, tmp_path):
  """Two tools/embed.py processes joined by jax.distributed (as the trainer is launched, through
  BIGVIS_COORDINATOR/...): each takes its process index from JAX and writes its shards."""
  shapes_dir, run = embedding_run
  embed.embed(run, shapes_dir, 'train', str(tmp_path / 'one.npz'), batch_size=16)
  single = _by_index(retrieval.load_embeddings(str(tmp_path / 'one.npz')))
  port = helpers.free_port()
  procs = [subprocess.Popen(
      [sys.executable, 'tools/embed.py', '--workdir', run, '--corpus', shapes_dir, '--split',
       'train', '--batch_size', '16', '--num_shards', '4', '--out', str(tmp_path / 'set')],
      cwd=helpers.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=helpers.REPO, XLA_FLAGS='--xla_force_host_platform_device_count=1',
               BIGVIS_COORDINATOR=f'127.0.0.1:{port}', BIGVIS_NUM_PROCESSES='2',
               BIGVIS_PROCESS_ID=str(i))) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  manifest = embedding_sets.read_manifest(str(tmp_path / 'set'))
  assert [s['rows'] for s in manifest['shards']] == [12, 12, 12, 12]
  got = _by_index(retrieval.load_embeddings(str(tmp_path / 'set')))
  np.testing.assert_array_equal(got['id'], single['id'])
  np.testing.assert_allclose(got['embedding'], single['embedding'], atol=1e-5)


def test_sharded_index_merges_exactly(tmp_path):
  db = _clustered_set(str(tmp_path / 'db'), 3000, 32, num_shards=3)
  queries = db['embedding'][::37] + 0.05
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  k = 10
  single = retrieval.build_scann(db['embedding'], k, {'algorithm': 'brute_force'})
  sharded_index.build(str(tmp_path / 'db'), str(tmp_path / 'bf'), k=k,
                      params={'algorithm': 'brute_force'}, workers=2)
  searcher, meta = retrieval.load_index(str(tmp_path / 'bf'))
  assert meta['ids'] == list(db['id']) and meta['num_points'] == 3000
  got, _ = retrieval.scann_search(searcher, queries, k)
  want, _ = retrieval.scann_search(single, queries, k)
  np.testing.assert_array_equal(got, want)  # Brute force: 3 shards = 1 index.
  exact, _ = retrieval.exact_search(queries, db['embedding'], k)
  np.testing.assert_array_equal(got, exact)
  # The same shard jobs as a Beam pipeline (DirectRunner) give the same index.
  beam_meta = sharded_index.build(str(tmp_path / 'db'), str(tmp_path / 'beam'), k=k,
                                  params={'algorithm': 'brute_force'}, runner='beam')
  assert beam_meta['runner'] == 'beam' and len(beam_meta['shards']) == 3
  beam_searcher, _ = retrieval.load_index(str(tmp_path / 'beam'))
  np.testing.assert_array_equal(retrieval.scann_search(beam_searcher, queries, k)[0], want)

  # Approximate shards (tree + AH, params from each one's size): recall no worse than one
  # index's (ScaNN's tree training is not seeded: a few points of run-to-run noise).
  params = {'algorithm': 'tree_ah'}
  sharded_index.build(str(tmp_path / 'db'), str(tmp_path / 'ah'), k=k, params=params)
  ah, _ = retrieval.load_index(str(tmp_path / 'ah'))
  one = retrieval.build_scann(db['embedding'], k, params)
  recall_sharded = retrieval.ann_recall(retrieval.scann_search(ah, queries, k)[0], exact, k)
  recall_one = retrieval.ann_recall(retrieval.scann_search(one, queries, k)[0], exact, k)
  assert recall_sharded > 0.95 and recall_sharded > recall_one - 0.03

  # The eval tool takes the set and the sharded index as it takes a file and an index.
  retrieval.save_embeddings(str(tmp_path / 'q.npz'), {
      'id': np.array([f'q{j}' for j in range(len(queries))]),
      'index': np.arange(len(queries), dtype=np.int64), 'embedding': queries,
      'codes': retrieval.binary_codes(queries), 'label/c': db['label/c'][::37]}, db['meta'])
  eval_retrieval.main(['--queries', str(tmp_path / 'q.npz'), '--database', str(tmp_path / 'db'),
                       '--label', 'c', '--index', str(tmp_path / 'bf'), '--examples', '0',
                       '--repeats', '1', '--out', str(tmp_path / 'eval')])
  methods = json.loads((tmp_path / 'eval' / 'retrieval.json').read_text())['methods']
  assert methods['float_scann']['ann_recall@10'] == 1.0
  assert methods['float_scann']['recall@1'] == methods['float_exact']['recall@1']
