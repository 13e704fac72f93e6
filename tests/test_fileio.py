"""Atomic writes: the old content survives a failed write, and no temporary file is left."""
import os

import pytest

from bigvis import fileio


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
  path = tmp_path / 'card.json'
  fileio.write_text_atomic(path, 'old')
  with pytest.raises(RuntimeError):
    with fileio.atomic_file(path) as f:
      f.write(b'half of the new')
      raise RuntimeError('killed mid-write')
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['card.json']
  with fileio.atomic_file(path) as f:
    f.write(b'new')
  assert path.read_text() == 'new' and os.listdir(tmp_path) == ['card.json']
