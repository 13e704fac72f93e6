"""Multi-task training: `python -m bigvis.train --config configs/NAME.py[:args] --workdir DIR`.

Overrides: `--config.total_steps=10 --config.model.variant=S/16`. A workdir that holds a
checkpoint is resumed exactly (params, optimizer, step and data position).
"""
import functools
import logging as pylogging
import math
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

from bigvis import checkpoint, config as config_lib, cpu_tuning, distributed
from bigvis import evaluators, fileio, heads, losses, metrics, optim, pretrained, records, sharding
from bigvis import train_input

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/pretrain.py:runlocal')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder: checkpoints/, metrics.jsonl, config.json')


def make_train_step(model, config, tx, lr_fn):
  """The jitted-to-be step: (state, batch) -> (state, metrics), with gradient accumulation.

  A step whose loss or gradient norm is not finite leaves params and optimizer state as they were
  (the step counter still advances, so the data moves on); metrics 'nonfinite' is 1 on such a step.
  The counters a state may carry (the trainer's does) add up across steps and resumes:
  'nonfinite_steps', and 'bad_examples' (the sum of the batch's optional 'bad', 1 where the
  pipeline replaced a bad record); both are also in the metrics.
  """
  tasks = config.tasks
  accum = config.grad_accum_steps
  base_key = jax.random.key(config.seed)

  def weights_of(batch):  # Per task, [B]: 1 where the example counts (bigvis/losses.py).
    masks = batch.get('label_mask', {})
    return {name: losses.example_weights(t, batch['labels'][t.label_field],
                                         masks.get(t.label_field))
            for name, t in tasks.items()}

  def loss_fn(params, batch, rng, counts):
    """Each task's share of its full-batch mean: the sum over these examples / `counts`."""
    outputs, _ = model.apply({'params': params}, batch['image'], train=True,
                             rngs={'dropout': rng})
    weights = weights_of(batch)
    parts = {name: losses.weighted_sum(
                 losses.per_example_loss(t, outputs[name], batch['labels'][t.label_field]),
                 weights[name]) / counts[name]
             for name, t in tasks.items()}
    return sum(t.weight * parts[name] for name, t in tasks.items()), parts

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state, batch):
    bad = batch.get('bad')
    batch = {k: v for k, v in batch.items() if k != 'bad'}
    rng = jax.random.fold_in(base_key, state['step'])
    # Counted over the whole batch, so that accumulated micro-batches add up to the full-batch
    # mean; a task none of the batch's examples has gets loss 0 and no gradient.
    counts = {name: jnp.maximum(w.sum(), 1.0) for name, w in weights_of(batch).items()}
    if accum == 1:
      (loss, parts), grads = grad_fn(state['params'], batch, rng, counts)
    else:
      # Micro-batch i takes rows i::accum, so each device keeps an equal part of every micro-batch.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

      def body(carry, inputs):
        i, mb = inputs
        out, g = grad_fn(state['params'], mb, jax.random.fold_in(rng, i), counts)
        return jax.tree.map(jnp.add, carry, (out, g)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          grad_fn, state['params'], jax.tree.map(lambda x: x[0], micro), rng, counts))
      ((loss, parts), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    if config.freeze_trunk_steps:  # Warm-up of the new heads on a fixed pretrained trunk.
      frozen = state['step'] < config.freeze_trunk_steps
      updates = dict(updates, trunk=jax.tree.map(lambda u: jnp.where(frozen, 0, u),
                                                 updates['trunk']))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def if_finite(new, old):  # A non-finite step changes nothing but the step and the counters.
      return jnp.where(finite, new, old)

    new_state = dict(
        step=state['step'] + 1,
        params=jax.tree.map(if_finite, optax.apply_updates(state['params'], updates),
                            state['params']),
        opt_state=jax.tree.map(if_finite, opt_state, state['opt_state']))
    out = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': lr_fn(state['step']),
           'nonfinite': (~finite).astype(jnp.int32)}
    out.update({f'loss/{name}': v for name, v in parts.items()})
    if 'nonfinite_steps' in state:
      new_state['nonfinite_steps'] = out['nonfinite_steps'] = (
          state['nonfinite_steps'] + out['nonfinite'])
    if 'bad_examples' in state:
      new_bad = 0 if bad is None else jnp.sum(bad, dtype=jnp.int32)
      new_state['bad_examples'] = out['data/bad_examples'] = state['bad_examples'] + new_bad
    return new_state, out

  return step_fn


def device_batch(batch):
  """What a step reads of a pipeline batch: images, labels, the label masks of a mixture, and
  'bad' (1 where a bad record was replaced), for the counter."""
  out = {'image': batch['image'], 'labels': batch['labels'],
         'bad': (batch['bad_index'] >= 0).astype(np.int32)}
  if 'label_mask' in batch:
    out['label_mask'] = batch['label_mask']
  return out


