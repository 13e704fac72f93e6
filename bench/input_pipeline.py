"""Input pipeline: decode + augment + batch of record shards, Grain beside a torch DataLoader.

    .venv/bin/python bench/input_pipeline.py            # ~6-8 min on the 2-core dev CPU
    .venv/bin/python bench/input_pipeline.py --quick    # smoke run, ~2-3 min

Runs `bigvis.data.make_dataset` (what the trainer runs) over real records, the emoji corpus
(prepared with `tools/prepare.py emoji` when missing) and the synthetic shapes, with
`decode|random_resized_crop(S)|flip_lr|value_range(-1, 1)` at S = 224 and 64 px and worker_count
0 and 2; beside each such row, a PyTorch DataLoader doing the same work over the same shards with
num_workers 0 and 2 (bench/torch_input.py, a worker process in bench/.torch-venv, which
bench/torch_env.py makes or completes). Each row runs `--repeats` times, rows in reversed order
every other repeat, so a Grain row and its torch row always run back to back; each run builds a
fresh pipeline, takes `--warmup` batches untimed, then reads batches for `--seconds`.
Writes `<out>.json` and `<out>.md` (default bench/results/input_pipeline). See bench/README.md.
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

import grain

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import machine  # noqa: E402  (bench/machine.py: this script's folder is on sys.path)
import worker_proc  # noqa: E402  (bench/worker_proc.py)
from torch_env import TORCH_PY, ensure_torch_venv, project_pins  # noqa: E402

from bigvis import data, fileio, records, synthetic  # noqa: E402

HZ = os.sysconf('SC_CLK_TCK')
PP = 'decode|random_resized_crop({size})|flip_lr|value_range(-1, 1)'
GRAIN, TORCH = 'grain', 'torch DataLoader'
PIPELINES = {'grain': GRAIN, 'torch': TORCH}  # --pipelines names -> row names
TORCH_EXTRA = ('array-record', 'msgpack', 'pillow')  # torch_input.py's readers, pinned as here


def _busy_ticks():
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal


def _tree_ticks(root, exclude=()):
  """CPU ticks of process `root` and its live descendants, less the subtrees of `exclude`.

  Grain's rows count this process and its worker processes (not the idle torch worker);
  torch rows count the torch worker process and its DataLoader workers.
  """
  stats = {}
  for pid in os.listdir('/proc'):
    if pid.isdigit():
      try:
        with open(f'/proc/{pid}/stat') as f:
          rest = f.read().rsplit(')', 1)[1].split()
      except OSError:
        continue
      stats[int(pid)] = (int(rest[1]), int(rest[11]) + int(rest[12]))  # ppid, utime + stime
  ours, grew, exclude = {root}, True, set(exclude)
  while grew:
    new = {p for p, (ppid, _) in stats.items() if ppid in ours} - ours - exclude
    ours |= new
    grew = bool(new)
  return sum(stats[p][1] for p in ours if p in stats)


def other_cores(seconds=1.0):
  b0, t0 = _busy_ticks(), time.perf_counter()
  time.sleep(seconds)
  return (_busy_ticks() - b0) / HZ / (time.perf_counter() - t0)


def ensure_corpora(data_dir, shapes_records):
  emoji = os.path.join(data_dir, 'emoji')
  try:
    emoji_paths = records.shard_paths(emoji, 'train')
  except FileNotFoundError:
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'prepare.py'), 'emoji',
                    '--out', emoji], check=True, cwd=ROOT)
    emoji_paths = records.shard_paths(emoji, 'train')
  shapes = os.path.join(data_dir, f'bench_shapes_{shapes_records}')
  try:
    shapes_paths = records.shard_paths(shapes, 'train')
  except FileNotFoundError:
    shapes_paths = synthetic.make_shapes_corpus(shapes, num_records=shapes_records,
                                                image_size=64, num_shards=4)
  return {'emoji': emoji_paths, 'shapes': shapes_paths}


def _segment(stamps, batch, start_s, own_ticks, busy_ticks, window):
  """A run's figures from its batch arrival times and the CPU ticks over `window` seconds."""
  elapsed = stamps[-1] - stamps[0]
  # Batches computed ahead during warm-up arrive faster than steady state; rate the batches
  # after the first third only.
  k = len(stamps) // 3
  steady = batch * (len(stamps) - 1 - k) / (stamps[-1] - stamps[k])
  own = own_ticks / HZ / window
  return dict(images_per_s=steady, images_per_s_all=batch * (len(stamps) - 1) / elapsed,
              batches=len(stamps) - 1, seconds=elapsed, start_s=start_s, own_cores=own,
              other_cores=max(0.0, busy_ticks / HZ / window - own))


