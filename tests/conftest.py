"""Eight simulated CPU devices for every test (set before jax is imported), and a shared corpus."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope='session')
def shapes_dir(tmp_path_factory):
  """A small synthetic corpus of real PNG records in ArrayRecord shards."""
  return helpers.make_corpus(tmp_path_factory.mktemp('shapes'))