class _StopOnSigterm:
  """Preemption: SIGTERM asks the loop to save a checkpoint at the next step and exit cleanly."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


class DataQualityError(ValueError):
  """More bad records than config.input.max_bad_fraction allows; the message names some."""


class NonFiniteError(FloatingPointError):
  """config.nonfinite='stop' and a step's loss or gradients were not finite."""


# The bad fraction is judged from this many examples on (or one epoch, if that is shorter), so
# that a few bad records early in a run do not stop it.
MIN_EXAMPLES_FOR_BAD_FRACTION = 1000
_BAD_RECORDS_NAMED = 5


class _FaultWatch:
  """The host side of `nonfinite` and `input.max_bad_fraction`.

  Both counters live in the train state on the devices (global over processes, restored with a
  checkpoint), so every process stops at the same step. The host reads them only at log steps and
  before each checkpoint save (`check`), never once per step; it names the first few bad records
  that this process's batches replaced, re-decoding them to say what is wrong.
  """

  def __init__(self, config, checkers, latest_checkpoint):
    self.policy, self.max_bad = config.nonfinite, config.input.max_bad_fraction
    self.batch_size, self.checkers = config.batch_size, checkers  # One per input source.
    self.min_seen = min(MIN_EXAMPLES_FOR_BAD_FRACTION, sum(c.num_records for c in checkers))
    self.latest_checkpoint = latest_checkpoint
    self.first_bad = {}  # (source, record number) -> what is wrong with it.
    self.pending = []  # (step, a few of its metrics, still on the devices) since the last check.

  def after_step(self, step, bad_index, source, step_metrics):
    """source: each example's input source (None: one source)."""
    source = np.zeros_like(bad_index) if source is None else source
    bad = bad_index >= 0
    for index, src in list(zip(bad_index[bad], source[bad]))[:_BAD_RECORDS_NAMED]:  # Host numpy.
      key, checker = (int(src), int(index)), self.checkers[int(src)]
      if len(self.first_bad) < _BAD_RECORDS_NAMED and key not in self.first_bad:
        why = checker.problem(int(index)) or (
            f'{checker.where(int(index))}: failed in the input pipeline, but not when '
            'checked again (an augmentation-dependent failure?)')
        self.first_bad[key] = why
        logging.warning('step %d: bad record replaced by the next good one: %s', step, why)
    self.pending.append((step, {k: step_metrics[k] for k in (
        'nonfinite', 'loss', 'grad_norm', 'data/bad_examples')}))

  def check(self, step):
    """Raises NonFiniteError or DataQualityError if a policy says the run must stop."""
    if not self.pending:
      return
    pending, self.pending = jax.device_get(self.pending), []
    skipped = [(s, m) for s, m in pending if m['nonfinite']]
    if skipped and self.policy == 'stop':
      s, m = skipped[0]
      raise NonFiniteError(
          f'step {s}: non-finite loss ({m["loss"]}) or gradient norm ({m["grad_norm"]}); its '
          f"update was not applied, and nonfinite='stop' ends the run before any later "
          f'checkpoint (latest: step {self.latest_checkpoint()}). Lower optimizer.lr, raise '
          f"optimizer.warmup_steps or check the data; nonfinite='skip' steps over such batches.")
    if skipped:
      logging.warning('non-finite loss or gradients at step(s) %s: updates skipped',
                      [s for s, _ in skipped])
    bad, seen = int(pending[-1][1]['data/bad_examples']), step * self.batch_size
    if seen >= self.min_seen and bad > self.max_bad * seen:
      named = ''.join(f'\n  {why}' for why in self.first_bad.values())
      raise DataQualityError(
          f'step {step}: {bad} of {seen} training examples ({bad / seen:.2%}) were bad records '
          f'(each replaced by the next good record), more than input.max_bad_fraction='
          f'{self.max_bad}. Checkpoints so far are kept. Fix or remove the records, or raise '
          f'input.max_bad_fraction. The first bad records this process read:'
          + (named or ' none (the others read them)'))


