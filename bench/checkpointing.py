"""Checkpointing: what an async Orbax save of a bigvis train state costs the loop, and restores.

    .venv/bin/python bench/checkpointing.py           # Ti/16 + S/16, 5 saves x 3 repeats: 10-20 min
    .venv/bin/python bench/checkpointing.py --quick   # smoke run: Ti/16, 2 saves x 1 repeat: ~3 min

The state is the one `bigvis.train` builds and checkpoints: `heads.build_model` (ViT at 224 px,
1000-way classifier head) + `optim.make_optimizer` (AdamW), dict(step, params, opt_state,
nonfinite_steps, bad_examples), jitted onto a one-device mesh with `sharding.tree_shardings`. Saves
go through `bigvis.checkpoint.Checkpointer` (Orbax CheckpointManager, items `state` and the Grain
iterator's `data`, every=1, keep=config.keep_checkpoints) into `--workdir` (default: a temp dir on
local disk, removed at the end). Between two saves the loop runs one real train step
(`train.make_train_step`, state donated, a random batch of `--batch` images), so each save writes
new values (zstd compresses a fresh, all-zero AdamW state to nothing; a trained one barely).

Each repeat, per model, in a fresh dir each:
  async, gap: for each save, time `save` (blocked), then `wait` until committed (async write);
    only then the next train step. The gap is thus the write time itself: Orbax's `save` first
    waits for the previous write, and here there is none left to wait for.
  restore: a new Checkpointer (a restarted run), `restore_latest` onto the abstract state with
    its shardings, as train.py does, checked equal to the saved state; and the params alone,
    `pretrained.load(..., skip='^$')` (what fine-tuning from a run reads).
  async, back to back: `--saves` saves with one train step between them and no wait; blocked
    time of the saves after the first (each finds the previous write in flight).
  sync: the same saves with `async_checkpointing=False`: `save` returns once committed.
The first save of a fresh Checkpointer (cold: thread pools, dirs) is timed apart. Each figure is
the median over a run's saves; tables give median, min and max over `--repeats` runs.

Rows of each model's table (MB = 10^6 bytes; "state MB" = the arrays' bytes, "on disk" = the
step dir's files):
  blocked per async save, ms: wall time of `Checkpointer.save` with no write in flight
  blocked, back to back, ms: the same with the previous step's write still in flight
  async write until committed, s: from the `save` call until `wait` returns
  sync save, s: wall time of `save` with async off
  sync / async blocked: sync save s / blocked s, per run
  restore_latest, s / params only, s: the restores above (from the page cache: just written)
  write MB/s async, sync: state MB / async write s, / sync save s
Writes `<out>.json` and `<out>.md` (default bench/results/checkpointing). See bench/README.md.
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from absl import logging
import grain
import jax
import jax.numpy as jnp
import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import machine  # noqa: E402  (bench/machine.py: this script's folder is on sys.path)

from bigvis import checkpoint, config as config_lib, fileio, heads, optim, pretrained  # noqa: E402
from bigvis import sharding, train  # noqa: E402

HZ = os.sysconf('SC_CLK_TCK')
MB = 1e6
PACKAGES = ('orbax-checkpoint', 'tensorstore', 'jax', 'jaxlib', 'flax', 'optax', 'grain')


def make_config(variant, batch):
  c = config_lib.defaults()
  c.batch_size = batch
  c.model.name = 'vit'
  c.model.variant = variant
  c.model.pool_type = 'tok'
  c.tasks.labels = config_lib.task('classifier', 'label', 1000)
  c.optimizer.name = 'adamw'
  c.total_steps = 1000  # Only shapes the lr schedule.
  return config_lib.validate(c)


class Setup:
  """One model's train state, its jitted step and abstract state, built as train.py builds them."""

  def __init__(self, variant, batch, seed=0):
    self.variant, self.config = variant, make_config(variant, batch)
    model = heads.build_model(self.config)
    tx, lr_fn = optim.make_optimizer(self.config.optimizer, self.config.total_steps)
    rng = np.random.default_rng(seed)
    self.batch = {'image': jnp.asarray(rng.uniform(-1, 1, (batch, 224, 224, 3)), jnp.float32),
                  'labels': {'label': jnp.asarray(rng.integers(0, 1000, (batch,)), jnp.int32)}}

    def init(key):
      params = model.init(key, self.batch['image'][:1], train=False)['params']
      zero = jnp.zeros((), jnp.int32)
      return dict(step=zero, params=params, opt_state=tx.init(params), nonfinite_steps=zero,
                  bad_examples=zero)

    mesh = sharding.make_mesh(self.config.mesh)
    abstract = jax.eval_shape(init, jax.random.key(seed))
    shardings = sharding.tree_shardings(abstract, mesh, self.config.sharding)
    self.abstract = checkpoint.abstract_with_shardings(abstract, shardings)
    self.params = sum(x.size for x in jax.tree.leaves(abstract['params']))
    self.state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    t0 = time.perf_counter()
    self.state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    self._step = jax.jit(train.make_train_step(model, self.config, tx, lr_fn),
                         in_shardings=(shardings, sharding.batch_sharding(mesh)),
                         out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    self.step_times = []
    self.train_step()  # Compiles; AdamW's moments become non-zero.
    self.setup_s = time.perf_counter() - t0

  def train_step(self):
    t0 = time.perf_counter()
    self.state, out = self._step(self.state, self.batch)
    jax.block_until_ready((self.state, out))
    self.step_times.append(time.perf_counter() - t0)


def data_iterator():
  """A Grain iterator, for the `data` item every bigvis checkpoint holds beside the state."""
  return iter(grain.MapDataset.range(10**9).to_iter_dataset())


def timed(fn, *args, **kwargs):
  t0 = time.perf_counter()
  out = fn(*args, **kwargs)
  return time.perf_counter() - t0, out


def save_series(setup, directory, saves, *, async_save, wait_each):
  """`saves` saves at steps 1..saves, one train step before each but the first: seconds blocked
  in each `save`, and, with `wait_each`, the seconds from each `save` call to its commit."""
  ckpt = checkpoint.Checkpointer(directory, every=1, keep=setup.config.keep_checkpoints,
                                 async_save=async_save)
  it, blocked, committed = data_iterator(), [], []
  try:
    for step in range(1, saves + 1):
      if step > 1:
        setup.train_step()
      next(it)
      t0 = time.perf_counter()
      if not ckpt.save(step, setup.state, it):
        raise RuntimeError(f'Checkpointer skipped step {step}')
      blocked.append(time.perf_counter() - t0)
      if wait_each:
        ckpt.wait()
        committed.append(time.perf_counter() - t0)
    ckpt.wait()
  finally:
    ckpt.close()
  return blocked, committed


def restore_latest(setup, directory):
  ckpt = checkpoint.Checkpointer(directory, every=1, keep=setup.config.keep_checkpoints)
  try:
    t0 = time.perf_counter()
    step, state = ckpt.restore_latest(setup.abstract, data_iterator())
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
  finally:
    ckpt.close()
  return seconds, step, _equal(state, setup.state)


def restore_params(setup, directory):
  seconds, params = timed(pretrained.load, setup.abstract['params'], directory, skip='^$',
                          log=False)
  return seconds, _equal(params, setup.state['params'])


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def dir_bytes(path):
  total = 0
  for parent, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(parent, f)) for f in files)
  return total


