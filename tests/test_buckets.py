"""A training run whose workdir and data live in a bucket (a GCS server on this machine): it
writes nothing locally but the shard cache, and a run killed mid-way resumes exactly."""
import os
import re
import signal
import time

import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigvis import fileio, metrics, records
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


def test_run_in_a_bucket_killed_and_resumed_equals_a_local_run(bucket, shapes_dir, tmp_path):
  emu, url = bucket
  reference = helpers.train_process(tmp_path / 'ref', shapes_dir, *_STEPS)
  _, err = reference.communicate(timeout=600)
  assert reference.returncode == 0, err[-3000:]

  workdir, cwd = f'{url}/run', tmp_path / 'cwd'
  cwd.mkdir()
  env = {fileio.CACHE_ENV: str(tmp_path / 'cache')}
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

  assert os.listdir(cwd) == []  # Nothing written locally (no './gs:' folder).
  assert _steps_in_bucket(emu, 'run/checkpoints/')[-1] == 12
  names = emu.list('bigvis-test', 'run/')
  assert 'run/config.json' in names and any(n.startswith('run/tensorboard/events') for n in names)
  ref_rows, rows = metrics.read_metrics(tmp_path / 'ref'), metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == list(range(1, 13))
  assert [r['loss'] for r in rows] == [r['loss'] for r in ref_rows]
  restore = lambda d: ocp.StandardCheckpointer().restore(fileio.join(d, 'checkpoints', '12',
                                                                     'state'))['params']
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(restore(str(tmp_path / 'ref'))),
                               jax.tree_util.tree_leaves_with_path(restore(workdir))):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