def train(config, workdir):
  """Trains `config` in `workdir`; returns the final state (a pytree of global jax.Arrays)."""
  config_lib.validate(config)  # Typos fail here, before any data is read or anything compiles.
  # --- Hosts and mesh.
  process_index, process_count = distributed.initialize()
  mesh = sharding.make_mesh(config.mesh)
  fileio.path(workdir).mkdir(parents=True, exist_ok=True)  # Local, or a bucket (fileio).
  # The batch axes span every process's devices: the global batch divides over them, and each
  # process feeds its equal share.
  if config.batch_size % math.lcm(process_count, mesh.shape['data'] * mesh.shape['fsdp']):
    raise config_lib.ConfigError(
        f'batch_size={config.batch_size} must divide over {process_count} processes and the '
        f'data*fsdp={mesh.shape["data"] * mesh.shape["fsdp"]} mesh axes')

  # --- Data: one corpus or several mixed (bigvis/train_input.py); each process reads its share.
  sources = train_input.resolve(config)
  train_input.resolve_num_classes(config, sources)
  checkers = train_input.checkers(config, sources)
  if process_index == 0:  # The resolved config, class counts included.
    fileio.write_text_atomic(fileio.join(workdir, 'config.json'), config.to_json(indent=2))
  make_iter = functools.partial(train_input.make_train_iter, config, sources)
  example = next(iter(make_iter(batch_size=1, worker_count=0, process_index=0,
                                process_count=1)))  # Input shapes for init.
  train_iter = iter(make_iter(batch_size=config.batch_size // process_count,
                              worker_count=config.input.worker_count,
                              process_index=process_index, process_count=process_count))

  # --- Model, optimizer, and the train state created already sharded.
  model = heads.build_model(config)
  tx, lr_fn = optim.make_optimizer(config.optimizer, config.total_steps)

  def state_from(params):
    zero = jnp.zeros((), jnp.int32)  # Counters: see make_train_step.
    return dict(step=zero, params=params, opt_state=tx.init(params), nonfinite_steps=zero,
                bad_examples=zero)

  def init(rng):
    return state_from(model.init(rng, jnp.asarray(example['image']), train=False)['params'])

  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  state_shardings = sharding.tree_shardings(abstract, mesh, config.sharding)
  sharding.log_shardings(state_shardings['params'], abstract['params'])
  n_params = sum(x.size for x in jax.tree.leaves(abstract['params']))
  logging.info('model %s %s: %.2fM params', config.model.name, config.model.variant, n_params / 1e6)

  # --- Restore, or initialize.
  ckpt = checkpoint.Checkpointer(fileio.join(workdir, 'checkpoints'),
                                 every=config.checkpoint_every_steps, keep=config.keep_checkpoints,
                                 async_save=config.async_checkpointing)
  start, state = ckpt.restore_latest(checkpoint.abstract_with_shardings(abstract, state_shardings),
                                     train_iter)  # Unreadable steps are moved aside, with a warning.
  if start is None:
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
  evals = evaluators.Evaluators(config, model, mesh, state_shardings['params'],
                                train_input.label_names(sources))

  # --- Loop.
  writer = metrics.MetricsWriter(workdir, enabled=process_index == 0, resume_step=start)
  stopper = _StopOnSigterm() if process_count == 1 else None
  bar = tqdm(total=config.total_steps, initial=start, disable=process_index != 0,
             dynamic_ncols=True, desc='train')
  timer_start, timed_steps = None, 0
  watch = _FaultWatch(config, checkers, ckpt.latest_step)
  step = start
  try:
    while step < config.total_steps:
      batch = next(train_iter)
      bad_index, source = batch['bad_index'], batch.get('source')
      state, step_metrics = step_fn(
          state, sharding.local_batch_to_global(device_batch(batch), batch_sharding))
      step += 1
      watch.after_step(step, bad_index, source, step_metrics)
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
        watch.check(step)
      if evals.due(step):
        eval_start = time.perf_counter()
        scalars = evals.run(state['params'], step)
        scalars['eval/seconds'] = time.perf_counter() - eval_start
        writer.write(step, scalars)
        logging.info('step %d: %s', step, ', '.join(f'{k}={v:.4g}' for k, v in scalars.items()))
        timer_start, timed_steps = time.perf_counter(), 0  # Throughput excludes eval pauses.
      preempted = stopper.event.is_set() if stopper else ckpt.manager.reached_preemption(step)
      if preempted or step % config.checkpoint_every_steps == 0 or step == config.total_steps:
        watch.check(step)  # Before a save: a checkpoint never holds a run that must stop.
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
  config = _CONFIG.value
  try:
    config_lib.validate(config)
    # Before JAX starts its backends (nothing has computed yet): CPU-only flags and malloc settings.
    tuned = cpu_tuning.apply(config.host_tuning)
    logging.info('host tuning (host_tuning=%s): %s', config.host_tuning, tuned)
    train(config, _WORKDIR.value)
  except (config_lib.ConfigError, records.RecordError, FileNotFoundError, DataQualityError,
          NonFiniteError, checkpoint.CheckpointError) as e:
    raise app.UsageError(str(e)) from e  # The message that names the key, file or record.


def run():  # The `bigvis-train` console script.
  app.run(main)


if __name__ == '__main__':
  run()
