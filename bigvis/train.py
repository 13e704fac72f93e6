"""Multi-task training: `python -m bigvis.train --config configs/NAME.py[:args] --workdir DIR`.

Overrides: `--config.total_steps=10 --config.model.variant=S/16`. A workdir that holds a
checkpoint is resumed exactly (params, optimizer, step and data position).
"""
import functools
import logging as pylogging
import os
import signal
import threading
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax
from ml_collections import config_flags
from tqdm import tqdm

from bigvis import checkpoint, config as config_lib, corpora, data, distributed, evaluators
from bigvis import fileio, heads, losses, metrics, optim, pretrained, records, sharding

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/pretrain.py:runlocal')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder: checkpoints/, metrics.jsonl, config.json')


def make_train_step(model, config, tx, lr_fn):
  """The jitted-to-be step: (state, batch) -> (state, metrics), with gradient accumulation."""
  tasks = config.tasks
  accum = config.grad_accum_steps
  base_key = jax.random.key(config.seed)

  def loss_fn(params, batch, rng):
    outputs, _ = model.apply({'params': params}, batch['image'], train=True,
                             rngs={'dropout': rng})
    parts = {name: losses.task_loss(t, outputs[name], batch['labels'][t.label_field])
             for name, t in tasks.items()}
    return sum(t.weight * parts[name] for name, t in tasks.items()), parts

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state, batch):
    rng = jax.random.fold_in(base_key, state['step'])
    if accum == 1:
      (loss, parts), grads = grad_fn(state['params'], batch, rng)
    else:
      # Micro-batch i takes rows i::accum, so each device keeps an equal part of every micro-batch.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

      def body(carry, inputs):
        i, mb = inputs
        out, g = grad_fn(state['params'], mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (out, g)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, state['params'],
                                                          jax.tree.map(lambda x: x[0], micro), rng))
      ((loss, parts), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
      (loss, parts), grads = jax.tree.map(lambda x: x / accum, ((loss, parts), grads))
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    if config.freeze_trunk_steps:  # Warm-up of the new heads on a fixed pretrained trunk.
      frozen = state['step'] < config.freeze_trunk_steps
      updates = dict(updates, trunk=jax.tree.map(lambda u: jnp.where(frozen, 0, u),
                                                 updates['trunk']))
    new_state = dict(step=state['step'] + 1, params=optax.apply_updates(state['params'], updates),
                     opt_state=opt_state)
    out = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'learning_rate': lr_fn(state['step'])}
    out.update({f'loss/{name}': v for name, v in parts.items()})
    return new_state, out

  return step_fn


