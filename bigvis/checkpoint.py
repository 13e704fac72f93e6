"""Orbax checkpoints of the train state and the data iterator's position, in one step dir.

A step dir that fails to restore (truncated or missing files, garbage in the data item) is renamed
to `corrupt-<step>-<UTC time>` and the previous step is tried: see `Checkpointer.restore_latest`.
"""
import json
import logging
import time

import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from bigvis import fileio

# The name a broken step dir is moved aside to. Orbax lists only dirs whose whole name is a step
# number (and would refuse to save that number again while one exists); the hyphens matter: a name
# ending in `_<digits>` would pass Orbax's legacy step test.
CORRUPT_DIR = 'corrupt-{step}-{time}'


class CheckpointError(RuntimeError):
  """No checkpoint of a run restores onto the state this config builds."""


class _IteratorSnapshot:
  """The iterator's state captured when `save` is called. Grain's handler would otherwise ask the
  live iterator, which the train loop keeps advancing while an async save is in flight."""

  def __init__(self, iterator):
    self._state = json.dumps(iterator.get_state(), indent=1).encode()

  def get_state(self):
    return self._state


class Checkpointer:
  """`DIR/checkpoints/<step>/{state,data}`; saves every `every` steps, keeps the last `keep`."""

  def __init__(self, directory, *, every, keep, async_save=True):
    self.directory = fileio.absolute(directory)  # Local or a bucket: Orbax writes both.
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            # Only multiples of `every` (Orbax would also save the first step by default).
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            max_to_keep=keep,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, data_iterator, *, force=False):
    """Starts a save when `step` is due (or `force`); returns whether it did."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator))), force=force)

  def restore(self, step, abstract_state, data_iterator):
    """Restores the state onto `abstract_state`'s shardings and moves the iterator in place."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    logging.info('Restored step %d from %s', step, self.directory)
    return restored['state']

  def restore_latest(self, abstract_state, data_iterator):
    """Restores the newest step that reads: returns (step, state), or (None, None) if none exist.

    A step that fails to restore is logged, moved aside (renamed, never deleted: it may be worth a
    look, and the dir name would block saving that step again) and the previous step is tried. If
    no step restores, the dirs are given back their names and the first error is raised: every
    step failing alike means a mismatch of config and checkpoints (e.g. another model), not damage.
    """
    initial = data_iterator.get_state()  # A failed restore may have moved it already.
    steps = sorted(self.manager.all_steps(), reverse=True)
    moved, first_error = [], None
    for i, step in enumerate(steps):
      try:
        return step, self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except  (Orbax, tensorstore, json, Grain...)
        first_error = first_error or e
        aside = self._move_aside(step)
        moved.append((step, aside))
        logging.warning('checkpoint %s is unreadable (%s); moved aside to %s; %s',
                        fileio.join(self.directory, str(step)), _summary(e), aside,
                        f'trying step {steps[i + 1]}' if i + 1 < len(steps) else 'no older step')
    data_iterator.set_state(initial)
    if not moved:
      return None, None
    for step, aside in moved:
      self._rename(aside, fileio.join(self.directory, str(step)))
    raise CheckpointError(
        f'No checkpoint in {self.directory} restores (steps {", ".join(map(str, steps))}; they '
        f'keep their names). Newest error: {_summary(first_error)}. If these checkpoints belong to '
        f'another config, use another workdir; if they are damaged, move them away to start over.'
    ) from first_error

  def _move_aside(self, step):
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    aside = fileio.join(self.directory, CORRUPT_DIR.format(step=step, time=stamp))
    n = 1
    while fileio.path(aside).exists():  # The same step broken twice within a second.
      n += 1
      aside = fileio.join(self.directory, CORRUPT_DIR.format(step=step, time=f'{stamp}.{n}'))
    self._rename(fileio.join(self.directory, str(step)), aside)
    return aside

  def _rename(self, src, dst):
    if jax.process_index() == 0:
      fileio.path(src).rename(dst)  # In a bucket: a copy of each object, then a delete.
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'bigvis checkpoint rename {dst}')
    self.manager.reload()  # Orbax caches its step list.

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _summary(error, limit=500):
  """Type and first line of the error and of its causes: Orbax wraps tensorstore's errors in a bare
  Exception that only says which array index failed."""
  parts = []
  while error is not None and len(parts) < 3:
    line = (str(error).strip().splitlines() or [''])[0]
    parts.append(f'{type(error).__name__}: {line.split(" See full TensorStore details")[0]}')
    error = error.__cause__
  text = '; caused by '.join(parts)
  return text if len(text) <= limit else text[:limit - 3] + '...'


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)
