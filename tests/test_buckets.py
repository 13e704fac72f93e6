"""Runs whose every file lives in a bucket (a GCS server on this machine, tests/gcs.py): training
(killed and resumed exactly), embeddings, indexes, corpora and mined labels.
"""
import io
import json
import os
import re
import signal
import time

import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from bigvis import fileio, metrics, records, retrieval
from bigvis.corpora.writer import CARD_JSON
from bigvis.tools import build_index, embed, mine_labels, prepare
from tests import gcs, helpers

_STEPS = ['--config.total_steps=12', '--config.checkpoint_every_steps=3']


@pytest.fixture(scope='module')
def bucket(shapes_dir):
  with gcs.emulator() as emu:
    url = emu.make_bucket('bigvis-test')
    for name in os.listdir(shapes_dir):
      epath.Path(shapes_dir, name).copy(epath.Path(f'{url}/data/{name}'))
    yield emu, url


def _steps_in_bucket(emu, prefix):
  names = emu.list('bigvis-test', prefix)
  return sorted({int(m[1]) for n in names if (m := re.match(rf'{prefix}(\d+)/', n))})


def test_shards_in_a_bucket_are_listed_and_staged(bucket, shapes_dir, tmp_path, monkeypatch):
  _, url = bucket
  monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path))
  staged = records.shard_paths(f'{url}/data', 'train')
  assert staged == [str(tmp_path / 'gs' / 'bigvis-test' / 'data' / os.path.basename(p))
                    for p in records.shard_paths(shapes_dir, 'train')]
  assert [records.read_shard(p) for p in staged] == [
      records.read_shard(p) for p in records.shard_paths(shapes_dir, 'train')]
  with pytest.raises(FileNotFoundError, match='no record shards match'):
    records.shard_paths(f'{url}/data', 'validation')


@pytest.fixture(scope='module')
def runs(bucket, shapes_dir, tmp_path_factory):
  """A local reference run, and the same run in the bucket, SIGKILLed after its first checkpoint
  and resumed. Returns (emulator, local workdir, bucket workdir, local folder it ran in)."""
  emu, url = bucket
  tmp = tmp_path_factory.mktemp('runs')
  reference = helpers.train_process(tmp / 'ref', shapes_dir, *_STEPS)
  _, err = reference.communicate(timeout=600)
  assert reference.returncode == 0, err[-3000:]

  workdir, cwd = f'{url}/run', tmp / 'cwd'
  cwd.mkdir()
  env = {fileio.CACHE_ENV: str(tmp / 'cache')}
  p = helpers.train_process(workdir, f'{url}/data', *_STEPS, cwd=cwd, env_extra=env)
  deadline = time.time() + 300
  while not _steps_in_bucket(emu, 'run/checkpoints/'):
    assert p.poll() is None, p.stderr.read()[-3000:]
    assert time.time() < deadline, 'no checkpoint appeared in the bucket'
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.communicate()
  assert p.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
  assert _steps_in_bucket(emu, 'run/checkpoints/')[-1] < 12
  p = helpers.train_process(workdir, f'{url}/data', *_STEPS, cwd=cwd, env_extra=env)
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  return emu, tmp / 'ref', workdir, cwd


