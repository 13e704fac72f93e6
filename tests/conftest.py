"""Eight simulated CPU devices for every test (set before jax is imported), a compilation cache
for the session, the CPU host settings the trainer applies on this backend (bigvis.cpu_tuning),
and a shared corpus."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
# One persistent compilation cache per test session, for this process and every trainer it
# starts: the many short runs of the tiny config compile the same programs, and a cache hit skips
# XLA's compile (a 10-step training process: ~25 s cold, ~9 s warm here). A fresh folder each
# session, so no test ever reads an executable an older checkout compiled.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='bigvis-tests-jax-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], True)
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

from bigvis import cpu_tuning  # noqa: E402

cpu_tuning.apply('on')  # The tests compute on the CPU; the HLO checks assume its XLA flag.

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope='session')
def shapes_dir(tmp_path_factory):
  """A small synthetic corpus of real PNG records in ArrayRecord shards."""
  return helpers.make_corpus(tmp_path_factory.mktemp('shapes'))


@pytest.fixture(scope='session')
def embedding_run(tmp_path_factory):
  """(corpus, workdir): 48 records of 40 px (so the 32 px eval pp really resizes) and a 2-step run
  of the tiny three-task config (an `identity` embedding head), for the embed/export tools."""
  from bigvis import synthetic, train
  corpus = str(tmp_path_factory.mktemp('shapes40'))
  synthetic.make_shapes_corpus(corpus, num_records=48, image_size=40, num_shards=2, seed=0)
  workdir = str(tmp_path_factory.mktemp('embedding_run'))
  train.train(helpers.tiny_config(corpus, total_steps=2, checkpoint_every_steps=2), workdir)
  return corpus, workdir