def _busy_ticks():
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal


def _own_ticks():
  with open('/proc/self/stat') as f:
    rest = f.read().rsplit(')', 1)[1].split()
  return int(rest[11]) + int(rest[12])  # utime + stime, all threads


def one_run(setup, root, saves):
  """One repeat for one model: the four measurements, each in a fresh dir, removed after."""
  busy0, own0, t0 = _busy_ticks(), _own_ticks(), time.perf_counter()
  gap_dir = os.path.join(root, 'gap')
  blocked, committed = save_series(setup, gap_dir, saves + 1, async_save=True, wait_each=True)
  latest = os.path.join(gap_dir, str(saves + 1))
  disk = dir_bytes(latest)
  restore_s, restored_step, restore_ok = restore_latest(setup, gap_dir)
  restore_ok = restore_ok and restored_step == saves + 1  # the newest step, not an older one
  params_s, params_ok = restore_params(setup, gap_dir)
  shutil.rmtree(gap_dir)
  burst, _ = save_series(setup, os.path.join(root, 'burst'), saves, async_save=True,
                         wait_each=False)
  sync, _ = save_series(setup, os.path.join(root, 'sync'), saves + 1, async_save=False,
                        wait_each=False)
  for name in ('burst', 'sync'):
    shutil.rmtree(os.path.join(root, name))
  elapsed = time.perf_counter() - t0
  own = (_own_ticks() - own0) / HZ / elapsed
  return dict(
      first_blocked_s=blocked[0], first_write_s=committed[0], first_sync_s=sync[0],
      blocked_s=blocked[1:], write_s=committed[1:], burst_blocked_s=burst[1:], sync_s=sync[1:],
      disk_bytes=disk, restore_s=restore_s, restored_step=restored_step, restore_ok=restore_ok,
      params_restore_s=params_s, params_ok=params_ok, seconds=elapsed, own_cores=own,
      other_cores=max(0.0, (_busy_ticks() - busy0) / HZ / elapsed - own))