def test_run_in_a_bucket_killed_and_resumed_equals_a_local_run(runs):
  emu, ref, workdir, cwd = runs
  assert os.listdir(cwd) == []  # Nothing written locally (no './gs:' folder).
  assert _steps_in_bucket(emu, 'run/checkpoints/')[-1] == 12
  names = emu.list('bigvis-test', 'run/')
  assert 'run/config.json' in names and any(n.startswith('run/tensorboard/events') for n in names)
  ref_rows, rows = metrics.read_metrics(ref), metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == list(range(1, 13))
  assert [r['loss'] for r in rows] == [r['loss'] for r in ref_rows]
  restore = lambda d: ocp.StandardCheckpointer().restore(fileio.join(d, 'checkpoints', '12',
                                                                     'state'))['params']
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(restore(str(ref))),
                               jax.tree_util.tree_leaves_with_path(restore(workdir))):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_embeddings_and_index_in_a_bucket(runs, bucket, tmp_path, monkeypatch):
  """embed -> build_index -> load_index with every file in the bucket: the same embeddings and
  search results as the local run's files."""
  _, ref, workdir, _ = runs
  _, url = bucket
  monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path / 'cache'))
  pp = 'decode|resize(32)|value_range(-1,1)'
  outs = {'local': (str(ref), str(tmp_path / 'db.npz'), str(tmp_path / 'index')),
          'bucket': (workdir, f'{url}/emb/db.npz', f'{url}/emb/index')}
  for run_dir, npz, _ in outs.values():
    embed.embed(run_dir, '', 'train', npz, pp=pp, batch_size=16)
  local, remote = (retrieval.load_embeddings(outs[k][1]) for k in ('local', 'bucket'))
  np.testing.assert_array_equal(remote['embedding'], local['embedding'])
  assert remote['meta']['checkpoint'] == workdir and remote['meta']['step'] == 12
  for _, npz, index in outs.values():
    build_index.main(['--embeddings', npz, '--out', index, '--param', 'algorithm=brute_force'])
  (searcher, meta), (local_searcher, _) = (retrieval.load_index(outs[k][2])
                                           for k in ('bucket', 'local'))
  assert meta['embeddings'] == f'{url}/emb/db.npz'
  queries = local['embedding'][:5]
  np.testing.assert_array_equal(searcher.search_batched(queries, 3)[0],
                                local_searcher.search_batched(queries, 3)[0])
  fileio.write_text_atomic(f'{url}/emb/index/{retrieval.INDEX_META}', '{"format": 1}')
  with pytest.raises(ValueError, match=f'{url}/emb/index.*lacks'):
    retrieval.load_index(f'{url}/emb/index')


def _user_folder(root):
  """24 small PNGs with titles that repeat a few words, and a metadata JSONL."""
  rng = np.random.default_rng(0)
  words = ['red', 'blue', 'cat', 'dog', 'tree', 'house']
  lines = []
  (root / 'images').mkdir(parents=True)
  for i in range(24):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, 'PNG')
    (root / 'images' / f'{i}.png').write_bytes(buf.getvalue())
    lines.append({'image': f'{i}.png', 'id': f'img{i}',
                  'title': f'{words[i % 6]} {words[(i // 6) % 6]} {words[(i * 5) % 6]}'})
  (root / 'meta.jsonl').write_text('\n'.join(json.dumps(x) for x in lines) + '\n')
  return root / 'images', root / 'meta.jsonl'


def test_prepare_and_mine_labels_into_a_bucket(bucket, tmp_path, monkeypatch):
  """A corpus and its mined labels written to the bucket hold what the same commands write to a
  local folder; the card arrives last, and nothing is left on the local disk but the cache."""
  _, url = bucket
  monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path / 'cache'))
  images, meta = _user_folder(tmp_path / 'src')
  outs = {'local': (str(tmp_path / 'corpus'), str(tmp_path / 'mined')),
          'bucket': (f'{url}/user/corpus', f'{url}/user/mined')}
  for corpus, mined in outs.values():
    prepare.main(['user', '--out', corpus, 'folder', '--root', str(images), '--metadata',
                  str(meta), '--val_fraction', '0.25'])
    mine_labels.main(['--corpus', corpus, '--out', mined, '--min_count', '2', '--clusters', '3',
                      '--workers', '1', '--no_plots'])
  for local, remote in zip(outs['local'], outs['bucket']):
    for split in ('train', 'validation'):
      assert ([records.read_shard(p) for p in records.shard_paths(remote, split)] ==
              [records.read_shard(p) for p in records.shard_paths(local, split)])
    card, local_card = (json.loads(fileio.read_text(fileio.join(d, CARD_JSON)))
                        for d in (remote, local))
    assert card['status'] == 'ok'
    for key in ('num_records', 'fields', 'label_names', 'splits'):
      assert card.get(key) == local_card.get(key), key
  assert card['label_names']['mined_labels']  # labels were mined
  assert sorted(os.listdir(tmp_path)) == ['cache', 'corpus', 'mined', 'src']
