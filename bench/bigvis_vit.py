"""bigvis's training step of ViT-Ti/16, ViT-S/16 or ResNet-50, built from bigvis's own pieces, as a
worker for the driver (`bench/train_step.py`).

`--model` names the trunk as the configs do (`configs/pretrain.py`): vit-ti16 is
`config.model.name='vit', variant='Ti/16'`, vit-s16 `'vit', 'S/16'` (both class-token pooled, 224
px), resnet50 `'resnet', '50'` (BiT ResNet-50 v1.5: GroupNorm + weight-standardized convs).
`heads.build_model(config)` with a 1000-way classifier task, `optim.make_optimizer` (AdamW,
clipping, warmup+cosine schedule: the defaults) and `train.make_train_step`, jitted with the state
donated, on one CPU device: exactly the step `bigvis.train` runs, less the sharding annotations,
which are no-ops on one device.

`python bench/bigvis_vit.py --worker --model vit-s16 --batch 16 --dtype bfloat16` compiles, runs
warm-up steps, prints one `@@{json}` line (compile seconds, param count, analytic FLOPs), then for
each `run N` line on stdin runs N timed steps and prints one `@@{json}` line with each step's
seconds; `quit` ends it. Standalone (no --worker) it prints images/s.
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

from bigvis import config as config_lib, cpu_tuning, heads, metrics, optim, train  # noqa: E402


MODELS = {  # --model -> (config.model.name, config.model.variant)
    'vit-ti16': ('vit', 'Ti/16'),
    'vit-s16': ('vit', 'S/16'),
    'resnet50': ('resnet', '50'),
}


def make_config(batch, dtype, model='vit-ti16'):
  c = config_lib.defaults()
  c.batch_size = batch
  c.model.name, c.model.variant = MODELS[model]
  c.model.pool_type = 'tok'  # ViT only; the ResNet reads no pool_type.
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
  ap.add_argument('--model', choices=list(MODELS), default='vit-ti16')
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps (the first compiles)')
  ap.add_argument('--steps', type=int, default=5, help='timed steps (standalone mode)')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--worker', action='store_true', help='line protocol for the driver')
  args = ap.parse_args()

  cpu_tuning.apply()  # What bigvis.train's start-up does, before the first computation.
  c = make_config(args.batch, args.dtype, args.model)
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
      side='bigvis', model=args.model, model_config=c.model.to_dict(), dtype=args.dtype,
      batch=args.batch, devices=[str(d) for d in jax.devices()],
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
    print(f'{args.model} {args.dtype}: {args.steps * args.batch / sum(res["step_seconds"]):.2f} images/s '
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
