"""Damaged checkpoints: the newest unreadable step is moved aside with a warning, and training goes
on from the previous step to the same params, bit for bit, as a run that was never damaged."""
import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from bigvis import metrics, train
from tests import helpers


# Orbax's OCDBT layout of `<step>/state`: `manifest.ocdbt` and `d/<hash>` hold the merged index (a
# B-tree), `ocdbt.process_<i>/d/<hash>` the array bytes, `_METADATA` the tree and each array's
# dtype and shape. Much of a data file is not referenced (cutting one to half its length still
# restored every array in a trial), and a few flipped bytes in the array bytes restore, without error, to
# other values (zstd without checksums): those are out of reach here.

def _empty_array_files(step_dir):  # Power lost after the commit, before the data reached disk.
  files = glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_*', 'd', '*'))
  assert files, f'no OCDBT data files under {step_dir}/state: has the layout changed?'
  for path in files:
    os.truncate(path, 0)


def _truncate_manifest(step_dir):  # A copy that stopped half-way through the index.
  path = os.path.join(step_dir, 'state', 'manifest.ocdbt')
  os.truncate(path, os.path.getsize(path) // 2)


def _delete_state_metadata(step_dir):  # The tree's structure and each array's dtype and shape.
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _garbage_in_data_json(step_dir):  # The data iterator's position, torn mid-write.
  (path,) = glob.glob(os.path.join(step_dir, 'data', 'process_*.json'))
  with open(path, 'w') as f:
    f.write('{\n "next_ind\x00\x00')


CORRUPTIONS = {'empty_array_files': _empty_array_files,
               'truncated_manifest': _truncate_manifest,
               'deleted_state_metadata': _delete_state_metadata,
               'garbage_data_json': _garbage_in_data_json}


def _flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(x)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope='module')
def reference(shapes_dir, tmp_path_factory):
  """An undamaged 9-step run (checkpoints 3, 6, 9) and its final state as numpy arrays."""
  workdir = tmp_path_factory.mktemp('reference')
  state = train.train(helpers.tiny_config(shapes_dir, total_steps=9), str(workdir))
  return workdir, _flat(state)


def _run_stopped_at_6(reference_dir, workdir):
  """The reference run as it stood after step 6: its checkpoints 3 and 6, config and metrics.
  (A separate 6-step run would not do: the learning-rate schedule depends on total_steps.)"""
  shutil.copytree(reference_dir, workdir, ignore=lambda d, names: ['9'] if d.endswith(
      'checkpoints') else ['tensorboard'])
  return os.path.join(workdir, 'checkpoints')


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_unreadable_latest_step_is_moved_aside_and_training_resumes_from_previous(
    corruption, shapes_dir, reference, tmp_path, caplog):
  reference_dir, reference_state = reference
  ckpt_dir = _run_stopped_at_6(reference_dir, tmp_path / 'run')
  CORRUPTIONS[corruption](os.path.join(ckpt_dir, '6'))

  caplog.set_level(logging.INFO)
  state = train.train(helpers.tiny_config(shapes_dir, total_steps=9), str(tmp_path / 'run'))

  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
              and 'is unreadable' in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert f'checkpoint {ckpt_dir}/6 is unreadable (' in warnings[0]
  assert warnings[0].endswith('; trying step 3')
  assert any(r.getMessage().startswith('Restored step 3 from') for r in caplog.records)
  (aside,) = [d for d in os.listdir(ckpt_dir) if d.startswith('corrupt-')]
  assert aside.startswith('corrupt-6-') and f'moved aside to {ckpt_dir}/{aside};' in warnings[0]
  assert os.path.isdir(os.path.join(ckpt_dir, aside, 'state'))  # Moved, not deleted.
  # Orbax ignored the moved dir and saved step 6 again.
  assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [3, 6, 9]

  final = _flat(state)
  assert final.keys() == reference_state.keys()
  for key, value in reference_state.items():
    np.testing.assert_array_equal(final[key], value, err_msg=key)
  rows, ref_rows = metrics.read_metrics(tmp_path / 'run'), metrics.read_metrics(reference_dir)
  assert [r['step'] for r in rows] == list(range(1, 10))
  assert [r['loss'] for r in rows] == [r['loss'] for r in ref_rows]


def test_no_readable_step_raises_and_renames_nothing(shapes_dir, reference, tmp_path):
  """Every step failing alike means checkpoints of another config, or all damaged: never
  silently start over, and leave the dirs as they were."""
  ckpt_dir = _run_stopped_at_6(reference[0], tmp_path / 'run')
  for step in ('3', '6'):
    _garbage_in_data_json(os.path.join(ckpt_dir, step))
  with pytest.raises(RuntimeError, match=r'No checkpoint in .* restores \(steps 6, 3'):
    train.train(helpers.tiny_config(shapes_dir, total_steps=9), str(tmp_path / 'run'))
  assert sorted(os.listdir(ckpt_dir)) == ['3', '6']
  with open(os.path.join(ckpt_dir, '6', 'data', 'process_0-of-1.json')) as f:
    with pytest.raises(json.JSONDecodeError):
      json.load(f)