def stats(values):
  return dict(median=statistics.median(values), min=min(values), max=max(values))


def summarize(model):
  """Per run: the median over its saves; then median, min and max over runs."""
  runs, mb = model['runs'], model['state_bytes'] / MB
  per_run = lambda key: [statistics.median(r[key]) for r in runs]
  blocked, write, sync = per_run('blocked_s'), per_run('write_s'), per_run('sync_s')
  return dict(
      blocked_ms=stats([1e3 * x for x in blocked]),
      burst_blocked_ms=stats([1e3 * x for x in per_run('burst_blocked_s')]),
      first_blocked_ms=stats([1e3 * r['first_blocked_s'] for r in runs]),
      write_s=stats(write), sync_s=stats(sync),
      first_sync_s=stats([r['first_sync_s'] for r in runs]),
      sync_over_blocked=stats([s / b for s, b in zip(sync, blocked)]),
      restore_s=stats([r['restore_s'] for r in runs]),
      params_restore_s=stats([r['params_restore_s'] for r in runs]),
      write_mb_s=stats([mb / w for w in write]), sync_mb_s=stats([mb / s for s in sync]),
      disk_mb=stats([r['disk_bytes'] / MB for r in runs]),
      train_step_s=statistics.median(model['train_step_s']),
      other_cores_max=max(r['other_cores'] for r in runs),
      restores_equal=all(r['restore_ok'] and r['params_ok'] for r in runs))


ROWS = (  # (summary key, row label, format)
    ('blocked_ms', 'blocked per async save, ms', '{:.0f}'),
    ('burst_blocked_ms', 'blocked, back to back, ms', '{:.0f}'),
    ('first_blocked_ms', 'blocked, first save of a run, ms', '{:.0f}'),
    ('write_s', 'async write until committed, s', '{:.2f}'),
    ('sync_s', 'sync save, s', '{:.2f}'),
    ('sync_over_blocked', 'sync / async blocked', '{:.1f}x'),
    ('restore_s', 'restore_latest, s', '{:.2f}'),
    ('params_restore_s', 'restore params only (pretrained.load), s', '{:.2f}'),
    ('write_mb_s', 'write MB/s, async', '{:.0f}'),
    ('sync_mb_s', 'write MB/s, sync', '{:.0f}'),
)


def model_table(name, model):
  s = model['summary']
  lines = [f"### ViT-{name}: {model['params'] / 1e6:.1f}M params, state "
           f"{model['state_bytes'] / MB:.1f} MB, {s['disk_mb']['median']:.1f} MB on disk", '',
           '| figure | median | min | max |', '|---|---:|---:|---:|']
  for key, label, fmt in ROWS:
    v = s[key]
    lines.append(f"| {label} | {fmt.format(v['median'])} | {fmt.format(v['min'])} | "
                 f"{fmt.format(v['max'])} |")
  return lines + ['']


def notes(result):
  a, models = result['args'], result['models']
  steps = ', '.join(f"{n} {m['summary']['train_step_s']:.2f} s" for n, m in models.items())
  out = [
      f"- Gap between async saves: each write was waited for (until committed) before the next "
      f"train step, so no save waited for a previous one. Back to back: one train step (batch "
      f"{a['batch']}; median {steps}) between saves, and the write still in flight.",
      '- Restores read files written seconds before, from the page cache, not a cold disk.']
  for n, m in models.items():
    s = m['summary']
    gap, burst = s['blocked_ms']['median'], s['burst_blocked_ms']['median']
    if burst > 1.2 * gap:
      out.append(f"- {n}: back to back, a save blocks {burst:.0f} ms (vs {gap:.0f} ms): Orbax's "
                 '`save` first waits for the previous write to commit (a write takes '
                 f"{s['write_s']['median']:.2f} s alone; the train step between ran beside it), "
                 'then does the blocking part of its own save.')
    if not s['restores_equal']:
      out.append(f'- {n}: a restored state differed from the saved one (or was not the newest '
                 'step)!')
  busy = max(m['summary']['other_cores_max'] for m in models.values())
  if busy > 0.2:
    out.append(f"- Other processes used up to {busy:.2f} of {result['machine']['cores']} cores "
               "during a model's run: write and restore times are slower than on an idle machine.")
  return out


