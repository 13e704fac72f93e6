"""Sharded vs single ScaNN index (bigvis/sharded_index.py vs retrieval.build_scann): build time,
peak RSS of the build, queries/s and recall@10 against exact search.

    .venv/bin/python bench/sharded_index.py                       # 1M and 4M x 64-d: ~25 min
    .venv/bin/python bench/sharded_index.py --points 200000 --shards 4 --out /tmp/quick

Data: 64-d clustered synthetic vectors (bench/retrieval.py's mixture: 1000 centres, spread 0.15),
written as an embeddings set of `--shards` shards (bigvis/embedding_sets.py); 1000 queries from
the same mixture. Each build runs in a fresh child process; its peak RSS is the larger of the
child's own high-water mark (VmHWM) and the RSS of its process tree (workers included) sampled
every 20 ms: the single index loads the whole set, the sharded
one loads one shard per worker. Params: tree_ah, the defaults bigvis resolves for each index's
size. Search: one thread, all queries in one batch, median of `--repeats`. Ground truth: FAISS
IndexFlatIP (BLAS, `--threads`). Writes OUT.json and OUT.md (default bench/results/sharded_index).
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import machine  # noqa: E402
import retrieval as retrieval_bench  # noqa: E402  (bench/retrieval.py: the same synthetic mixture)

from bigvis import embedding_sets, retrieval, sharded_index  # noqa: E402

K = 10


def _status_kb(pid, field):
  try:
    with open(f'/proc/{pid}/status') as f:
      return next((int(line.split()[1]) for line in f if line.startswith(field)), 0)
  except OSError:
    return 0


def _descendants(pid):
  out = []
  try:
    for tid in os.listdir(f'/proc/{pid}/task'):
      with open(f'/proc/{pid}/task/{tid}/children') as f:
        out += [int(c) for c in f.read().split()]
  except OSError:
    return out
  return out + [d for c in out for d in _descendants(c)]


def _tree_rss_bytes(pid):
  return 1024 * sum(_status_kb(p, 'VmRSS:') for p in [pid, *_descendants(pid)])


def child(argv):
  """One build in this process: prints {'build_seconds', 'peak_rss_bytes'} as JSON."""
  kind, set_dir, out, workers = argv[0], argv[1], argv[2], int(argv[3])
  start = time.perf_counter()
  if kind == 'single':
    emb = retrieval.load_embeddings(set_dir)
    params = retrieval.resolve_scann_params(len(emb['embedding']), emb['embedding'].shape[1], K,
                                            {'algorithm': 'tree_ah'})
    searcher = retrieval.build_scann(emb['embedding'], K, params)
    retrieval.save_index(searcher, out, {
        'params': params, 'metric': 'dot', 'k': K, 'num_points': len(emb['id']),
        'dim': emb['embedding'].shape[1], 'build_seconds': time.perf_counter() - start,
        'ids': emb['id']})
  else:
    sharded_index.build(set_dir, out, k=K, params={'algorithm': 'tree_ah'}, workers=workers)
  # VmHWM: this process's own peak (ru_maxrss would count the parent's memory at exec).
  print(json.dumps({'build_seconds': time.perf_counter() - start,
                    'own_peak_rss_bytes': 1024 * _status_kb('self', 'VmHWM:')}))


def write_set(directory, db, shards):
  meta = {'corpus': 'synthetic', 'split': 'db', 'checkpoint': '-', 'step': 0, 'task': ''}

  def write_shard(i, path):
    rows = np.arange(i, len(db), shards)
    retrieval.save_embeddings(path, {'id': np.char.add('r', rows.astype(str)),
                                     'index': rows.astype(np.int64), 'embedding': db[rows],
                                     'codes': retrieval.binary_codes(db[rows])}, meta)
    return len(rows)

  embedding_sets.write_set(directory, shards, write_shard, {'points': len(db)}, meta=meta)


def measure(kind, set_dir, out, workers, queries, truth_rows, repeats):
  proc = subprocess.Popen([sys.executable, __file__, '--child', kind, set_dir, out, str(workers)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  tree_peak = 0
  while proc.poll() is None:  # The build's whole process tree (its workers too), sampled.
    tree_peak = max(tree_peak, _tree_rss_bytes(proc.pid))
    time.sleep(0.02)
  if proc.returncode:
    raise RuntimeError(f'{kind} build failed (exit {proc.returncode})')
  built = json.loads(proc.stdout.read().strip().splitlines()[-1])
  built['peak_rss_bytes'] = max(built['own_peak_rss_bytes'], tree_peak)
  searcher, meta = retrieval.load_index(out)
  seconds = []
  for _ in range(repeats + 1):  # the first is a warm-up
    start = time.perf_counter()
    ids, _ = retrieval.scann_search(searcher, queries, K)
    seconds.append(time.perf_counter() - start)
  # Both indexes and the ground truth number rows in the set's order.
  hits = [len(set(a) & set(b)) for a, b in zip(ids.tolist(), truth_rows.tolist())]
  return {**built, 'queries_per_sec': len(queries) / statistics.median(seconds[1:]),
          'search_seconds': seconds[1:], 'recall@10': sum(hits) / (K * len(queries)),
          'params': meta['params'], 'shards': len(meta.get('shards', [])) or 1}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--points', default='1000000,4000000')
  p.add_argument('--shards', type=int, default=4)
  p.add_argument('--workers', type=int, default=2, help='processes building shards at once')
  p.add_argument('--queries', type=int, default=1000)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--threads', type=int, default=os.cpu_count(), help='FAISS exact-search threads')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--tmp', default=None, help='scratch folder (default: a system temp dir)')
  p.add_argument('--out', default=os.path.join(BENCH, 'results', 'sharded_index'))
  a = p.parse_args(argv)
  import faiss
  faiss.omp_set_num_threads(a.threads)
  results = []
  for n in [int(x) for x in a.points.split(',')]:
    db, q, info = retrieval_bench.synthetic(n, 64, 1000, 0.15, a.queries, a.seed)
    scratch = tempfile.mkdtemp(prefix='sharded-bench-', dir=a.tmp)
    try:
      set_dir = os.path.join(scratch, 'set')
      write_set(set_dir, db, a.shards)
      order = retrieval.load_embeddings(set_dir)['index']  # set row -> original row
      exact = faiss.IndexFlatIP(64)
      exact.add(db[order])
      start = time.perf_counter()
      truth = exact.search(q, K)[1]
      exact_qps = len(q) / (time.perf_counter() - start)
      del db, exact
      row = {'points': n, 'dim': 64, 'exact_faiss_flat_queries_per_sec': exact_qps,
             'exact_threads': a.threads}
      for kind, workers in (('single', 1), ('sharded', 1), ('sharded', a.workers)):
        name = kind if kind == 'single' else f'{a.shards} shards, {workers} worker(s)'
        print(f'{n:,} points: {name} ...', flush=True)
        row[name] = measure(kind, set_dir, os.path.join(scratch, f'{kind}{workers}'), workers,
                            q, truth, a.repeats)
        shutil.rmtree(os.path.join(scratch, f'{kind}{workers}'), ignore_errors=True)
      results.append(row)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
  report = {'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'command': ' '.join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
            'machine': machine.describe(['scann', 'faiss-cpu', 'numpy']), 'results': results}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out + '.json', 'w') as f:
    json.dump(report, f, indent=1)
  lines = [f'# Sharded vs single ScaNN index ({report["machine"]["cpu"]}, '
           f'{report["machine"]["cores"]} cores, commit {report["machine"]["git_commit"]})', '',
           f'`{report["command"]}`', '',
           '| points | index | build s | peak RSS GiB | queries/s (1 thread) | recall@10 |',
           '| ---: | --- | ---: | ---: | ---: | ---: |']
  for row in results:
    for name, m in row.items():
      if isinstance(m, dict):
        lines.append(f'| {row["points"]:,} | {name} | {m["build_seconds"]:.1f} | '
                     f'{m["peak_rss_bytes"] / 2**30:.2f} | {m["queries_per_sec"]:,.0f} | '
                     f'{m["recall@10"]:.3f} |')
    lines.append(f'| {row["points"]:,} | exact (FAISS IndexFlatIP, {row["exact_threads"]} '
                 f'threads) | | | {row["exact_faiss_flat_queries_per_sec"]:,.0f} | 1.000 |')
  with open(a.out + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  if len(sys.argv) > 1 and sys.argv[1] == '--child':
    child(sys.argv[2:])
  else:
    main()
