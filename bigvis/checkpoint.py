"""Orbax checkpoints of the train state and the data iterator's position, in one step dir."""
import json
import logging
import os

import grain
import jax
import orbax.checkpoint as ocp


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
    self.directory = os.path.abspath(directory)
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

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_with_shardings(abstract_tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)
