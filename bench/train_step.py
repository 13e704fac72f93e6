"""Training throughput and MFU of bigvis's ViT-Ti/16, ViT-S/16 and ResNet-50 beside PyTorch.

    .venv/bin/python bench/train_step.py            # all three models: ~25 min on the 2-core dev CPU
    .venv/bin/python bench/train_step.py --models vit-ti16 --rows 'bigvis fp32,torch fp32'
    .venv/bin/python bench/train_step.py --quick    # smoke run: vit-ti16, tiny; ~3-4 min idle
    .venv/bin/python bench/train_step.py --quick --models vit-ti16,resnet50   # ~10 min idle

First the jit matmul ceiling of this CPU is measured (`bench/matmul_ceiling.py`, float32 and bf16
inputs with float32 accumulation; again at the end, the higher of the two counting), so every row's
MFU divides by a ceiling of the same run and precision. Then, one model at a time, up to six rows, each a long-lived worker process that builds,
compiles and warms up once: bigvis float32 and bfloat16 compute (`config.model.dtype`,
`bench/bigvis_vit.py`), torch eager float32 and bf16 autocast, and the same under torch.compile
(`bench/torch_vit.py`, same shapes, batch, init, loss and optimizer). Then `--repeats` rounds; in
each round every worker of the model runs its timed steps in turn, the order reversed every other
round, so drift (other work on the machine, thermal) hits all rows alike. Only one worker runs at a
time; the others sleep on a pipe; a model's workers end before the next model's start. A row whose
worker fails (e.g. torch.compile on this machine) is recorded with its error and shown as failed.
Writes `<out>.json` and `<out>.md` (default bench/results/train_step). See bench/README.md.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
from torch_env import TORCH_PY, ensure_torch_venv  # noqa: E402  (bench/torch_env.py)
import machine  # noqa: E402  (bench/machine.py)
import worker_proc  # noqa: E402  (bench/worker_proc.py)

from bigvis import fileio  # noqa: E402  (stdlib only: the driver imports no jax)
HZ = os.sysconf('SC_CLK_TCK')

MODELS = {  # --models name -> title, default batch, default timed steps per segment
    'vit-ti16': dict(title='ViT-Ti/16', batch=32, steps=4),
    'vit-s16': dict(title='ViT-S/16', batch=16, steps=3),
    'resnet50': dict(title='ResNet-50 (BiT: GroupNorm + WS)', batch=8, steps=3),
}
ROWS = {  # name -> (side, precision: the matmul ceiling it is measured against, torch.compile)
    'bigvis fp32': ('bigvis', 'float32', False),
    'bigvis bf16': ('bigvis', 'bfloat16', False),
    'torch fp32': ('torch', 'float32', False),
    'torch bf16': ('torch', 'bfloat16', False),
    'torch compile fp32': ('torch', 'float32', True),
    'torch compile bf16': ('torch', 'bfloat16', True),
}
WORKER_DTYPE = {('bigvis', 'float32'): 'float32', ('bigvis', 'bfloat16'): 'bfloat16',
                ('torch', 'float32'): 'fp32', ('torch', 'bfloat16'): 'bf16'}
RATIOS = {  # key -> (numerator row, denominator row); 'best' picks each side's fastest row.
    'fp32': ('bigvis fp32', 'torch fp32'),
    'bf16': ('bigvis bf16', 'torch bf16'),
    'fp32 vs compile': ('bigvis fp32', 'torch compile fp32'),
    'bf16 vs compile': ('bigvis bf16', 'torch compile bf16'),
    'best': ('bigvis best', 'torch best'),
}


def _cpu_busy_ticks():
  with open('/proc/stat') as f:
    fields = [int(x) for x in f.readline().split()[1:]]
  # user nice system idle iowait irq softirq steal ...
  return fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]


def _proc_ticks(pid):
  with open(f'/proc/{pid}/stat') as f:
    rest = f.read().rsplit(')', 1)[1].split()
  return int(rest[11]) + int(rest[12])  # utime + stime, all threads


def other_cpu(seconds=1.0):
  """Cores used by all processes over `seconds` (none of ours runs while this samples)."""
  b0, t0 = _cpu_busy_ticks(), time.perf_counter()
  time.sleep(seconds)
  return (_cpu_busy_ticks() - b0) / HZ / (time.perf_counter() - t0)


def wait_for_quiet(max_wait, threshold):
  """Waits (at most `max_wait` s) until other processes use under `threshold` cores; returns
  (seconds waited, last sampled load in cores)."""
  t0 = time.perf_counter()
  load = other_cpu()
  while load > threshold and time.perf_counter() - t0 < max_wait:
    load = other_cpu()
  return time.perf_counter() - t0, load


class Worker:
  """A row's process: starts, warms up, then runs `run N` commands over a line protocol."""

  def __init__(self, name, model, batch, args):
    side, precision, compiled = ROWS[name]
    self.name, self.side = name, side
    dtype = WORKER_DTYPE[side, precision]
    if side == 'bigvis':
      cmd = [sys.executable, os.path.join(BENCH, 'bigvis_vit.py')]
    else:
      cmd = [TORCH_PY, os.path.join(BENCH, 'torch_vit.py'), '--threads', str(args.threads)]
      cmd += ['--compile'] if compiled else []
    cmd += ['--worker', '--model', model, '--batch', str(batch), '--dtype', dtype,
            '--warmup', str(args.warmup)]
    self.log = tempfile.NamedTemporaryFile('w+', prefix=f'bench-{model}-{side}-{dtype}-',
                                           suffix='.log')
    env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
    t0 = time.perf_counter()
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, text=True, cwd=ROOT, env=env)
    try:
      self.setup = self._read()
    except Exception:
      self.close()
      raise
    self.setup['start_seconds'] = time.perf_counter() - t0  # imports + build + compile + warm-up

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith('@@'):
        return json.loads(line[2:])
    self.proc.wait()
    self.log.seek(0)
    tail = self.log.read().strip()[-3000:]
    last = tail.splitlines()[-1] if tail else ''
    for line in reversed(tail.splitlines()):  # The exception line, not JAX's footer.
      if 'Error' in line.split(':', 1)[0] or 'Exception' in line.split(':', 1)[0]:
        last = line
        break
    raise RuntimeError(f'{self.name} worker exited ({self.proc.returncode}): {last}\n{tail}')

  def peak_rss_gib(self):
    try:
      with open(f'/proc/{self.proc.pid}/status') as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM'))
      return kb / 2**20
    except (OSError, StopIteration):
      return None

  def run(self, steps):
    busy0, own0, t0 = _cpu_busy_ticks(), _proc_ticks(self.proc.pid), time.perf_counter()
    self.proc.stdin.write(f'run {steps}\n')
    self.proc.stdin.flush()
    out = self._read()
    wall = time.perf_counter() - t0
    busy, own = _cpu_busy_ticks() - busy0, _proc_ticks(self.proc.pid) - own0
    out['own_cores'] = own / HZ / wall
    out['other_cores'] = max(busy - own, 0) / HZ / wall  # CPU other processes used meanwhile.
    return out

  def close(self):
    worker_proc.stop(self.proc, self.log)