def run_segment(paths, size, workers, args, seed, exclude=()):
  """One run of the Grain pipeline in this process; `exclude`: pids whose CPU is not its own."""
  ds = data.make_dataset(paths, pp=PP.format(size=size), labels={}, batch_size=args.batch,
                         seed=seed, worker_count=workers)
  t_start = time.perf_counter()
  it = iter(ds)
  try:
    for _ in range(args.warmup):  # starts workers, fills buffers
      next(it)
    start_s = time.perf_counter() - t_start
    me = os.getpid()
    own0, busy0, t0 = _tree_ticks(me, exclude), _busy_ticks(), time.perf_counter()
    stamps = [t0]
    while stamps[-1] - t0 < args.seconds or len(stamps) < 4:
      next(it)
      stamps.append(time.perf_counter())
    own1, busy1 = _tree_ticks(me, exclude), _busy_ticks()
  finally:
    if workers:
      it.close()
  return _segment(stamps, args.batch, start_s, own1 - own0, busy1 - busy0, stamps[-1] - t0)


class TorchWorker:
  """bench/torch_input.py in the torch venv: a long-lived process answering `@@{json}` lines."""

  def __init__(self, checks, threads):
    cmd = [TORCH_PY, os.path.join(BENCH, 'torch_input.py'), '--worker', '--threads', str(threads),
           '--check', json.dumps(checks)]
    self.log = tempfile.TemporaryFile('w+')
    t0 = time.perf_counter()
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, text=True, cwd=ROOT,
                                 env=dict(os.environ, PYTHONUNBUFFERED='1'))
    self.setup = self._read()  # imports, versions and the check against bigvis.preprocess
    self.setup['start_s'] = time.perf_counter() - t0

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith('@@'):
        return json.loads(line[2:])
    self.proc.wait()
    self.log.seek(0)
    tail = self.log.read().strip()[-3000:]
    raise RuntimeError(f'torch worker exited ({self.proc.returncode}):\n{tail}')

  def ask(self, line):
    self.proc.stdin.write(line + '\n')
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    worker_proc.stop(self.proc, self.log)


def run_torch_segment(worker, paths, size, workers, args, seed):
  """One run of a fresh torch DataLoader in `worker`, timed there, its CPU counted here."""
  spec = dict(paths=paths, size=size, batch=args.batch, workers=workers, seed=seed,
              warmup=args.warmup)
  start_s = worker.ask('build ' + json.dumps(spec))['start_s']
  try:
    pid = worker.proc.pid
    own0, busy0, t0 = _tree_ticks(pid), _busy_ticks(), time.perf_counter()
    stamps = worker.ask(f'time {args.seconds}')['stamps']
    own1, busy1 = _tree_ticks(pid), _busy_ticks()
    window = time.perf_counter() - t0  # a few ms of pipe round trip more than the stamps span
  finally:
    worker.ask('close')  # after the tick count: a DataLoader worker's ticks go when it exits
  return _segment(stamps, args.batch, start_s, own1 - own0, busy1 - busy0, window)


