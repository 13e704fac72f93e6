"""Training throughput of bigvis's ViT-Ti/16 at 224 px beside a plain PyTorch eager ViT-Ti/16.

    .venv/bin/python bench/train_step.py            # ~6-8 min on the 2-core dev CPU
    .venv/bin/python bench/train_step.py --quick    # smoke run, ~1-2 min

Four rows, each a long-lived worker process that compiles / warms up once: bigvis float32,
bigvis bfloat16 compute (`config.model.dtype`), torch eager float32, torch bf16 autocast. Then
`--repeats` rounds; in each round every worker runs `--steps` timed steps in turn, the order
reversed every other round, so drift (other work on the machine, thermal) hits all rows alike. Only
one worker runs at a time; the others sleep on a pipe. Writes `<out>.json` and `<out>.md`
(default bench/results/train_step). See bench/README.md for the columns.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
TORCH_VENV = os.path.join(BENCH, '.torch-venv')
TORCH_PY = os.path.join(TORCH_VENV, 'bin', 'python')
TORCH_REQ = ['torch==2.13.0', 'numpy']
HZ = os.sysconf('SC_CLK_TCK')

ROWS = {  # name -> (side, dtype flag for the worker)
    'bigvis fp32': ('bigvis', 'float32'),
    'bigvis bf16': ('bigvis', 'bfloat16'),
    'torch fp32': ('torch', 'fp32'),
    'torch bf16': ('torch', 'bf16'),
}
RATIOS = {'fp32': ('bigvis fp32', 'torch fp32'), 'bf16': ('bigvis bf16', 'torch bf16')}


def ensure_torch_venv():
  if os.path.exists(TORCH_PY):
    try:
      subprocess.run([TORCH_PY, '-c', 'import torch'], check=True, capture_output=True)
      return
    except subprocess.CalledProcessError:
      pass
  print(f'Making {TORCH_VENV} ({" ".join(TORCH_REQ)}) ...', flush=True)
  base = shutil.which('python3.11') or shutil.which('python3')
  subprocess.run([base, '-m', 'venv', TORCH_VENV], check=True)
  subprocess.run([TORCH_PY, '-m', 'pip', 'install', '--quiet', *TORCH_REQ], check=True)


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

  def __init__(self, name, side, dtype, args):
    self.name, self.side, self.dtype = name, side, dtype
    if side == 'bigvis':
      cmd = [sys.executable, os.path.join(BENCH, 'bigvis_vit.py')]
    else:
      cmd = [TORCH_PY, os.path.join(BENCH, 'torch_vit.py'), '--threads', str(args.threads)]
    cmd += ['--worker', '--batch', str(args.batch), '--dtype', dtype, '--warmup', str(args.warmup)]
    self.log = tempfile.NamedTemporaryFile('w+', prefix=f'bench-{side}-{dtype}-', suffix='.log')
    env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
    t0 = time.perf_counter()
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, text=True, cwd=ROOT, env=env)
    self.setup = self._read()
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
      if 'Error' in line.split(':', 1)[0]:
        last = line
        break
    raise RuntimeError(f'{self.name} worker exited ({self.proc.returncode}): {last}\n{tail}')

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
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write('quit\n')
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()
    self.log.close()


def summary(values):
  return dict(median=statistics.median(values), min=min(values), max=max(values), values=values)


def machine_info(threads):
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
              if line.startswith('model name')), platform.processor())
  mem = next((int(line.split()[1]) / 2**20 for line in open('/proc/meminfo')
              if line.startswith('MemTotal')), None)
  versions = {}
  for pkg in ('jax', 'jaxlib', 'flax', 'optax'):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = None
  try:
    versions['torch'] = subprocess.run([TORCH_PY, '-c', 'import torch; print(torch.__version__)'],
                                       capture_output=True, text=True).stdout.strip() or None
  except OSError:
    versions['torch'] = None
  versions['python'] = platform.python_version()
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or None
  except OSError:
    commit = None
  return dict(cpu_model=cpu, cores=os.cpu_count(), cores_usable=len(os.sched_getaffinity(0)),
              torch_threads=threads, mem_gib=round(mem, 1) if mem else None,
              platform=platform.platform(), hostname=platform.node(), git_commit=commit,
              versions=versions)


def fmt(x, digits=2):
  return '—' if x is None else f'{x:.{digits}f}'


def write_markdown(path, res):
  m, c = res['machine'], res['config']
  v = m['versions']
  lines = [
      f'# ViT-Ti/16 training step, 224 px, batch {c["batch"]}',
      '',
      f'{res["date"]}: {m["cpu_model"]}, {m["cores"]} cores, jax {v["jax"]}, flax {v["flax"]}, '
      f'torch {v["torch"]}. {c["steps"]} timed steps x {c["repeats"]} repeats per row (after '
      f'{c["warmup"]} warm-up steps), rows alternated. Command: `{res["command"]}`',
      '',
      '| row | images/s median | min | max | clean median (n) | best step | GFLOP/s | MFU '
      '| step s | start s | other cores (max) |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for name, r in res['rows'].items():
    if 'error' in r:
      lines.append(f'| {name} | failed: {r["error"].splitlines()[0][:80]} | | | | | | | | | |')
      continue
    ips, gf = r['images_per_sec'], r.get('gflops_per_sec')
    mfu, clean = r.get('mfu'), r['clean_images_per_sec']
    clean = f'{clean["median"]:.2f} ({len(clean["values"])})' if clean else '— (0)'
    lines.append(
        f'| {name} | {fmt(ips["median"])} | {fmt(ips["min"])} | {fmt(ips["max"])} | '
        f'{clean} | {fmt(r["best_step_images_per_sec"])} | '
        f'{fmt(gf and gf["median"], 1)} | {fmt(mfu and 100 * mfu, 0)}% | '
        f'{fmt(r["step_seconds"]["median"])} | {fmt(r["start_seconds"], 1)} | '
        f'{fmt(r["other_cores"]["max"])} |')
  lines += ['', '| ratio bigvis / torch | of medians | paired per repeat: median | min | max '
            '| of clean medians | of best steps |', '|---|---:|---:|---:|---:|---:|---:|']
  for key, r in res['ratios'].items():
    if r is None:
      lines.append(f'| {key} | — | — | — | — | — | — |')
    else:
      p = r['paired']
      lines.append(f'| {key} | {fmt(r["of_medians"])} | {fmt(p["median"])} | {fmt(p["min"])} | '
                   f'{fmt(p["max"])} | {fmt(r["of_clean_medians"])} | {fmt(r["of_best_steps"])} |')
  if res['notes']:
    lines += [''] + [f'- {n}' for n in res['notes']]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--steps', type=int, default=5, help='timed steps per row per repeat')
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps at start (incl. compile)')
  ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)),
                  help='torch intra-op threads (JAX uses all cores)')
  ap.add_argument('--rows', default=','.join(ROWS), help=f'comma list of {list(ROWS)}')
  ap.add_argument('--pause', type=float, default=0.5, help='seconds idle between segments')
  ap.add_argument('--idle-wait', type=float, default=30,
                  help='before each segment, wait up to this many seconds for other processes '
                       'to use under --idle-threshold cores (a shared machine); 0 = no wait')
  ap.add_argument('--idle-threshold', type=float, default=0.25)
  ap.add_argument('--idle-wait-total', type=float, default=120,
                  help='cap on all those waits together, so a busy machine still finishes')
  ap.add_argument('--peak-flops', type=float, default=None,
                  help='for MFU; default bigvis config.peak_flops_per_device (140e9)')
  ap.add_argument('--out', default=None, help='output prefix (default bench/results/train_step)')
  ap.add_argument('--quick', action='store_true',
                  help='smoke run: batch 8, 2 steps, 1 repeat, 1 warm-up; writes *_quick.*')
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
    args.batch, args.steps, args.repeats, args.warmup = 8, 2, 1, 1
  out = args.out or os.path.join(BENCH, 'results', 'train_step' + ('_quick' if args.quick else ''))
  names = [n.strip() for n in args.rows.split(',') if n.strip()]
  for n in names:
    if n not in ROWS:
      ap.error(f'unknown row {n!r}; known: {list(ROWS)}')
  if args.peak_flops is None:
    try:
      sys.path.insert(0, ROOT)
      from bigvis import config as config_lib
      args.peak_flops = config_lib.defaults().peak_flops_per_device
    except Exception:  # pylint: disable=broad-except
      args.peak_flops = 140e9
  if any(ROWS[n][0] == 'torch' for n in names):
    ensure_torch_venv()

  t_start = time.perf_counter()
  load_before = os.getloadavg()
  workers, errors = {}, {}
  try:
    for name in names:  # Start one at a time, so compiles don't compete.
      side, dtype = ROWS[name]
      print(f'starting {name} ...', flush=True)
      try:
        workers[name] = Worker(name, side, dtype, args)
        print(f'  ready in {workers[name].setup["start_seconds"]:.1f} s', flush=True)
      except Exception as e:  # pylint: disable=broad-except
        errors[name] = str(e)
        print(f'  FAILED: {e}', flush=True)
    segments = {name: [] for name in workers}
    order = list(workers)
    total_waited = 0.0
    for rep in range(args.repeats):
      for name in (order if rep % 2 == 0 else order[::-1]):
        time.sleep(args.pause)  # Let the previous worker's spinning threads go idle.
        budget = max(0.0, min(args.idle_wait, args.idle_wait_total - total_waited))
        waited, load = wait_for_quiet(budget, args.idle_threshold)
        total_waited += waited
        seg = workers[name].run(args.steps)
        seg.update(repeat=rep, waited_seconds=waited, load_before=load)
        segments[name].append(seg)
        print(f'repeat {rep} {name}: {args.steps * args.batch / sum(seg["step_seconds"]):.2f} '
              f'images/s (other CPU {seg["other_cores"]:.2f} cores)', flush=True)
  finally:
    for w in workers.values():
      w.close()

  train_flops = next((w.setup['train_flops'] for w in workers.values() if w.side == 'bigvis'),
                     None)
  rows = {}
  for name in names:
    if name in errors:
      rows[name] = dict(side=ROWS[name][0], dtype=ROWS[name][1], error=errors[name])
      continue
    w, segs = workers[name], segments[name]
    rows[name] = dict(
        side=w.side, dtype=w.dtype, start_seconds=w.setup['start_seconds'], setup=w.setup,
        final_loss=segs[-1]['loss'] if segs else None,
        all_step_seconds=[s['step_seconds'] for s in segs],  # [repeat][step]
        other_cores=summary([s['other_cores'] for s in segs]),
        own_cores=summary([s['own_cores'] for s in segs]),
        waited_seconds=sum(s['waited_seconds'] for s in segs))

  res = dict(
      date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      command=' '.join(['python', os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
      machine=dict(machine_info(args.threads), load_before=load_before,
                   load_after=os.getloadavg()),
      config=dict(model='ViT-Ti/16', image_size=224, num_classes=1000, pool_type='tok',
                  loss='softmax cross-entropy (integer labels)',
                  optimizer='AdamW lr 1e-3 b=(0.9,0.999) wd 1e-4 on kernels, clip global norm 1',
                  batch=args.batch, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
                  rows=names, pause_seconds=args.pause, idle_wait=args.idle_wait,
                  idle_wait_total=args.idle_wait_total,
                  idle_threshold=args.idle_threshold, peak_flops=args.peak_flops,
                  train_flops_per_image=train_flops and train_flops / args.batch,
                  params={w.side: w.setup['params'] for w in workers.values()}),
      rows=rows, errors=errors, wall_seconds=time.perf_counter() - t_start)
  write_results(out, derive(res))
  print(f'wrote {out}.json and {out}.md ({res["wall_seconds"]:.0f} s)')
  return 1 if errors else 0


def write_results(out, res):
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + '.json', 'w') as f:
    json.dump(res, f, indent=2)
  write_markdown(out + '.md', res)
  with open(out + '.md') as f:
    print(f.read())


def derive(res):
  """Adds the summaries, ratios and notes to `res`, from each row's raw step times."""
  c, rows = res['config'], res['rows']
  batch, threshold = c['batch'], c['idle_threshold']
  for r in rows.values():
    if 'error' in r:
      continue
    segs = r['all_step_seconds']
    ips = [len(s) * batch / sum(s) for s in segs]
    r['images_per_sec'] = summary(ips)
    r['step_seconds'] = summary([sum(s) / len(s) for s in segs])
    r['best_step_images_per_sec'] = batch / min(t for s in segs for t in s)
    clean = [x for x, o in zip(ips, r['other_cores']['values']) if o <= threshold]
    r['clean_images_per_sec'] = summary(clean) if clean else None
    if c.get('train_flops_per_image'):
      r['gflops_per_sec'] = summary([x * c['train_flops_per_image'] / 1e9 for x in ips])
      r['mfu'] = r['gflops_per_sec']['median'] * 1e9 / c['peak_flops']

  ratios = {}
  for key, (a, b) in RATIOS.items():
    ra, rb = rows.get(a, {}), rows.get(b, {})
    if 'images_per_sec' not in ra or 'images_per_sec' not in rb:
      ratios[f'{key}: {a} / {b}'] = None
      continue
    ca, cb = ra['clean_images_per_sec'], rb['clean_images_per_sec']
    ratios[f'{key}: {a} / {b}'] = dict(
        of_medians=ra['images_per_sec']['median'] / rb['images_per_sec']['median'],
        paired=summary([x / y for x, y in zip(ra['images_per_sec']['values'],
                                              rb['images_per_sec']['values'])]),
        of_clean_medians=ca['median'] / cb['median'] if ca and cb else None,
        of_best_steps=ra['best_step_images_per_sec'] / rb['best_step_images_per_sec'])
  res['ratios'] = ratios

  notes = []
  params = c.get('params', {})
  if 'bigvis' in params and 'torch' in params and params['bigvis'] != params['torch']:
    notes.append(f'param counts differ: bigvis {params["bigvis"]}, torch {params["torch"]}')
  busiest = max((r['other_cores']['max'] for r in rows.values() if 'other_cores' in r), default=0)
  if busiest > threshold:
    notes.append(f'other processes used up to {busiest:.2f} of {res["machine"]["cores"]} cores '
                 'during a timed segment: those repeats are slower and noisier than on an idle '
                 f'machine. "clean" counts only repeats where they used at most {threshold} cores.')
  for name, r in rows.items():
    if 'images_per_sec' in r and r['images_per_sec']['min'] < 0.8 * r['images_per_sec']['max']:
      notes.append(f'{name}: repeats vary by more than 20% (min {r["images_per_sec"]["min"]:.2f}, '
                   f'max {r["images_per_sec"]["max"]:.2f} images/s).')
  waited = sum(r.get('waited_seconds', 0) for r in rows.values())
  if waited > 1:
    notes.append(f'waited {waited:.0f} s in all for other processes to quiet down before segments.')
  for name, e in res.get('errors', {}).items():
    notes.append(f'{name} failed to start: {e.splitlines()[0] if e else e}')
  res['notes'] = notes
  return res


if __name__ == '__main__':
  sys.exit(main())