class _StopOnSigterm:
  """Preemption: SIGTERM asks the loop to save a checkpoint at the next step and exit cleanly."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir):
  """Trains `config` in `workdir`; returns the final state (a pytree of global jax.Arrays)."""
  config_lib.validate(config)  # Typos fail here, before any data is read or anything compiles.
  # --- Hosts and mesh.
  process_index, process_count = distributed.initialize()
  mesh = sharding.make_mesh(config.mesh)
  os.makedirs(workdir, exist_ok=True)
  if config.batch_size % (process_count * mesh.shape['data'] * mesh.shape['fsdp']):
    raise config_lib.ConfigError(
        f'batch_size={config.batch_size} must divide over {process_count} processes and the '
        f'data*fsdp={mesh.shape["data"] * mesh.shape["fsdp"]} mesh axes')

  # --- Data: each process reads its own shard of the records.
  paths = records.shard_paths(config.input.data_dir, config.input.split)
  card = None
  if os.path.exists(os.path.join(config.input.data_dir, corpora.writer.CARD_JSON)):
    card = corpora.read_card(config.input.data_dir)
    if card.get('status') != 'ok':  # Its counts and classes describe a run that was discarded.
      raise config_lib.ConfigError(
          f'{config.input.data_dir}: the last prepare failed (card status '
          f'{card.get("status")!r}: {card.get("error", "")}); prepare it again')
  config_lib.resolve_num_classes(config, card)
  make_ds = functools.partial(
      data.make_dataset, paths, pp=config.input.pp, labels=config_lib.label_specs(config),
      seed=config.seed, shuffle=config.input.shuffle, process_index=process_index,
      process_count=process_count)
  if process_index == 0:  # The resolved config, class counts included.
    fileio.write_text_atomic(os.path.join(workdir, 'config.json'), config.to_json(indent=2))
  example = next(iter(make_ds(batch_size=1, worker_count=0)))  # Input shapes for init.
  train_iter = iter(make_ds(batch_size=config.batch_size // process_count,
                            worker_count=config.input.worker_count))

  # --- Model, optimizer, and the train state created already sharded.
  model = heads.build_model(config)
  tx, lr_fn = optim.make_optimizer(config.optimizer, config.total_steps)

  def state_from(params):
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  def init(rng):
    return state_from(model.init(rng, jnp.asarray(example['image']), train=False)['params'])

  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  state_shardings = sharding.tree_shardings(abstract, mesh, config.sharding)
  sharding.log_shardings(state_shardings['params'], abstract['params'])
  n_params = sum(x.size for x in jax.tree.leaves(abstract['params']))
  logging.info('model %s %s: %.2fM params', config.model.name, config.model.variant, n_params / 1e6)

  # --- Restore, or initialize.
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 every=config.checkpoint_every_steps, keep=config.keep_checkpoints,
                                 async_save=config.async_checkpointing)
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(start, checkpoint.abstract_with_shardings(abstract, state_shardings),
                         train_iter)
  else:
    start = 0
    state = jax.jit(init, out_shardings=state_shardings)(jax.random.key(config.seed))
    if config.init.path:  # Fine-tuning: pretrained weights, fresh heads and optimizer.
      params = pretrained.load(multihost_utils.process_allgather(state['params'], tiled=True),
                               config.init.path, skip=config.init.skip)
      params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, x.__getitem__),
                            params, state_shardings['params'])
      state = jax.jit(state_from, out_shardings=state_shardings)(params)

  # --- The step: sharded in and out, the old state donated.
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = jax.jit(make_train_step(model, config, tx, lr_fn),
                    in_shardings=(state_shardings, batch_sharding),
                    out_shardings=(state_shardings, sharding.replicated(mesh)),
                    donate_argnums=0)
  forward = lambda p, x: model.apply({'params': p}, x, train=False)
  # Training ~ 3x the forward matmuls (forward, and two for the backward).
  flops_per_example = 3 * metrics.matmul_flops(forward, abstract['params'],
                                               jnp.asarray(example['image']))

  # --- Evaluators, on the same mesh and param layout.
  evals = evaluators.Evaluators(config, model, mesh, state_shardings['params'], card)

  # --- Loop.
  writer = metrics.MetricsWriter(workdir, enabled=process_index == 0, resume_step=start)
  stopper = _StopOnSigterm() if process_count == 1 else None
  bar = tqdm(total=config.total_steps, initial=start, disable=process_index != 0,
             dynamic_ncols=True, desc='train')
  timer_start, timed_steps = None, 0
  step = start
  try:
    while step < config.total_steps:
      batch = next(train_iter)
      batch = {'image': batch['image'], 'labels': batch['labels']}
      state, step_metrics = step_fn(state, sharding.local_batch_to_global(batch, batch_sharding))
      step += 1
      bar.update(1)
      if timer_start is None:  # The first step compiles: time from its end.
        jax.block_until_ready(step_metrics)
        timer_start = time.perf_counter()
      else:
        timed_steps += 1
      if step % config.log_every_steps == 0 or step == config.total_steps:
        scalars = jax.device_get(step_metrics)
        if timed_steps:
          rate = timed_steps * config.batch_size / (time.perf_counter() - timer_start)
          scalars.update({
              'examples_per_sec': rate, 'examples_per_sec_per_device': rate / jax.device_count(),
              'flops_per_example': flops_per_example,
              'mfu': rate * flops_per_example / (config.peak_flops_per_device * jax.device_count())})
        if not np.isfinite(scalars['loss']):
          logging.warning('step %d: non-finite loss %s', step, scalars['loss'])
        writer.write(step, scalars)
        bar.set_postfix(loss=f'{scalars["loss"]:.4f}')
        timer_start, timed_steps = time.perf_counter(), 0
      if evals.due(step):
        eval_start = time.perf_counter()
        scalars = evals.run(state['params'], step)
        scalars['eval/seconds'] = time.perf_counter() - eval_start
        writer.write(step, scalars)
        logging.info('step %d: %s', step, ', '.join(f'{k}={v:.4g}' for k, v in scalars.items()))
        timer_start, timed_steps = time.perf_counter(), 0  # Throughput excludes eval pauses.
      preempted = stopper.event.is_set() if stopper else ckpt.manager.reached_preemption(step)
      ckpt.save(step, state, train_iter, force=preempted or step == config.total_steps)
      if preempted:
        logging.warning('Preempted at step %d: checkpoint saved, exiting.', step)
        break
  finally:
    bar.close()
    train_iter.close()  # Stops Grain's worker processes.
    ckpt.wait()
    ckpt.close()
    writer.close()
    if stopper:
      stopper.restore()
  return state


class _OnlyOwnInfo(pylogging.Filter):
  """Keeps bigvis's INFO lines and every library's warnings; Orbax alone logs ~20 INFO lines per
  save, which would bury the trainer's own."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or _PACKAGE_DIR in record.pathname


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Checked here, not with mark_flags_as_required: that would make any other parse of absl flags
  # in a process that imported this module (Grain workers do one) fail.
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError('Both --config and --workdir are required.')
  logging.get_absl_handler().addFilter(_OnlyOwnInfo())
  logging.set_verbosity(logging.INFO)
  try:
    train(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, records.RecordError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e  # The message that names the key, file or record.


if __name__ == '__main__':
  app.run(main)