def machine_info():
  return machine.describe(('grain', 'array-record', 'numpy', 'pillow', 'msgpack'))


def _stats(values):
  return dict(median=statistics.median(values), min=min(values), max=max(values))


def summarize(rows):
  out = []
  for row in rows:
    if not row['segments']:
      continue
    rates = [s['images_per_s'] for s in row['segments']]
    per_core = [r / row['cores'] for r in rates]
    own = statistics.median(s['own_cores'] for s in row['segments'])
    out.append({**{k: row[k] for k in ('pipeline', 'corpus', 'size', 'workers', 'cores')},
                'images_per_s': _stats(rates), 'per_core': _stats(per_core),
                'own_cores_median': own,
                'per_measured_core': statistics.median(rates) / own if own else None,
                'start_s_median': statistics.median(s['start_s'] for s in row['segments']),
                'other_cores_max': max(s['other_cores'] for s in row['segments'])})
  return out


def ratios(rows):
  """Grain / torch per (corpus, px, workers), from the two rows' runs of the same repeat."""
  torch_rows = {(r['corpus'], r['size'], r['workers']): r for r in rows if r['pipeline'] == TORCH}
  out = []
  for g in rows:
    t = torch_rows.get((g['corpus'], g['size'], g['workers']))
    if g['pipeline'] != GRAIN or t is None or not g['segments'] or not t['segments']:
      continue
    pairs = list(zip(g['segments'], t['segments']))
    per_core = [(a['images_per_s'] / a['own_cores']) / (b['images_per_s'] / b['own_cores'])
                for a, b in pairs if a['own_cores'] > 0 and b['own_cores'] > 0]
    out.append(dict(corpus=g['corpus'], size=g['size'], workers=g['workers'], repeats=len(pairs),
                    per_measured_core=_stats(per_core) if per_core else None,
                    images_per_s=_stats([a['images_per_s'] / b['images_per_s'] for a, b in pairs])))
  return out


