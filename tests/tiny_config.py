"""The tests' tiny config as a config file, for tests that run the trainer as a process.

  python -m bigvis.train --config tests/tiny_config.py:data_dir=DIR --workdir W
"""
from bigvis import config as config_lib
from tests import helpers


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, data_dir='')
  return helpers.tiny_config(arg.data_dir)
