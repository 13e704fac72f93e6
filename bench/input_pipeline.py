"""Input pipeline throughput: decode + augment + batch from record shards, in images/s per core.

    .venv/bin/python bench/input_pipeline.py            # ~3-5 min on the 2-core dev CPU
    .venv/bin/python bench/input_pipeline.py --quick    # smoke run, ~1 min

Runs `bigvis.data.make_dataset` (what the trainer runs) over real records, the emoji corpus
(prepared with `tools/prepare.py emoji` when missing) and the synthetic shapes, with
`decode|random_resized_crop(S)|flip_lr|value_range(-1, 1)` at S = 224 and 64 px and worker_count
0 and 2. Each row runs `--repeats` times, rows in reversed order every other repeat; each run
builds a fresh pipeline, takes `--warmup` batches untimed, then reads batches for `--seconds`.
Writes `<out>.json` and `<out>.md` (default bench/results/input_pipeline). See bench/README.md.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import grain

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import machine  # noqa: E402  (bench/machine.py: this script's folder is on sys.path)

from bigvis import data, records, synthetic  # noqa: E402

HZ = os.sysconf('SC_CLK_TCK')
PP = 'decode|random_resized_crop({size})|flip_lr|value_range(-1, 1)'


def _busy_ticks():
  with open('/proc/stat') as f:
    v = [int(x) for x in f.readline().split()[1:]]
  return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal


def _own_ticks():
  """CPU ticks of this process and its live descendants (Grain's worker processes)."""
  stats = {}
  for pid in os.listdir('/proc'):
    if pid.isdigit():
      try:
        with open(f'/proc/{pid}/stat') as f:
          rest = f.read().rsplit(')', 1)[1].split()
      except OSError:
        continue
      stats[int(pid)] = (int(rest[1]), int(rest[11]) + int(rest[12]))  # ppid, utime + stime
  ours, total, grew = {os.getpid()}, 0, True
  while grew:
    new = {p for p, (ppid, _) in stats.items() if ppid in ours} - ours
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


def run_segment(paths, size, workers, args, seed):
  ds = data.make_dataset(paths, pp=PP.format(size=size), labels={}, batch_size=args.batch,
                         seed=seed, worker_count=workers)
  t_start = time.perf_counter()
  it = iter(ds)
  try:
    for _ in range(args.warmup):  # starts workers, fills buffers
      next(it)
    start_s = time.perf_counter() - t_start
    own0, busy0, t0 = _own_ticks(), _busy_ticks(), time.perf_counter()
    stamps = [t0]
    while stamps[-1] - t0 < args.seconds or len(stamps) < 4:
      next(it)
      stamps.append(time.perf_counter())
    own1, busy1 = _own_ticks(), _busy_ticks()
  finally:
    if workers:
      it.close()
  elapsed = stamps[-1] - t0
  # Batches computed ahead during warm-up arrive faster than steady state; rate the batches
  # after the first third only.
  k = len(stamps) // 3
  steady = args.batch * (len(stamps) - 1 - k) / (stamps[-1] - stamps[k])
  own = (own1 - own0) / HZ / elapsed
  return dict(images_per_s=steady, images_per_s_all=args.batch * (len(stamps) - 1) / elapsed,
              batches=len(stamps) - 1, seconds=elapsed, start_s=start_s, own_cores=own,
              other_cores=max(0.0, (busy1 - busy0) / HZ / elapsed - own))


def machine_info():
  return machine.describe(('grain', 'array-record', 'numpy', 'pillow'))


def summarize(rows):
  out = []
  for row in rows:
    rates = [s['images_per_s'] for s in row['segments']]
    per_core = [r / row['cores'] for r in rates]
    own = statistics.median(s['own_cores'] for s in row['segments'])
    out.append({**{k: row[k] for k in ('corpus', 'size', 'workers', 'cores')},
                'images_per_s': dict(median=statistics.median(rates), min=min(rates), max=max(rates)),
                'per_core': dict(median=statistics.median(per_core), min=min(per_core),
                                 max=max(per_core)),
                'own_cores_median': own,
                'per_measured_core': statistics.median(rates) / own if own else None,
                'start_s_median': statistics.median(s['start_s'] for s in row['segments']),
                'other_cores_max': max(s['other_cores'] for s in row['segments'])})
  return out


def markdown(result):
  m, a = result['machine'], result['args']
  lines = [
      f"# Input pipeline: decode + augment + batch (batch {a['batch']})", '',
      f"{result['time']}: {m['cpu']}, {m['cores']} cores, grain {m['versions']['grain']}, "
      f"pillow {m['versions']['pillow']}, numpy {m['versions']['numpy']}, Python {m['python']}. "
      f"{a['repeats']} repeats x {a['seconds']} s per row (after {a['warmup']} warm-up batches). "
      f"pp `{PP}`. Load average before {result['loadavg_before']}, after {result['loadavg_after']}. "
      f"Command: `{result['command']}`", '',
      '| corpus | px | workers | images/s per core median | min | max | images/s median '
      '| cores measured | images/s per measured core | start s | other cores (max) |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in result['summary']:
    pc, ips = r['per_core'], r['images_per_s']
    lines.append(f"| {r['corpus']} | {r['size']} | {r['workers']} | {pc['median']:.0f} | "
                 f"{pc['min']:.0f} | {pc['max']:.0f} | {ips['median']:.0f} | "
                 f"{r['own_cores_median']:.2f} | {r['per_measured_core'] or 0:.0f} | "
                 f"{r['start_s_median']:.1f} | {r['other_cores_max']:.2f} |")
  lines.append('')
  busy = max(r['other_cores_max'] for r in result['summary'])
  if busy > 0.2:
    lines.append(f"- Other processes used up to {busy:.2f} of {m['cores']} cores during a timed "
                 'segment: figures are lower and noisier than on an idle machine; the worker rows, '
                 'which want every core, suffer most.')
  threads = [r['own_cores_median'] for r in result['summary'] if r['workers'] == 0]
  if threads and max(threads) > 1.1:
    lines.append(f"- worker_count 0 used up to {max(threads):.2f} cores: its read threads overlap "
                 'where PIL and numpy release the GIL, so its images/s per core (cores used = 1) '
                 'overstates; compare rows by images/s per measured core.')
  for r in result['summary']:
    if r['images_per_s']['max'] > 1.2 * r['images_per_s']['min']:
      lines.append(f"- {r['corpus']} {r['size']} px, {r['workers']} workers: repeats vary by more "
                   f"than 20% (min {r['images_per_s']['min']:.0f}, max "
                   f"{r['images_per_s']['max']:.0f} images/s).")
  if result['waited_s']:
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
  out = args.out or os.path.join(BENCH, 'results', 'input_pipeline' + ('_quick' if args.quick else ''))

  paths = ensure_corpora(args.data_dir, args.shapes_records)
  configs = [(c, int(s), int(w)) for c in args.corpora.split(',') for s in args.sizes.split(',')
             for w in args.workers.split(',')]
  rows = [dict(corpus=c, size=s, workers=w, cores=max(1, w), segments=[]) for c, s, w in configs]
  loadavg_before = os.getloadavg()
  waited = 0.0
  for rep in range(args.repeats):
    order = rows if rep % 2 == 0 else rows[::-1]
    for row in order:
      t0 = time.perf_counter()
      while waited + (time.perf_counter() - t0) < args.idle_wait_total and \
          other_cores() > args.idle_threshold:
        pass
      waited += time.perf_counter() - t0
      seg = run_segment(paths[row['corpus']], row['size'], row['workers'], args, seed=rep)
      row['segments'].append(seg)
      print(f"repeat {rep} {row['corpus']:6s} {row['size']:3d} px workers {row['workers']}: "
            f"{seg['images_per_s']:7.0f} images/s, own {seg['own_cores']:.2f} cores, "
            f"other {seg['other_cores']:.2f}", flush=True)
  result = dict(
      time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command=' '.join(['python', os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
      machine=machine_info(), args=vars(args), pp=PP,
      corpora={c: dict(paths=[os.path.relpath(x, ROOT) for x in p],
                       records=len(grain.sources.ArrayRecordDataSource(p)))
               for c, p in paths.items()},
      loadavg_before=[round(x, 2) for x in loadavg_before],
      loadavg_after=[round(x, 2) for x in os.getloadavg()], waited_s=waited,
      rows=rows, summary=summarize(rows))
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  with open(out + '.md', 'w') as f:
    f.write(markdown(result))
  print(markdown(result))


if __name__ == '__main__':
  main()