def markdown(result):
  m, a, tr = result['machine'], result['args'], result.get('torch')
  v = m['versions']
  torch_side = ''
  if tr:
    tv, checks = tr['versions'], tr['check'].values()
    torch_side = (f"torch DataLoader side (bench/.torch-venv): torch {tv['torch']}, pillow "
                  f"{tv['pillow']}, numpy {tv['numpy']}, msgpack {tv['msgpack']}, array-record "
                  f"{tv['array-record']}, {tr['threads']} torch thread(s) in the loading process; "
                  f"{sum(c['identical'] for c in checks)} of {sum(c['examples'] for c in checks)} "
                  'checked examples bit-identical to bigvis.preprocess. ')
  lines = [
      f"# Input pipeline: decode + augment + batch (batch {a['batch']}), Grain and torch "
      'DataLoader',
      '',
      f"{result['time']}: {m['cpu']}, {m['cores']} cores, Python {m['python']}; grain side: grain "
      f"{v['grain']}, pillow {v['pillow']}, numpy {v['numpy']}, msgpack {v['msgpack']}, "
      f"array-record {v['array-record']}; {torch_side}"
      f"{a['repeats']} repeats x {a['seconds']} s per row (after {a['warmup']} warm-up batches), "
      f"rows alternated. pp `{PP}`. Load average before {result['loadavg_before']}, after "
      f"{result['loadavg_after']}. Command: `{result['command']}`", '',
      '| corpus | px | workers | pipeline | images/s per core median | min | max | images/s median '
      '| cores measured | images/s per measured core | start s | other cores (max) |',
      '|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in result['summary']:
    pc, ips = r['per_core'], r['images_per_s']
    lines.append(f"| {r['corpus']} | {r['size']} | {r['workers']} | {r['pipeline']} | "
                 f"{pc['median']:.0f} | {pc['min']:.0f} | {pc['max']:.0f} | {ips['median']:.0f} | "
                 f"{r['own_cores_median']:.2f} | {r['per_measured_core'] or 0:.0f} | "
                 f"{r['start_s_median']:.1f} | {r['other_cores_max']:.2f} |")
  if result['ratios']:
    lines += ['', '| corpus | px | workers | grain / torch: images/s per measured core, paired '
              'median | min | max | images/s, paired median | min | max |',
              '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in result['ratios']:
      pm, ips = r['per_measured_core'] or dict(median=0, min=0, max=0), r['images_per_s']
      lines.append(f"| {r['corpus']} | {r['size']} | {r['workers']} | {pm['median']:.2f} | "
                   f"{pm['min']:.2f} | {pm['max']:.2f} | {ips['median']:.2f} | {ips['min']:.2f} | "
                   f"{ips['max']:.2f} |")
  lines.append('')
  busy = max((r['other_cores_max'] for r in result['summary']), default=0.0)
  if busy > 0.2:
    lines.append(f"- Other processes used up to {busy:.2f} of {m['cores']} cores during a timed "
                 'segment: figures are lower and noisier than on an idle machine; the worker rows, '
                 'which want every core, suffer most.')
  threads = [r['own_cores_median'] for r in result['summary']
             if r['workers'] == 0 and r['pipeline'] == GRAIN]
  if threads and max(threads) > 1.1:
    lines.append(f"- Grain's worker_count 0 used up to {max(threads):.2f} cores: its read threads "
                 'overlap where PIL and numpy release the GIL, so its images/s per core (cores '
                 'used = 1) overstates; compare rows by images/s per measured core.')
  threads = [r['own_cores_median'] for r in result['summary']
             if r['workers'] == 0 and r['pipeline'] == TORCH]
  if threads and max(threads) > 1.1:
    lines.append(f"- torch's num_workers 0 used up to {max(threads):.2f} cores (torch's own "
                 'threads): compare rows by images/s per measured core.')
  for r in result['summary']:
    if r['images_per_s']['max'] > 1.2 * r['images_per_s']['min']:
      lines.append(f"- {r['pipeline']} {r['corpus']} {r['size']} px, {r['workers']} workers: "
                   f"repeats vary by more than 20% (min {r['images_per_s']['min']:.0f}, max "
                   f"{r['images_per_s']['max']:.0f} images/s).")
  if tr:
    for name, c in tr['check'].items():
      if c['identical'] != c['examples']:
        lines.append(f"- torch side differs from bigvis.preprocess on {name} px: only "
                     f"{c['identical']} of {c['examples']} examples identical.")
  for name, e in result.get('errors', {}).items():
    lines.append(f"- {name} did not run: {e.strip().splitlines()[-1] if e.strip() else e}")
  if result['waited_s'] >= 0.5:
    lines.append(f"- waited {result['waited_s']:.0f} s in all for other processes to quiet down.")
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--seconds', type=float, default=5.0, help='timed seconds per run')
  parser.add_argument('--warmup', type=int, default=2, help='untimed batches per run')
  parser.add_argument('--sizes', default='224,64')
  parser.add_argument('--workers', default='0,2')
  parser.add_argument('--corpora', default='emoji,shapes')
  parser.add_argument('--pipelines', default='grain,torch', help='comma list of grain, torch')
  parser.add_argument('--torch-threads', type=int, default=1,
                      help="torch intra-op threads in the torch loading process (0: torch's "
                           'default, one per core); DataLoader workers always use 1')
  parser.add_argument('--shapes-records', type=int, default=2000)
  parser.add_argument('--data-dir', default=os.path.join(ROOT, 'runs', 'data'))
  parser.add_argument('--idle-wait-total', type=float, default=60.0,
                      help='seconds, over the run, to wait for other processes to go under '
                           '--idle-threshold cores before segments')
  parser.add_argument('--idle-threshold', type=float, default=0.25)
  parser.add_argument('--quick', action='store_true', help='1 repeat x 2 s, out *_quick')
  parser.add_argument('--out', default=None)
  args = parser.parse_args()
  if args.quick:
    args.repeats, args.seconds, args.idle_wait_total = 1, 2.0, 0.0
  out = args.out or os.path.join(BENCH, 'results',
                                 'input_pipeline' + ('_quick' if args.quick else ''))

  pipelines = [p.strip() for p in args.pipelines.split(',') if p.strip()]
  if not pipelines or set(pipelines) - set(PIPELINES):
    parser.error(f'--pipelines: choose from {list(PIPELINES)}')
  paths = ensure_corpora(args.data_dir, args.shapes_records)
  configs = [(c, int(s), int(w)) for c in args.corpora.split(',') for s in args.sizes.split(',')
             for w in args.workers.split(',')]
  errors, torch_worker = {}, None
  if 'torch' in pipelines:
    try:
      ensure_torch_venv(extra=project_pins(*TORCH_EXTRA))
      checks = [dict(name=c, paths=paths[c], size=s)
                for c in args.corpora.split(',') for s in sorted({s for _, s, _ in configs})]
      print('starting the torch worker (and checking its examples against bigvis) ...', flush=True)
      torch_worker = TorchWorker(checks, args.torch_threads)
    except Exception as e:  # pylint: disable=broad-except
      errors[TORCH] = str(e)
      print(f'torch side FAILED, running grain only: {e}', flush=True)
  names = [PIPELINES[p] for p in pipelines if PIPELINES[p] not in errors]
  rows = [dict(pipeline=p, corpus=c, size=s, workers=w, cores=max(1, w), segments=[])
          for c, s, w in configs for p in names]
  loadavg_before = os.getloadavg()
  waited = 0.0
  try:
    for rep in range(args.repeats):
      order = rows if rep % 2 == 0 else rows[::-1]
      for row in order:
        t0 = time.perf_counter()
        while waited + (time.perf_counter() - t0) < args.idle_wait_total and \
            other_cores() > args.idle_threshold:
          pass
        waited += time.perf_counter() - t0
        if row['pipeline'] == TORCH:
          seg = run_torch_segment(torch_worker, paths[row['corpus']], row['size'], row['workers'],
                                  args, seed=rep)
        else:
          seg = run_segment(paths[row['corpus']], row['size'], row['workers'], args, seed=rep,
                            exclude=[torch_worker.proc.pid] if torch_worker else [])
        row['segments'].append(seg)
        print(f"repeat {rep} {row['corpus']:6s} {row['size']:3d} px workers {row['workers']} "
              f"{row['pipeline']:16s}: {seg['images_per_s']:7.0f} images/s, own "
              f"{seg['own_cores']:.2f} cores, other {seg['other_cores']:.2f}", flush=True)
  finally:
    if torch_worker:
      torch_worker.close()
  # versions, threads (as torch reports them), the check against bigvis.preprocess, start_s
  torch_info = torch_worker.setup if torch_worker else None
  result = dict(
      time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command=' '.join(['python', os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
      machine=machine_info(), torch=torch_info, errors=errors, args=vars(args), pp=PP,
      corpora={c: dict(paths=[os.path.relpath(x, ROOT) for x in p],
                       records=len(grain.sources.ArrayRecordDataSource(p)))
               for c, p in paths.items()},
      loadavg_before=[round(x, 2) for x in loadavg_before],
      loadavg_after=[round(x, 2) for x in os.getloadavg()], waited_s=waited,
      rows=rows, summary=summarize(rows), ratios=ratios(rows))
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fileio.write_text_atomic(out + '.json', json.dumps(result, indent=1))
  fileio.write_text_atomic(out + '.md', markdown(result))
  print(markdown(result))
  differs = torch_info and any(c['identical'] != c['examples'] for c in torch_info['check'].values())
  return 1 if errors or differs else 0  # the markdown names which


if __name__ == '__main__':
  sys.exit(main())