def markdown(result):
  m, a, v = result['machine'], result['args'], result['machine']['versions']
  lines = [
      '# Checkpointing: async Orbax saves and restores of a bigvis train state', '',
      f"{result['time']}: {m['cpu']}, {m['cores']} cores, orbax-checkpoint "
      f"{v['orbax-checkpoint']}, tensorstore {v['tensorstore']}, jax {v['jax']}, Python "
      f"{m['python']}. One CPU device; workdir on {result['workdir_fs']}. {a['saves']} saves x "
      f"{a['repeats']} repeats per model. Load average before {result['loadavg_before']}, after "
      f"{result['loadavg_after']}. Command: `{result['command']}`", '']
  for name, model in result['models'].items():
    lines += model_table(name, model)
  return '\n'.join(lines + notes(result)) + '\n'


def filesystem(path):
  """'<type> (<device>)' of the mount holding `path`."""
  best = ('', '?', '?')
  with open('/proc/mounts') as f:
    for line in f:
      dev, mnt, fs = line.split()[:3]
      if (path + '/').startswith(mnt.rstrip('/') + '/') and len(mnt) > len(best[0]):
        best = (mnt, fs, dev)
  return f'{best[1]} ({best[2]})'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='Ti/16,S/16')
  parser.add_argument('--saves', type=int, default=5, help='timed saves per measurement')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=1, help='images per train step between saves')
  parser.add_argument('--workdir', default=None, help='default: a temp dir, removed at the end')
  parser.add_argument('--quick', action='store_true', help='Ti/16, 2 saves x 1 repeat, out *_quick')
  parser.add_argument('--out', default=None)
  args = parser.parse_args()
  if args.quick:
    args.models, args.saves, args.repeats = 'Ti/16', 2, 1
  if args.saves < 2:
    parser.error('--saves must be at least 2 (back to back needs a write in flight)')
  out = args.out or os.path.join(BENCH, 'results',
                                 'checkpointing' + ('_quick' if args.quick else ''))
  logging.set_verbosity(logging.WARNING)  # Orbax logs ~20 INFO lines per save.
  workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix='bigvis_ckpt_bench_'))
  loadavg_before = os.getloadavg()
  try:
    models = run(args, workdir)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  result = dict(
      time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command=' '.join(['python', os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
      machine=machine.describe(PACKAGES), args=vars(args), devices=[str(d) for d in jax.devices()],
      workdir_fs=filesystem(workdir), loadavg_before=[round(x, 2) for x in loadavg_before],
      loadavg_after=[round(x, 2) for x in os.getloadavg()], models=models)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fileio.write_text_atomic(out + '.json', json.dumps(result, indent=1))
  fileio.write_text_atomic(out + '.md', markdown(result))
  print(markdown(result))


def run(args, workdir):
  setups = {}
  for variant in args.models.split(','):
    setups[variant] = Setup(variant, args.batch)
    print(f'{variant}: {setups[variant].params / 1e6:.1f}M params, state '
          f'{setups[variant].state_bytes / MB:.1f} MB, built and compiled in '
          f'{setups[variant].setup_s:.1f} s', flush=True)
  runs = {v: [] for v in setups}
  for rep in range(args.repeats):
    for variant in (list(setups) if rep % 2 == 0 else list(setups)[::-1]):
      root = os.path.join(workdir, variant.replace('/', '_'), str(rep))
      r = one_run(setups[variant], root, args.saves)
      runs[variant].append(r)
      print(f"repeat {rep} {variant}: blocked {1e3 * statistics.median(r['blocked_s']):.0f} ms, "
            f"back to back {1e3 * statistics.median(r['burst_blocked_s']):.0f} ms, write "
            f"{statistics.median(r['write_s']):.2f} s, sync {statistics.median(r['sync_s']):.2f} s,"
            f" restore {r['restore_s']:.2f} s ({r['seconds']:.0f} s, other cores "
            f"{r['other_cores']:.2f})", flush=True)
  models = {}
  for variant, s in setups.items():
    models[variant] = dict(params=int(s.params), state_bytes=int(s.state_bytes),
                           leaves=len(jax.tree.leaves(s.abstract)), setup_s=s.setup_s,
                           train_step_s=s.step_times[1:], runs=runs[variant])
    models[variant]['summary'] = summarize(models[variant])
  return models


if __name__ == '__main__':
  main()
