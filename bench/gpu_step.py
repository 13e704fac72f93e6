"""ViT training-step throughput on one GPU: bigvis (XLA) beside PyTorch (torch.compile + SDPA).

Run by `bench/gpu.sh`, which documents the whole benchmark; the subcommands are its steps:

  gpu_step.py preflight --json P   imports bigvis's train-step closure (JAX on CPU, no GPU touched),
                                   counts the step's FLOPs per image, records versions; exit 3 when
                                   the import fails (gpu.sh then installs the carried wheels)
  gpu_step.py bigvis --json P      the bigvis side: heads.build_model + optim.make_optimizer +
                                   train.make_train_step, jax.jit with the state donated
  gpu_step.py torch --json P       the PyTorch side: bench/torch_vit.py's ViT at the same shape,
                                   torch.compile'd forward + loss, fused AdamW, global-norm clipping
  gpu_step.py report ...           the markdown table and the JSON, from the files above

Each side tries the batches of --batches in order (512,384,256,128 by default) and keeps the first
that compiles and runs (an out-of-memory error moves on to the next; any other error ends the side);
then --warmup untimed steps, then --repeats rounds of --steps timed steps, each round ended by
jax.block_until_ready / torch.cuda.synchronize. A side writes its JSON after every phase, so a side
killed by gpu.sh's timeout still leaves what it had measured. This file imports neither jax nor
torch at the top: the torch side runs where jax may be missing (bench/.torch-venv here).
"""
import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

VARIANTS = {  # name -> (width, depth, mlp_dim, num_heads), as bigvis/models/vit.py
    'Ti': (192, 12, 768, 3), 'S': (384, 12, 1536, 6), 'B': (768, 12, 3072, 12)}
NUM_CLASSES = 1000
PACKAGES = ('jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'flax', 'optax',
            'orbax-checkpoint', 'ml-collections', 'grain', 'array-record', 'numpy', 'protobuf',
            'torch', 'triton')


def parse_variant(variant):
  name, patch = variant.split('/')
  width, depth, mlp, heads = VARIANTS[name]
  return dict(width=width, depth=depth, mlp_dim=mlp, num_heads=heads, patch_size=int(patch))