def measure_ceiling(args):
  """The matmul ceiling, in a child process on the project's venv (as the bigvis workers)."""
  cmd = [sys.executable, os.path.join(BENCH, 'matmul_ceiling.py'), '--json',
         '--samples', str(args.ceiling_samples), '--sample-seconds', str(args.ceiling_seconds)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  busy0, own0, t0 = _cpu_busy_ticks(), os.times(), time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
  own1 = os.times()
  if out.returncode:
    raise RuntimeError(f'matmul_ceiling.py failed ({out.returncode}): {out.stderr[-2000:]}')
  res = json.loads(out.stdout.strip().splitlines()[-1])
  wall = time.perf_counter() - t0
  own = (own1.children_user + own1.children_system - own0.children_user - own0.children_system)
  res['own_cores'] = own / wall
  res['other_cores'] = max((_cpu_busy_ticks() - busy0) / HZ - own, 0) / wall
  return res


def remeasure_ceiling(first, args, state):
  """Measures the ceiling again at the end; per precision the higher median of the two counts (a
  busy machine only ever lowers it). Both measurements stay in `runs`."""
  budget = max(0.0, min(args.idle_wait, args.idle_wait_total - state['waited']))
  waited, _ = wait_for_quiet(budget, args.idle_threshold)
  state['waited'] += waited
  print('measuring the matmul ceiling again ...', flush=True)
  try:
    second = measure_ceiling(args)
  except Exception as e:  # pylint: disable=broad-except
    second = dict(ceiling={}, ceiling_shape={}, error=str(e))
  second['waited_seconds'] = waited
  runs = [first, second]
  res = dict(ceiling={}, ceiling_shape={}, runs=runs, which={})
  for p in dict.fromkeys(p for r in runs for p in r['ceiling']):  # In measuring order.
    i = max(range(2), key=lambda i: runs[i]['ceiling'].get(p, 0))
    res['ceiling'][p], res['ceiling_shape'][p] = runs[i]['ceiling'][p], runs[i]['ceiling_shape'][p]
    res['which'][p] = ('start', 'end')[i]
  used = {('start', 'end').index(w) for w in res['which'].values()} or {0}
  res['other_cores'] = max(runs[i].get('other_cores', 0) for i in used)  # Of those that count.
  res['other_cores_per_run'] = [r.get('other_cores') for r in runs]
  res['waited_seconds'] = sum(r['waited_seconds'] for r in runs)
  if all(r.get('error') for r in runs):
    res['error'] = runs[0]['error']
  print('  ' + ', '.join(f'{p} {x / 1e9:.1f} GFLOP/s ({res["which"][p]})'
                         for p, x in res['ceiling'].items()), flush=True)
  return res


def summary(values):
  return dict(median=statistics.median(values), min=min(values), max=max(values), values=values)


def machine_info(threads):
  try:
    torch = subprocess.run([TORCH_PY, '-c', 'import torch; print(torch.__version__)'],
                           capture_output=True, text=True).stdout.strip() or None
  except OSError:
    torch = None
  info = machine.describe(('jax', 'jaxlib', 'flax', 'optax'), torch_threads=threads)
  info['versions']['torch'] = torch
  return info


def fmt(x, digits=2):
  return '—' if x is None else f'{x:.{digits}f}'


NO_BF16 = ('this CPU has neither AVX-512 BF16 nor AMX, and torch 2.13 then runs bf16 matmuls '
           'on a slow path (1.4 GFLOP/s at 512x512 on the AVX2-only dev CPU, two orders of '
           'magnitude below float32), so these rows would take hours; --rows runs them anyway')


def native_bf16():
  """Whether the CPU has bf16 matmul instructions (the flags torch's oneDNN kernels use)."""
  with open('/proc/cpuinfo') as f:
    flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
  return bool({'avx512_bf16', 'amx_bf16'} & set(flags))


def write_markdown(path, res):
  m, c, ceil = res['machine'], res['config'], res['ceiling']
  v = m['versions']
  cf = ceil.get('ceiling', {})
  usable = m.get('cores_usable', m['cores'])
  cores = f'{m["cores"]} cores' + (f', this run pinned to {usable}' if usable != m['cores'] else '')
  lines = [
      '# Training step at 224 px: bigvis beside PyTorch, MFU against the measured matmul ceiling',
      '',
      f'{res["date"]}: {m["cpu"]}, {cores}, jax {v["jax"]}, flax {v["flax"]}, '
      f'torch {v["torch"]} with {m["torch_threads"]} intra-op thread'
      f'{"s" * (m["torch_threads"] != 1)}. {c["repeats"]} repeats per row (after {c["warmup"]} '
      f'warm-up steps), '
      f'rows alternated. Command: `{res["command"]}`',
      '',
      'Matmul ceiling (jit `jnp.dot`, median GFLOP/s; measured '
      + ('at the start and at the end of this run, the higher counts): ' if 'runs' in ceil
         else 'at the start of this run): ')
      + ', '.join(f'{p} {fmt(x / 1e9, 1)} ({ceil["ceiling_shape"][p]}, '
                  f'{ceil.get("which", {}).get(p, "start")})' for p, x in cf.items())
      + '; other processes used up to '
      + f'{fmt(ceil.get("other_cores"))} cores meanwhile.',
  ]
  if c.get('rows_skipped'):
    for why in dict.fromkeys(c['rows_skipped'].values()):
      names = [n for n, w in c['rows_skipped'].items() if w == why]
      lines += ['', f'Not run: {", ".join(names)}: {why}.']
  for model, mr in res['models'].items():
    mc = mr['config']
    fl = mc.get('train_flops_per_image')
    tfl = mc.get('torch_train_flops_per_image')
    lines += [
        '', f'## {mc["title"]}, batch {mc["batch"]}, {mc["steps"]} timed steps per segment', '',
        f'Training FLOPs per image (3 x forward matmuls + convs): {fmt(fl and fl / 1e9)} G '
        f'({mc.get("flops_source", "—")}); torch FlopCounter: {fmt(tfl and tfl / 1e9)} G. '
        f'Params: ' + ', '.join(f'{k} {p:,}' for k, p in mc.get('params', {}).items()) + '.',
        '',
        '| row | images/s median | min | max | clean median (n) | best step | GFLOP/s | MFU '
        '| ceiling | step s | start s | peak RSS GiB | other cores (max) |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|',
    ]
    for name, r in mr['rows'].items():
      if 'error' in r:
        err = r['error'].splitlines()[0][:100].replace('|', '/')
        lines.append(f'| {name} | failed: {err} | | | | | | | | | | | |')
        continue
      if 'images_per_sec' not in r:
        lines.append(f'| {name} | — (no timed step) | | | | | | | | | | | |')
        continue
      ips, gf = r['images_per_sec'], r.get('gflops_per_sec')
      mfu, clean = r.get('mfu'), r['clean_images_per_sec']
      clean = f'{clean["median"]:.2f} ({len(clean["values"])})' if clean else '— (0)'
      lines.append(
          f'| {name} | {fmt(ips["median"])} | {fmt(ips["min"])} | {fmt(ips["max"])} | '
          f'{clean} | {fmt(r["best_step_images_per_sec"])} | '
          f'{fmt(gf and gf["median"], 1)} | {fmt(mfu and 100 * mfu, 0)}% | {r["precision"]} | '
          f'{fmt(r["step_seconds"]["median"])} | {fmt(r["start_seconds"], 1)} | '
          f'{fmt(r.get("peak_rss_gib"), 1)} | {fmt(r["other_cores"]["max"])} |')
    lines += ['', '| ratio bigvis / torch | rows | of medians | paired per repeat: median | min '
              '| max | of clean medians | of best steps |',
              '|---|---|---:|---:|---:|---:|---:|---:|']
    for key, r in mr['ratios'].items():
      if 'of_medians' not in r:
        lines.append(f'| {key} | {r["rows"]} | — | — | — | — | — | — |')
      else:
        p = r['paired']
        lines.append(f'| {key} | {r["rows"]} | {fmt(r["of_medians"])} | {fmt(p["median"])} | '
                     f'{fmt(p["min"])} | {fmt(p["max"])} | {fmt(r["of_clean_medians"])} | '
                     f'{fmt(r["of_best_steps"])} |')
  if ceil.get('error'):
    lines += ['', f'Matmul ceiling failed: {ceil["error"].splitlines()[0]}']
  if res['notes']:
    lines += ['', '## Notes', ''] + [f'- {n}' for n in res['notes']]
  fileio.write_text_atomic(path, '\n'.join(lines) + '\n')


def _ints(text, models, what):
  """'32' (all models) or 'vit-ti16=32,resnet50=8' -> {model: int}, defaults from MODELS."""
  out = {m: MODELS[m][what] for m in models}
  for part in filter(None, (x.strip() for x in (text or '').split(','))):
    if '=' in part:
      k, val = part.split('=', 1)
      if k not in MODELS:
        raise SystemExit(f'--{what}: unknown model {k!r}; known: {list(MODELS)}')
      if k in out:
        out[k] = int(val)
    else:
      out = {m: int(part) for m in models}
  return out


def run_model(model, batch, steps, names, args, state):
  """Starts `model`'s row workers, runs the alternated repeats, closes them; returns its rows."""
  workers, errors = {}, {}
  segments = {}
  try:
    for name in names:  # Start one at a time, so compiles don't compete.
      print(f'[{model}] starting {name} ...', flush=True)
      try:
        workers[name] = Worker(name, model, batch, args)
        print(f'  ready in {workers[name].setup["start_seconds"]:.1f} s', flush=True)
      except Exception as e:  # pylint: disable=broad-except
        errors[name] = str(e)
        print(f'  FAILED: {str(e).splitlines()[0]}', flush=True)
    segments = {name: [] for name in workers}
    order = list(workers)
    for rep in range(args.repeats):
      for name in (order if rep % 2 == 0 else order[::-1]):
        if name in errors:
          continue
        time.sleep(args.pause)  # Let the previous worker's spinning threads go idle.
        budget = max(0.0, min(args.idle_wait, args.idle_wait_total - state['waited']))
        waited, load = wait_for_quiet(budget, args.idle_threshold)
        state['waited'] += waited
        try:
          seg = workers[name].run(steps)
        except Exception as e:  # pylint: disable=broad-except  (a worker died mid-run)
          errors[name] = f'failed in repeat {rep}: {e}'
          print(f'  {name} FAILED: {str(e).splitlines()[0]}', flush=True)
          continue
        seg.update(repeat=rep, waited_seconds=waited, load_before=load)
        segments[name].append(seg)
        print(f'[{model}] repeat {rep} {name}: '
              f'{steps * batch / sum(seg["step_seconds"]):.2f} images/s '
              f'(other CPU {seg["other_cores"]:.2f} cores)', flush=True)
  finally:
    rss = {name: w.peak_rss_gib() for name, w in workers.items()}
    for w in workers.values():
      w.close()

  rows = {}
  for name in names:
    side, precision, compiled = ROWS[name]
    base = dict(side=side, precision=precision, compile=compiled)
    if name in errors:
      rows[name] = dict(base, error=errors[name])
      if name in workers:
        rows[name]['setup'] = workers[name].setup
      continue
    w, segs = workers[name], segments[name]
    rows[name] = dict(
        base, start_seconds=w.setup['start_seconds'], setup=w.setup, peak_rss_gib=rss[name],
        final_loss=segs[-1]['loss'] if segs else None,
        all_step_seconds=[s['step_seconds'] for s in segs],  # [repeat][step]
        other_cores=summary([s['other_cores'] for s in segs]),
        own_cores=summary([s['own_cores'] for s in segs]),
        waited_seconds=sum(s['waited_seconds'] for s in segs))
  setups = [w.setup for w in workers.values()]
  bigvis_flops = next((x['train_flops'] for x in setups if x['side'] == 'bigvis'), None)
  torch_fwd = next((x['fwd_flops'] for x in setups if x['side'] == 'torch'), None)
  config = dict(
      title=MODELS[model]['title'], batch=batch, steps=steps, rows=names,
      train_flops_per_image=bigvis_flops and bigvis_flops / batch,
      flops_source='bigvis.metrics.matmul_flops' if bigvis_flops else None,
      torch_train_flops_per_image=torch_fwd and 3 * torch_fwd / batch,
      params={s: x['params'] for s, x in ((x['side'], x) for x in setups)})
  if not bigvis_flops and torch_fwd:  # No bigvis row ran: fall back on torch's count.
    config['train_flops_per_image'] = config['torch_train_flops_per_image']
    config['flops_source'] = 'torch.utils.flop_counter (no bigvis row ran)'
  return dict(config=config, rows=rows, errors=errors)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument('--models', default=','.join(MODELS), help=f'comma list of {list(MODELS)}')
  ap.add_argument('--batch', default=None,
                  help='one batch for all models, or per model: "vit-ti16=32,resnet50=8" '
                       '(default ' + ', '.join(f'{m} {x["batch"]}' for m, x in MODELS.items())
                       + ')')
  ap.add_argument('--steps', default=None,
                  help='timed steps per row per repeat, one number or per model as --batch '
                       '(default ' + ', '.join(f'{m} {x["steps"]}' for m, x in MODELS.items())
                       + ')')
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps at start (incl. compile)')
  ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                  help='torch intra-op threads (JAX uses all cores)')
  ap.add_argument('--rows', default=None,
                  help=f'comma list of {list(ROWS)}; default all, less the torch bf16 rows on a '
                       'CPU without bf16 matmul instructions (see native_bf16)')
  ap.add_argument('--pause', type=float, default=0.5, help='seconds idle between segments')
  ap.add_argument('--idle-wait', type=float, default=30,
                  help='before each segment, wait up to this many seconds for other processes '
                       'to use under --idle-threshold cores (a shared machine); 0 = no wait')
  ap.add_argument('--idle-threshold', type=float, default=0.25)
  ap.add_argument('--idle-wait-total', type=float, default=180,
                  help='cap on all those waits together, so a busy machine still finishes')
  ap.add_argument('--ceiling-samples', type=int, default=7, help='matmul ceiling: samples')
  ap.add_argument('--ceiling-seconds', type=float, default=0.3,
                  help='matmul ceiling: seconds per sample')
  ap.add_argument('--out', default=None, help='output prefix (default bench/results/train_step)')
  ap.add_argument('--quick', action='store_true',
                  help='smoke run: vit-ti16 only (unless --models), batch 4, 1 step, 1 repeat, '
                       '1 warm-up, short ceiling; writes *_quick.*')
  ap.add_argument('--render', metavar='JSON',
                  help='only re-derive the figures of a results JSON and rewrite it and its .md')
  args = ap.parse_args()
  if args.render:
    with open(args.render) as f:
      res = json.load(f)
    write_results(args.render[:-len('.json')] if args.render.endswith('.json') else args.render,
                  derive(res))
    return 0
  if args.quick:
    if '--models' not in sys.argv:
      args.models = 'vit-ti16'  # ResNet-50's bigvis and torch.compile builds take minutes.
    args.batch, args.steps = args.batch or '4', args.steps or '1'
    args.repeats, args.warmup, args.idle_wait_total = 1, 1, 30
    args.ceiling_samples, args.ceiling_seconds = 3, 0.2
  out = args.out or os.path.join(BENCH, 'results', 'train_step' + ('_quick' if args.quick else ''))
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  skipped = {}
  if args.rows is None:
    names = list(ROWS)
    if not native_bf16():
      skipped = {n: NO_BF16 for n in names if ROWS[n][0] == 'torch' and ROWS[n][1] == 'bfloat16'}
      names = [n for n in names if n not in skipped]
  else:
    names = [n.strip() for n in args.rows.split(',') if n.strip()]
  for m in models:
    if m not in MODELS:
      ap.error(f'unknown model {m!r}; known: {list(MODELS)}')
  for n in names:
    if n not in ROWS:
      ap.error(f'unknown row {n!r}; known: {list(ROWS)}')
  batches = _ints(args.batch, models, 'batch')
  steps = _ints(args.steps, models, 'steps')
  if any(ROWS[n][0] == 'torch' for n in names):
    ensure_torch_venv()

  t_start = time.perf_counter()
  load_before = os.getloadavg()
  state = dict(waited=0.0)
  waited, _ = wait_for_quiet(max(0.0, min(args.idle_wait, args.idle_wait_total)),
                             args.idle_threshold)
  state['waited'] += waited
  print('measuring the matmul ceiling ...', flush=True)
  try:
    ceiling = measure_ceiling(args)
    print('  ' + ', '.join(f'{p} {x / 1e9:.1f} GFLOP/s' for p, x in ceiling['ceiling'].items()),
          flush=True)
  except Exception as e:  # pylint: disable=broad-except  (rows still run; MFU shows as —)
    ceiling = dict(ceiling={}, ceiling_shape={}, error=str(e))
    print(f'  FAILED: {e}', flush=True)
  ceiling['waited_seconds'] = waited
  results = {}
  for model in models:
    results[model] = run_model(model, batches[model], steps[model], names, args, state)
  ceiling = remeasure_ceiling(ceiling, args, state)

  res = dict(
      date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      command=' '.join(['python', os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
      machine=dict(machine_info(args.threads), load_before=load_before,
                   load_after=os.getloadavg()),
      config=dict(image_size=224, num_classes=1000, vit_pool_type='tok',
                  loss='softmax cross-entropy (integer labels)',
                  optimizer='AdamW lr 1e-3 b=(0.9,0.999) wd 1e-4 on kernels, clip global norm 1',
                  models=models, rows=names, rows_skipped=skipped, repeats=args.repeats, warmup=args.warmup,
                  pause_seconds=args.pause, idle_wait=args.idle_wait,
                  idle_wait_total=args.idle_wait_total, idle_threshold=args.idle_threshold),
      ceiling=ceiling, models=results, wall_seconds=time.perf_counter() - t_start)
  write_results(out, derive(res))
  print(f'wrote {out}.json and {out}.md ({res["wall_seconds"]:.0f} s)')
  return 1 if any(mr['errors'] for mr in results.values()) else 0


def write_results(out, res):
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fileio.write_text_atomic(out + '.json', json.dumps(res, indent=2))
  write_markdown(out + '.md', res)
  with open(out + '.md') as f:
    print(f.read())


def _ratio(ra, rb):
  ca, cb = ra['clean_images_per_sec'], rb['clean_images_per_sec']
  return dict(
      of_medians=ra['images_per_sec']['median'] / rb['images_per_sec']['median'],
      paired=summary([x / y for x, y in zip(ra['images_per_sec']['values'],
                                            rb['images_per_sec']['values'])]),
      of_clean_medians=ca['median'] / cb['median'] if ca and cb else None,
      of_best_steps=ra['best_step_images_per_sec'] / rb['best_step_images_per_sec'])


def derive(res):
  """Adds the summaries, MFUs, ratios and notes to `res`, from each row's raw step times."""
  c, ceiling = res['config'], res['ceiling'].get('ceiling', {})
  threshold = c['idle_threshold']
  notes = []
  for model, mr in res['models'].items():
    mc, rows = mr['config'], mr['rows']
    batch, title = mc['batch'], mc['title']
    for r in rows.values():
      if 'error' in r or not r['all_step_seconds']:
        continue
      segs = r['all_step_seconds']
      ips = [len(s) * batch / sum(s) for s in segs]
      r['images_per_sec'] = summary(ips)
      r['step_seconds'] = summary([sum(s) / len(s) for s in segs])
      r['best_step_images_per_sec'] = batch / min(t for s in segs for t in s)
      clean = [x for x, o in zip(ips, r['other_cores']['values']) if o <= threshold]
      r['clean_images_per_sec'] = summary(clean) if clean else None
      if mc.get('train_flops_per_image'):
        r['gflops_per_sec'] = summary([x * mc['train_flops_per_image'] / 1e9 for x in ips])
        peak = ceiling.get(r['precision'])
        r['ceiling_flops_per_sec'] = peak
        r['mfu'] = peak and r['gflops_per_sec']['median'] * 1e9 / peak

    timed = {n: r for n, r in rows.items() if 'images_per_sec' in r}
    best = {side: max((n for n, r in timed.items() if r['side'] == side),
                      key=lambda n: timed[n]['images_per_sec']['median'], default=None)
            for side in ('bigvis', 'torch')}
    ratios = {}
    for key, (a, b) in RATIOS.items():
      if key == 'best':
        a, b = best['bigvis'], best['torch']
      entry = dict(rows=f'{a} / {b}')
      if a in timed and b in timed:
        entry.update(_ratio(timed[a], timed[b]))
      elif a not in rows and b not in rows and key != 'best':
        continue  # Neither row was asked for.
      ratios[key] = entry
    mr['ratios'] = ratios

    params = mc.get('params', {})
    if 'bigvis' in params and 'torch' in params and params['bigvis'] != params['torch']:
      notes.append(f'{title}: param counts differ: bigvis {params["bigvis"]}, '
                   f'torch {params["torch"]}')
    fl, tfl = mc.get('train_flops_per_image'), mc.get('torch_train_flops_per_image')
    if fl and tfl and abs(fl / tfl - 1) > 0.02:
      notes.append(f'{title}: FLOPs per image differ by {100 * (tfl / fl - 1):+.1f}% between '
                   f'torch\'s FlopCounter ({tfl / 1e9:.2f} G) and bigvis.metrics.matmul_flops '
                   f'({fl / 1e9:.2f} G, used for every row).')
    for name, r in rows.items():
      if 'images_per_sec' in r and r['images_per_sec']['min'] < 0.8 * r['images_per_sec']['max']:
        notes.append(f'{title} {name}: repeats vary by more than 20% (min '
                     f'{r["images_per_sec"]["min"]:.2f}, max {r["images_per_sec"]["max"]:.2f} '
                     'images/s).')
      if 'error' in r:
        notes.append(f'{title} {name} failed: {r["error"].splitlines()[0] if r["error"] else ""}')
      stats = r.get('setup', {}).get('compile_stats')
      if stats and stats.get('graph_breaks'):
        notes.append(f'{title} {name}: torch.compile made {stats["graphs"]} graphs with '
                     f'{stats["graph_breaks"]} graph breaks.')

  all_rows = [r for mr in res['models'].values() for r in mr['rows'].values()]
  busiest = max((r['other_cores']['max'] for r in all_rows if 'other_cores' in r), default=0)
  if busiest > threshold:
    notes.insert(0, f'other processes used up to {busiest:.2f} of {res["machine"]["cores"]} '
                 'cores during a timed segment: those repeats are slower and noisier than on an '
                 f'idle machine. "clean" counts only repeats where they used at most {threshold} '
                 'cores.')
  if res['ceiling'].get('other_cores', 0) > threshold:
    notes.insert(0, 'other processes used up to {:.2f} cores while the matmul ceiling was '
                 'measured: the ceiling may be low and every MFU high.'.format(
                     res['ceiling']['other_cores']))
  waited = sum(r.get('waited_seconds', 0) for r in all_rows) + res['ceiling'].get(
      'waited_seconds', 0)  # The ceiling's waits: both measurements.
  if waited > 1:
    notes.append(f'waited {waited:.0f} s in all for other processes to quiet down before '
                 'segments.')
  res['notes'] = notes
  return res


if __name__ == '__main__':
  sys.exit(main())
