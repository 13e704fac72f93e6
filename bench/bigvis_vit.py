"""The bigvis ViT-Ti/16 training step, built from bigvis's own pieces, as a worker for the driver.

`heads.build_model(config)` with a 1000-way classifier task, `optim.make_optimizer` (AdamW,
clipping, warmup+cosine schedule: the defaults) and `train.make_train_step`, jitted with the state
donated, on one CPU device: exactly the step `bigvis.train` runs, less the sharding annotations,
which are no-ops on one device.

`python bench/bigvis_vit.py --worker --batch 32 --dtype bfloat16` compiles, runs warm-up steps,
prints one `@@{json}` line (compile seconds, param count, analytic FLOPs), then for each `run N`
line on stdin runs N timed steps and prints one `@@{json}` line with each step's seconds;
`quit` ends it. Standalone (no --worker) it prints images/s.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # Repo root.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bigvis import config as config_lib, heads, metrics, optim, train  # noqa: E402


def make_config(batch, dtype):
  c = config_lib.defaults()
  c.batch_size = batch
  c.model.name = 'vit'
  c.model.variant = 'Ti/16'
  c.model.pool_type = 'tok'
  c.model.dtype = dtype
  c.tasks.labels = config_lib.task('classifier', 'label', 1000)
  c.optimizer.name = 'adamw'
  c.total_steps = 1000  # Only shapes the lr schedule.
  return config_lib.validate(c)


def _emit(obj):
  sys.stdout.write('@@' + json.dumps(obj) + '\n')
  sys.stdout.flush()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps (the first compiles)')
  ap.add_argument('--steps', type=int, default=5, help='timed steps (standalone mode)')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--worker', action='store_true', help='line protocol for the driver')
  args = ap.parse_args()

  c = make_config(args.batch, args.dtype)
  model = heads.build_model(c)
  tx, lr = optim.make_optimizer(c.optimizer, c.total_steps)
  rng = np.random.default_rng(args.seed)
  batch = {
      'image': jnp.asarray(rng.uniform(-1, 1, (args.batch, 224, 224, 3)).astype(np.float32)),
      'labels': {'label': jnp.asarray(rng.integers(0, 1000, (args.batch,)).astype(np.int32))},
  }
  params = jax.jit(lambda k: model.init(k, batch['image'][:1], train=False)['params'])(
      jax.random.key(args.seed))
  forward = lambda p, x: model.apply({'params': p}, x, train=False)
  # Forward matmul+conv FLOPs of the whole batch (analytic); a training step ~ 3x.
  fwd_flops = metrics.matmul_flops(forward, params, batch['image'])
  state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  step = jax.jit(train.make_train_step(model, c, tx, lr), donate_argnums=0)

  t0 = time.perf_counter()
  warm_times = []
  for _ in range(args.warmup):
    t = time.perf_counter()
    state, out = step(state, batch)
    jax.block_until_ready((state, out))
    warm_times.append(time.perf_counter() - t)
  setup = dict(
      side='bigvis', dtype=args.dtype, batch=args.batch, devices=[str(d) for d in jax.devices()],
      params=int(sum(x.size for x in jax.tree.leaves(params))), fwd_flops=int(fwd_flops),
      train_flops=int(3 * fwd_flops), warmup_step_seconds=warm_times,
      warmup_seconds=time.perf_counter() - t0, loss=float(out['loss']))

  def timed(n):
    nonlocal state
    times = []
    for _ in range(n):
      t = time.perf_counter()
      state, out = step(state, batch)
      jax.block_until_ready((state, out))
      times.append(time.perf_counter() - t)
    return dict(step_seconds=times, loss=float(out['loss']))

  if not args.worker:
    res = timed(args.steps)
    print(json.dumps(setup))
    print(f'{args.dtype}: {args.steps * args.batch / sum(res["step_seconds"]):.2f} images/s '
          f'(loss {res["loss"]:.4f})')
    return
  _emit(setup)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == 'quit':
      break
    res = timed(int(cmd[1]))
    if not math.isfinite(res['loss']):
      res['warning'] = 'non-finite loss'
    _emit(res)


if __name__ == '__main__':
  main()