def analytic_fwd_flops(variant, image_size, num_classes=NUM_CLASSES):
  """Forward matmul+conv FLOPs per image of the class-token ViT, from its shape: the count
  bigvis.metrics.matmul_flops makes from the jaxpr (the preflight checks that they agree)."""
  v = parse_variant(variant)
  d, m, p = v['width'], v['mlp_dim'], v['patch_size']
  n = (image_size // p) ** 2
  t = n + 1  # + class token
  stem = 2 * n * d * 3 * p * p
  block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * m
  return stem + v['depth'] * block + 2 * d * num_classes


def versions():
  out = {'python': platform.python_version()}
  for p in PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def write_text(path, text):
  """Writes on a temporary name, then renames: a killed run leaves the old file whole."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path, obj):
  write_text(path, json.dumps(obj, indent=2))


def is_oom(e):
  s = f'{type(e).__name__}: {e}'.lower()
  return any(k in s for k in ('out of memory', 'outofmemory', 'resource_exhausted',
                              'resource exhausted', 'cuda error: out of memory'))


def short(e, n=300):
  first = f'{type(e).__name__}: {e}'.strip().splitlines()
  return (first[0] if first else type(e).__name__)[:n]


def summary(values):
  return dict(median=statistics.median(values), min=min(values), max=max(values))


class Side:
  """Shared driver of one side: batch fallback, warm-up, timed rounds, JSON after each phase."""

  def __init__(self, name, args):
    self.args = args
    self.deadline = args.deadline or float('inf')
    self.res = dict(side=name, status='starting', variant=args.variant, image_size=args.image,
                    dtype='bfloat16 compute, float32 params', steps=args.steps,
                    repeats=args.repeats, warmup=args.warmup, attempts=[],
                    fwd_flops_per_image_analytic=analytic_fwd_flops(args.variant, args.image),
                    versions=versions(), started=time.time())
    self.save()

  def save(self):
    self.res['elapsed_seconds'] = time.time() - self.res['started']
    write_json(self.args.json, self.res)

  def phase(self, status):
    self.res['status'] = status
    self.save()
    print(f'[{self.res["side"]}] {status} ({self.res["elapsed_seconds"]:.1f} s)', flush=True)

  def run(self, attempt):
    """attempt(batch) -> (step(), sync(), info); raises on failure."""
    batches = [int(b) for b in self.args.batches.split(',') if b.strip()]
    for b in batches:
      self.phase(f'building batch {b}')
      t0 = time.perf_counter()
      failure = None
      try:
        if self.args.fake_oom_above and b > self.args.fake_oom_above:
          raise RuntimeError(f'RESOURCE_EXHAUSTED: simulated out of memory at batch {b} '
                             f'(--fake-oom-above {self.args.fake_oom_above})')
        step, sync, info = attempt(b, self)
      except Exception as e:  # pylint: disable=broad-except
        failure = dict(oom=is_oom(e), error=short(e), tb=traceback.format_exc())
      if failure:  # Out of the except block, so the failed attempt's frames (and arrays) can go.
        oom = failure['oom']
        self.res['attempts'].append(dict(batch=b, oom=oom, error=failure['error'],
                                         seconds=time.perf_counter() - t0))
        print(f'[{self.res["side"]}] batch {b} failed ({"OOM" if oom else "error"}): '
              f'{failure["error"]}', flush=True)
        self.cleanup()
        if oom:
          continue
        print(failure['tb'], file=sys.stderr, flush=True)
        self.res['error'] = failure['error']
        self.res['traceback'] = failure['tb'][-4000:]
        self.phase('failed')
        return 1
      self.res['attempts'].append(dict(batch=b, oom=False, error=None,
                                       seconds=time.perf_counter() - t0))
      self.res.update(batch=b, **info)
      self.phase('warm')
      return self.timed(b, step, sync)
    self.res['error'] = f'out of memory at every batch ({self.args.batches})'
    self.phase('failed')
    return 1

  def timed(self, batch, step, sync):
    rounds = []
    for r in range(self.args.repeats):
      if rounds and time.time() > self.deadline:
        self.res['note'] = f'stopped after {len(rounds)} of {self.args.repeats} repeats (deadline)'
        break
      sync()
      t0 = time.perf_counter()
      for _ in range(self.args.steps):
        step()
      loss = sync()
      dt = time.perf_counter() - t0
      rounds.append(dict(seconds=dt, images_per_sec=self.args.steps * batch / dt,
                         step_seconds=dt / self.args.steps, loss=loss))
      self.res['rounds'] = rounds
      self.res['images_per_sec'] = summary([x['images_per_sec'] for x in rounds])
      self.res['step_seconds'] = summary([x['step_seconds'] for x in rounds])
      self.res['loss'] = loss
      self.phase(f'repeat {r}: {rounds[-1]["images_per_sec"]:.1f} img/s, loss {loss:.4f}')
    self.res['status'] = 'ok'
    self.save()
    return 0

  def cleanup(self):
    gc.collect()


# ---------------------------------------------------------------------------------------- bigvis

def bigvis_config(batch, variant, impl='auto'):
  from bigvis import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.defaults()
  c.model.impl = impl  # auto: stock flax layers + jax.nn.dot_product_attention on a GPU
  c.batch_size = batch
  c.model.name = 'vit'
  c.model.variant = variant
  c.model.pool_type = 'tok'
  c.model.dtype = 'bfloat16'  # bf16 compute, float32 params and loss
  c.tasks.labels = config_lib.task('classifier', 'label', NUM_CLASSES)
  c.optimizer.name = 'adamw'
  c.total_steps = 1000  # Only shapes the lr schedule.
  return config_lib.validate(c)


def cmd_preflight(args):
  """Imports the closure, counts FLOPs from the jaxpr (abstract: no params are made)."""
  res = dict(variant=args.variant, image_size=args.image, versions=versions())
  if os.environ.get('BIGVIS_GPU_WHEELS'):  # Set by gpu.sh after it installed carried wheels.
    res['wheels_installed'] = os.environ['BIGVIS_GPU_WHEELS']
  t0 = time.perf_counter()
  try:
    sys.path.insert(0, ROOT)
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from bigvis import config, heads, metrics, optim, train  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
  except Exception as e:  # pylint: disable=broad-except
    res.update(import_ok=False, import_error=short(e), traceback=traceback.format_exc()[-3000:])
    write_json(args.json, res)
    traceback.print_exc()
    return 3
  res.update(import_ok=True, import_seconds=time.perf_counter() - t0,
             modules={m: getattr(sys.modules.get(m), '__file__', None)
                      for m in ('ml_collections', 'grain', 'array_record', 'portpicker')})
  try:
    c = bigvis_config(1, args.variant, args.impl)
    model = heads.build_model(c)
    x = jax.ShapeDtypeStruct((1, args.image, args.image, 3), jnp.float32)
    params = jax.eval_shape(lambda k, im: model.init(k, im, train=False)['params'],
                            jax.random.key(0), x)
    fwd = int(metrics.matmul_flops(lambda p, im: model.apply({'params': p}, im, train=False),
                                   params, x))
    res.update(fwd_flops_per_image=fwd, train_flops_per_image=3 * fwd,
               params=int(sum(p.size for p in jax.tree.leaves(params))))
  except Exception as e:  # pylint: disable=broad-except
    res.update(flops_error=short(e))
    traceback.print_exc()
  analytic = analytic_fwd_flops(args.variant, args.image)
  res['fwd_flops_per_image_analytic'] = analytic
  if res.get('fwd_flops_per_image') not in (None, analytic):
    res['flops_note'] = (f'jaxpr count {res["fwd_flops_per_image"]} != analytic {analytic}; '
                         'the jaxpr count is used')
  write_json(args.json, res)
  print(f'preflight: bigvis imports ok ({res["import_seconds"]:.1f} s); forward FLOPs/image '
        f'{res.get("fwd_flops_per_image")} (analytic {analytic}); params {res.get("params")}')
  return 0


def cmd_bigvis(args):
  side = Side('bigvis', args)
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from bigvis import heads, optim, train  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  from bigvis import models  # pylint: disable=import-outside-toplevel
  side.res.update(device=str(dev), device_kind=dev.device_kind, platform=dev.platform,
                  xla_python_client_mem_fraction=os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION'),
                  impl=models.resolve_impl(args.impl))
  side.phase('imported')

  def attempt(b, side):
    c = bigvis_config(b, args.variant, args.impl)
    model = heads.build_model(c)
    tx, lr = optim.make_optimizer(c.optimizer, c.total_steps)
    rng = np.random.default_rng(0)
    batch = {
        'image': jnp.asarray(rng.uniform(-1, 1, (b, args.image, args.image, 3)).astype(np.float32)),
        'labels': {'label': jnp.asarray(rng.integers(0, NUM_CLASSES, (b,)).astype(np.int32))}}
    params = jax.jit(lambda k: model.init(k, batch['image'][:1], train=False)['params'])(
        jax.random.key(0))
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    del params
    n_params = int(sum(x.size for x in jax.tree.leaves(state['params'])))
    side.phase(f'compiling batch {b}')
    t0 = time.perf_counter()
    compiled = jax.jit(train.make_train_step(model, c, tx, lr), donate_argnums=0).lower(
        state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = None
    try:
      ma = compiled.memory_analysis()
      mem = {k: int(getattr(ma, k)) for k in ('temp_size_in_bytes', 'argument_size_in_bytes',
                                              'output_size_in_bytes') if hasattr(ma, k)}
    except Exception:  # pylint: disable=broad-except
      pass
    holder = {'state': state, 'out': None}
    del state

    def step():
      holder['state'], holder['out'] = compiled(holder['state'], batch)

    def sync():
      jax.block_until_ready((holder['state'], holder['out']))
      return float('nan') if holder['out'] is None else float(holder['out']['loss'])

    side.phase(f'warm-up batch {b}')
    warm, loss = [], float('nan')
    for _ in range(args.warmup):
      t = time.perf_counter()
      step()
      loss = sync()
      warm.append(time.perf_counter() - t)
    return step, sync, dict(compile_seconds=compile_s, warmup_step_seconds=warm,
                            warmup_loss=loss, params=n_params, memory_analysis=mem)

  def cleanup():
    gc.collect()
    jax.clear_caches()
  side.cleanup = cleanup
  return side.run(attempt)


# ----------------------------------------------------------------------------------------- torch

def cmd_torch(args):
  side = Side('torch', args)
  sys.path.insert(0, BENCH)
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from torch_vit import ViT  # pylint: disable=import-outside-toplevel

  cuda = torch.cuda.is_available()
  dev = 'cuda' if cuda else 'cpu'
  torch.set_float32_matmul_precision('high')  # The few f32 matmuls outside autocast use TF32.
  mode = os.environ.get('TORCH_COMPILE_MODE') or None
  compile_on = not args.no_compile
  side.res.update(device=torch.cuda.get_device_name(0) if cuda else 'cpu', platform=dev,
                  torch_compile=compile_on, torch_compile_mode=mode or 'default',
                  sdpa='F.scaled_dot_product_attention',
                  optimizer=f'AdamW(fused={cuda}), clip_grad_norm_(foreach=True)')
  side.phase('imported')
  v = parse_variant(args.variant)

  def attempt(b, side):
    torch._dynamo.reset()  # pylint: disable=protected-access  # A fresh graph per batch size.
    torch.manual_seed(0)
    model = ViT(image_size=args.image, patch_size=v['patch_size'], width=v['width'],
                depth=v['depth'], mlp_dim=v['mlp_dim'], num_heads=v['num_heads'],
                num_classes=NUM_CLASSES).to(dev).train()
    decay = [p for n, p in model.named_parameters() if n.endswith('weight') and p.dim() > 1]
    ids = {id(p) for p in decay}
    opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=1e-4),
         dict(params=[p for p in model.parameters() if id(p) not in ids], weight_decay=0.0)],
        lr=1e-3, betas=(0.9, 0.999), **(dict(fused=True) if cuda else {}))
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(b, 3, args.image, args.image, generator=g) * 2 - 1).to(dev)
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=g).to(dev)

    def fwd_loss(x, y):
      with torch.autocast(dev, dtype=torch.bfloat16):
        logits = model(x)
      return F.cross_entropy(logits.float(), y)

    fn = torch.compile(fwd_loss, mode=mode) if compile_on else fwd_loss
    params = list(model.parameters())
    holder = {}

    def step():
      loss = fn(images, labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
      opt.step()
      holder['loss'] = loss.detach()

    def sync():
      if cuda:
        torch.cuda.synchronize()
      return float(holder['loss']) if 'loss' in holder else float('nan')

    side.phase(f'compiling batch {b} (first step)')
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    sync()
    compile_s = time.perf_counter() - t0
    side.phase(f'warm-up batch {b}')
    warm = []
    for _ in range(max(args.warmup - 1, 0)):
      t = time.perf_counter()
      step()
      loss = sync()
      warm.append(time.perf_counter() - t)
    info = dict(compile_seconds=compile_s, warmup_step_seconds=warm,
                warmup_loss=sync(), params=sum(p.numel() for p in params))
    if cuda:
      info['max_memory_allocated_gib'] = torch.cuda.max_memory_allocated() / 2**30
    side._keep = (model, opt, images, labels)  # pylint: disable=protected-access
    return step, sync, info

  def cleanup():
    side.__dict__.pop('_keep', None)
    torch._dynamo.reset()  # pylint: disable=protected-access  # Compiled graphs hold the model.
    gc.collect()
    if cuda:
      torch.cuda.empty_cache()
  side.cleanup = cleanup
  return side.run(attempt)


# ---------------------------------------------------------------------------------------- report

def load(path):
  if not path:
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def fmt(x, digits=1):
  return '—' if x is None else f'{x:,.{digits}f}'


def cmd_report(args):
  pre = load(args.preflight) or {}
  gpu = load(args.gpu_info) or {}
  flops_src = 'bigvis.metrics.matmul_flops (jaxpr), x3 for the training step'
  fwd = pre.get('fwd_flops_per_image')
  if (pre.get('variant'), pre.get('image_size')) != (args.variant, args.image):
    fwd = None  # The preflight counted another shape.
  if fwd is None:
    fwd = analytic_fwd_flops(args.variant, args.image)
    flops_src = 'analytic count from the ViT shape (preflight could not count), x3'
  train_flops = 3 * fwd
  peak = args.peak_tflops
  res = dict(
      date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      benchmark=f'ViT-{args.variant} training step, {args.image} px, bf16 compute, f32 params',
      smoke=args.smoke, gpu=gpu, preflight=pre, train_flops_per_image=train_flops,
      flops_source=flops_src, peak_tflops=peak, peak_source=args.peak_source,
      wall_seconds=args.wall, sides={})
  rows = []
  for name, path, rc in (('bigvis', args.bigvis, args.bigvis_rc),
                         ('torch', args.torch, args.torch_rc)):
    r = load(path) or dict(side=name, status='no result')
    r['exit_code'] = rc
    if rc in (124, 137) and r.get('status') != 'ok':
      r['error'] = (f'killed by its timeout in "{r.get("status")}" (that phase began '
                    f'{r.get("elapsed_seconds", 0):.0f} s in)'
                    + (f'; {r["error"]}' if r.get('error') else ''))
      r['status'] = 'timeout'
    elif rc not in (0, None) and r.get('status') not in ('ok', 'failed', 'skipped'):
      r['error'] = r.get('error') or f'exited {rc} during "{r.get("status")}"'
      r['status'] = 'failed'
    ips = r.get('images_per_sec')
    if ips:
      r['tflops_per_sec'] = {k: v * train_flops / 1e12 for k, v in ips.items()}
      r['mfu'] = r['tflops_per_sec']['median'] / peak if peak else None
    res['sides'][name] = r
    rows.append(r)

  label = {'bigvis': 'bigvis (jax.jit, XLA)',
           'torch': 'torch (torch.compile, SDPA)'}
  dev = gpu.get('name') or next((r.get('device') for r in rows if r.get('device')), '?')
  lines = [f'# {res["benchmark"]}{" (CPU SMOKE RUN)" if args.smoke else ""}', '',
           f'{res["date"]}: {dev}' + (f', {gpu["memory"]}' if gpu.get('memory') else '') +
           (f', driver {gpu["driver"]}' if gpu.get('driver') else '') +
           f'. jax {pre.get("versions", {}).get("jax", "?")}, '
           f'torch {(res["sides"]["torch"].get("versions") or {}).get("torch", "?")}. '
           f'{args.steps} timed steps x {args.repeats} repeats per side after {args.warmup} '
           f'warm-up steps; batch = the first of {args.batches} that fits. '
           f'Training FLOPs/image {train_flops / 1e9:.2f} G; ' +
           (f'peak {fmt(peak, 0)} TFLOP/s ({args.peak_source}).' if peak else
            f'{args.peak_source or "no peak given: MFU not computed"}.'), '',
           '| side | batch | img/s median | min | max | TFLOP/s | MFU | step ms | compile s |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    name = label.get(r['side'], r['side'])
    if r['side'] == 'bigvis' and r.get('impl'):
      name = f'bigvis (jax.jit, XLA; impl {r["impl"]})'
    if r['side'] == 'torch' and r.get('torch_compile') is False:
      name = 'torch (eager, SDPA)'
    if not r.get('images_per_sec'):
      ooms = [a['batch'] for a in r.get('attempts', []) if a.get('oom')]
      err = (r.get('error') or r.get('status') or '?').replace('|', '/')[:160]
      lines.append(f'| {name} | — | {r.get("status")}: {err}'
                   + (f' (OOM at {ooms})' if ooms else '') + ' | | | | | | |')
      continue
    ips, tf = r['images_per_sec'], r['tflops_per_sec']
    mfu = r.get('mfu')
    lines.append(f'| {name} | {r["batch"]} | {fmt(ips["median"])} | {fmt(ips["min"])} | '
                 f'{fmt(ips["max"])} | {fmt(tf["median"], 1 if not args.smoke else 4)} | '
                 f'{"—" if mfu is None else f"{100 * mfu:.1f}%"} | '
                 f'{fmt(1000 * r["step_seconds"]["median"])} | {fmt(r.get("compile_seconds"))} |')
  b, t = res['sides']['bigvis'].get('images_per_sec'), res['sides']['torch'].get('images_per_sec')
  if b and t:
    res['ratio_bigvis_over_torch'] = b['median'] / t['median']
    lines += ['', f'bigvis / torch (median img/s): **{res["ratio_bigvis_over_torch"]:.2f}**']
  notes = []
  for r in rows:
    ooms = [a['batch'] for a in r.get('attempts', []) if a.get('oom')]
    if ooms and r.get('images_per_sec'):
      notes.append(f'{r["side"]}: out of memory at batch {", ".join(map(str, ooms))}')
    if r.get('note'):
      notes.append(f'{r["side"]}: {r["note"]}')
    if r.get('batch') and rows[0].get('batch') and r['batch'] != rows[0]['batch']:
      notes.append('the two sides ran different batch sizes')
  if pre.get('flops_note'):
    notes.append(pre['flops_note'])
  if pre.get('wheels_installed'):
    notes.append(f'installed from bench/.gpu-wheels: {pre["wheels_installed"]}')
  if notes:
    lines += [''] + [f'- {n}' for n in dict.fromkeys(notes)]
  res['markdown'] = '\n'.join(lines) + '\n'
  os.makedirs(args.out_dir, exist_ok=True)
  write_json(os.path.join(args.out_dir, args.name + '.json'), res)
  write_text(os.path.join(args.out_dir, args.name + '.md'), res['markdown'])
  print(res['markdown'])
  print(f'wrote {os.path.join(args.out_dir, args.name)}.json and .md')
  return 0 if all(r.get('status') == 'ok' for r in rows) else 1


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument('cmd', choices=('preflight', 'bigvis', 'torch', 'report'))
  ap.add_argument('--variant', default='B/16')
  ap.add_argument('--impl', default='auto', help='bigvis config.model.impl: auto | flax | cpu')
  ap.add_argument('--image', type=int, default=224)
  ap.add_argument('--batches', default='512,384,256,128')
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--warmup', type=int, default=3, help='untimed steps; the first compiles')
  ap.add_argument('--json', help='this step\'s result file')
  ap.add_argument('--deadline', type=float, default=0,
                  help='epoch seconds: start no further timed repeat after it')
  ap.add_argument('--no-compile', action='store_true', help='torch: eager (no torch.compile)')
  ap.add_argument('--fake-oom-above', type=int, default=0,
                  help='smoke test of the batch fallback: batches above this raise a fake OOM')
  # report
  ap.add_argument('--preflight')
  ap.add_argument('--gpu-info')
  ap.add_argument('--bigvis')
  ap.add_argument('--torch')
  ap.add_argument('--bigvis-rc', type=int)
  ap.add_argument('--torch-rc', type=int)
  ap.add_argument('--peak-tflops', type=float, default=0)
  ap.add_argument('--peak-source', default='')
  ap.add_argument('--wall', type=float)
  ap.add_argument('--smoke', action='store_true')
  ap.add_argument('--out-dir', default=os.path.join(BENCH, 'results'))
  ap.add_argument('--name', default='gpu_bench')
  args = ap.parse_args()
  return dict(preflight=cmd_preflight, bigvis=cmd_bigvis, torch=cmd_torch,
              report=cmd_report)[args.cmd](args)


if __name__ == '__main__':
  sys.exit(main())
