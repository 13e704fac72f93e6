"""Retrieval: ScaNN (bigvis's own index builder) beside FAISS IVF-PQ + refine and HNSW, and exact search.

    .venv/bin/python bench/retrieval.py            # emoji embeddings + 1M synthetic: ~12 min
    .venv/bin/python bench/retrieval.py --quick    # emoji embeddings + 50k synthetic: ~3 min

Two datasets, each L2-normalized and searched by inner product (= cosine), k = 10:
- emoji: real bigvis embeddings (256-d) of every split of the emoji corpus, from the .npz files
  tools/embed.py writes (`--embeddings a.npz,b.npz`). By default runs/bench_retrieval/embeddings;
  when missing they are made with the repo's tools (prepare emoji, a short `bigvis.train` run of
  configs/finetune.py:runlocal, tools/embed.py per split: a few minutes). A seeded sample of
  `--queries` rows are the queries, the rest the database.
- synthetic: `--points` (1,000,000; --quick 50,000) `--dim`-d (64) vectors from a mixture of
  `--centers` (1000) Gaussians around random unit vectors (spread `--spread`), normalized;
  `--queries` (1000) queries from the same mixture; everything from `--seed`.

Methods: exact (FAISS IndexFlatIP, also the ground truth), ScaNN built by
`bigvis.retrieval.build_scann` with the params users get (`resolve_scann_params`, tree_ah),
FAISS IndexIVFPQFastScan (4-bit codes, SIMD table lookups: the counterpart of ScaNN's AH) inside
IndexRefineFlat (as many lists as ScaNN has leaves, the same code bytes per vector), FAISS
IndexHNSWFlat. Each method's search knobs are swept (ScaNN: leaves_to_search x
reorder count; IVF-PQ: nprobe x k_factor; HNSW: efSearch); every point's recall@10 against exact
search is measured, and its queries/s timed `--repeats` times (median, min, max) on all queries
in one batch with `--threads` search threads in both libraries. Writes `<out>.json`, `<out>.md`
and `<out>_<dataset>.png` (default bench/results/retrieval; --quick: retrieval_quick).
See bench/README.md.
"""
import argparse
import datetime
import gc
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

# FAISS's OpenMP threads sleep instead of spinning while they wait: on a shared machine, spinning
# threads fight other processes for the cores and builds slow down many times over.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

import machine  # noqa: E402  (bench/machine.py: this script's folder is on sys.path)

from bigvis import fileio, retrieval  # noqa: E402

K = 10
TARGETS = (0.9, 0.95, 0.99)
EXACT, SCANN, IVFPQ, HNSW = ('exact (FAISS IndexFlatIP, BLAS)', 'ScaNN (bigvis)',
                              'FAISS IVF-PQ FastScan 4-bit + refine', 'FAISS HNSW')
METHODS = {'exact': EXACT, 'scann': SCANN, 'ivfpq': IVFPQ, 'hnsw': HNSW}  # --methods names
EMOJI_SPLITS = ('train', 'val_query', 'val_index', 'test_query', 'test_index')
EMBED_DIR = os.path.join(ROOT, 'runs', 'bench_retrieval')
SATURATED = 0.999  # a sweep axis stops growing once recall reaches this


def rss_bytes():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


def _stats(values):
  return dict(median=statistics.median(values), min=min(values), max=max(values))


def _normalize(x):
  x = np.ascontiguousarray(x, np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- datasets ------------------------------------------------------------------------------------

def synthetic(points, dim, centers, spread, queries, seed):
  """(database, queries, info): a seeded mixture of Gaussians around random unit vectors."""
  rng = np.random.default_rng(seed)
  c = _normalize(rng.standard_normal((centers, dim), dtype=np.float32))

  def draw(n):
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # bounded temporaries at 1M points
      m = min(100_000, n - s)
      x = c[rng.integers(0, centers, m)] + spread * rng.standard_normal((m, dim), dtype=np.float32)
      out[s:s + m] = _normalize(x)
    return out

  db = draw(points)
  q = draw(queries)
  return db, q, dict(kind='synthetic', points=points, dim=dim, centers=centers, spread=spread,
                     queries=queries, seed=seed)


def make_emoji_embeddings(out_dir, steps):
  """Embeddings of every emoji split by the repo's own tools; returns the .npz paths."""
  py, data_dir = sys.executable, os.path.join(ROOT, 'runs', 'data', 'emoji')
  run_dir = os.path.join(out_dir, 'finetune')
  cmds = []
  if not os.path.exists(os.path.join(data_dir, 'dataset_card.json')):
    cmds.append([py, 'tools/prepare.py', 'emoji', '--out', data_dir])
  if not glob.glob(os.path.join(run_dir, 'checkpoints', '*')) and \
      not os.path.exists(os.path.join(run_dir, 'config.json')):
    cmds.append([py, '-m', 'bigvis.train', '--config', 'configs/finetune.py:runlocal',
                 f'--config.input.data_dir={data_dir}', f'--config.total_steps={steps}',
                 '--workdir', run_dir])
  paths = [os.path.join(out_dir, 'embeddings', f'{s}.npz') for s in EMOJI_SPLITS]
  for split, path in zip(EMOJI_SPLITS, paths):
    if not os.path.exists(path):
      cmds.append([py, 'tools/embed.py', '--workdir', run_dir, '--corpus', data_dir, '--split',
                   split, '--out', path])
  for cmd in cmds:
    print('making emoji embeddings:', ' '.join(os.path.relpath(c, ROOT) if c.startswith(ROOT)
                                              else c for c in cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
  return paths


def emoji(paths, queries, seed):
  """(database, queries, info) from embeddings files: a seeded sample of rows are the queries."""
  vecs, ids = [], []
  for p in paths:
    e = retrieval.load_embeddings(p)
    vecs.append(e['embedding'])
    ids.append(e['id'])
  x = np.concatenate(vecs).astype(np.float32)
  norms = np.linalg.norm(x, axis=1)
  n_q = min(queries, len(x) // 5)
  order = np.random.default_rng(seed).permutation(len(x))
  q, db = _normalize(x[order[:n_q]]), _normalize(x[order[n_q:]])
  return db, q, dict(kind='bigvis embeddings', files=[os.path.relpath(p, ROOT) for p in paths],
                     points=len(db), dim=x.shape[1], queries=n_q, seed=seed,
                     norm_min=float(norms.min()), norm_max=float(norms.max()),
                     distinct_ids=int(len(np.unique(np.concatenate(ids)))))


# --- methods -------------------------------------------------------------------------------------

class Method:
  """build(db) once, then set(**knobs) + search(q) per sweep point; bytes() after build."""
  name = ''

  def __init__(self, args):
    self.args = args


class ExactIndex(Method):
  name = EXACT

  def build(self, db):
    import faiss
    self.index = faiss.IndexFlatIP(db.shape[1])
    self.index.add(db)
    self.params = dict(index='IndexFlatIP')

  def sweep(self):
    yield {}

  def set(self):
    pass

  def search(self, q):
    return self.index.search(q, K)[1]

  def bytes(self):
    import faiss
    return int(faiss.serialize_index(self.index).nbytes)


class ScannIndex(Method):
  name = SCANN

  def build(self, db):
    # What tools/build_index.py builds (tools/demo.py forces tree_ah the same way).
    self.params = retrieval.resolve_scann_params(len(db), db.shape[1], K,
                                                 {'algorithm': 'tree_ah'})
    self.searcher = retrieval.build_scann(db, K, self.params)
    if self.args.threads > 1:
      self.searcher.set_num_threads(self.args.threads)

  def sweep(self):
    leaves = self.params['num_leaves']
    for reorder in sorted({2 * K, self.params['reorder'], 4 * self.params['reorder']}):
      for n in _geometric(1, leaves, self.params['num_leaves_to_search']):
        yield dict(leaves_to_search=n, reorder=reorder)

  def set(self, leaves_to_search, reorder):
    self.knobs = dict(leaves_to_search=leaves_to_search, pre_reorder_num_neighbors=reorder)

  def search(self, q):
    if self.args.threads > 1:
      ids, _ = self.searcher.search_batched_parallel(q, final_num_neighbors=K, **self.knobs)
    else:
      ids, _ = self.searcher.search_batched(q, final_num_neighbors=K, **self.knobs)
    return np.asarray(ids)

  def bytes(self):
    tmp = tempfile.mkdtemp(prefix='scann-', dir=self.args.tmp)
    try:
      self.searcher.serialize(tmp, relative_path=True)
      return sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


class IvfPqIndex(Method):
  name = IVFPQ

  def build(self, db):
    import faiss
    n, d = db.shape
    # Like ScaNN's defaults: round(sqrt(N)) lists, training on min(N, 250k) points, and the same
    # code bytes per vector (ScaNN AH: d/2 blocks of 4 bits; here d/4 sub-quantizers of 8 bits).
    # FAISS's counterpart of ScaNN's 4-bit AH with SIMD lookups is IVFPQFastScan: d/2
    # sub-quantizers of 4 bits (the same d/4 code bytes), scanned with in-register tables.
    nlist, m = max(1, round(math.sqrt(n))), max(2, d // 2)
    self.params = dict(index='IndexIVFPQFastScan', nlist=nlist, M=m, nbits=4,
                       training_sample_size=min(n, 250_000), code_bytes=m // 2,
                       refine='IndexRefineFlat (float32 vectors)')
    quantizer = faiss.IndexFlatIP(d)
    self.ivf = faiss.IndexIVFPQFastScan(quantizer, d, nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
    self.ivf.cp.seed = self.args.seed
    self.index = faiss.IndexRefineFlat(self.ivf)
    sample = np.random.default_rng(self.args.seed).permutation(n)[:self.params['training_sample_size']]
    self.index.train(db[np.sort(sample)])
    _add_chunked(self.index, db, 'IVF-PQ add')
    self._quantizer = quantizer  # keep the Python object alive with the index

  def sweep(self):
    nlist = self.params['nlist']
    for kf in (2, 10, 40):  # candidates re-scored exactly: 20, 100, 400 (as ScaNN's reorder)
      for n in _geometric(1, nlist):
        yield dict(nprobe=n, k_factor=kf)

  def set(self, nprobe, k_factor):
    self.ivf.nprobe = nprobe
    self.index.k_factor = k_factor

  def search(self, q):
    return self.index.search(q, K)[1]

  def bytes(self):
    import faiss
    return int(faiss.serialize_index(self.index).nbytes)


class HnswIndex(Method):
  name = HNSW

  def build(self, db):
    import faiss
    a = self.args
    self.params = dict(M=a.hnsw_m, efConstruction=a.hnsw_ef_construction)
    self.index = faiss.IndexHNSWFlat(db.shape[1], a.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    self.index.hnsw.efConstruction = a.hnsw_ef_construction
    _add_chunked(self.index, db, 'HNSW add')

  def sweep(self):
    for ef in (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024):
      yield dict(efSearch=ef)

  def set(self, efSearch):
    self.index.hnsw.efSearch = efSearch

  def search(self, q):
    return self.index.search(q, K)[1]

  def bytes(self):
    import faiss
    return int(faiss.serialize_index(self.index).nbytes)


def _geometric(lo, hi, extra=None):
  """lo, 2 lo, 4 lo, ... up to hi (hi included), plus `extra` (a library default) if given."""
  out, v = set(), lo
  while v < hi:
    out.add(v)
    v *= 2
  out.add(hi)
  if extra:
    out.add(extra)
  return sorted(out)


def _add_chunked(index, db, desc):
  from tqdm import tqdm
  step = 100_000
  for s in tqdm(range(0, len(db), step), desc=desc, unit='100k', leave=False,
                disable=len(db) <= step or not sys.stderr.isatty()):
    index.add(db[s:s + step])
    if len(db) > step and not sys.stderr.isatty():
      print(f'  {desc}: {min(s + step, len(db)):,} / {len(db):,}', flush=True)


def recall_at_k(found, truth):
  """Mean over queries of |found top k & exact top k| / k (found ids -1 never match)."""
  return float(np.mean([len(set(f[:K].tolist()) & set(t.tolist())) / K
                        for f, t in zip(found, truth)]))


def time_point(method, q, truth, repeats):
  """One sweep point: an untimed search (recall, warm caches), then `repeats` timed ones."""
  found = method.search(q)
  recall = recall_at_k(found, truth)
  qps, cpu = [], []
  for _ in range(repeats):
    c0, t0 = time.process_time(), time.perf_counter()
    method.search(q)
    wall = time.perf_counter() - t0
    qps.append(len(q) / wall)
    cpu.append((time.process_time() - c0) / wall)
  return recall, qps, cpu


def run_method(key, args, db, q, truth, dataset):
  import faiss
  method = {'exact': ExactIndex, 'scann': ScannIndex, 'ivfpq': IvfPqIndex, 'hnsw': HnswIndex}[key](args)
  gc.collect()
  faiss.omp_set_num_threads(args.build_threads)
  rss0, t0, c0 = rss_bytes(), time.perf_counter(), time.process_time()
  print(f'[{dataset}] building {method.name} over {len(db):,} x {db.shape[1]} ...', flush=True)
  method.build(db)
  build_s, build_cpu_s = time.perf_counter() - t0, time.process_time() - c0
  rss1 = rss_bytes()
  index_bytes = method.bytes()
  print(f'[{dataset}] {method.name}: built in {build_s:.1f} s ({build_cpu_s:.1f} CPU s), {index_bytes / 2**20:.1f} MiB '
        f'serialized, RSS +{(rss1 - rss0) / 2**20:.0f} MiB; params {json.dumps(method.params)}',
        flush=True)
  faiss.omp_set_num_threads(args.threads)
  points, saturated_at = [], {}
  for knobs in method.sweep():
    # Stop growing the last knob of a sweep line once recall has saturated on it.
    line = tuple((k, v) for k, v in knobs.items() if k not in ('leaves_to_search', 'nprobe',
                                                               'efSearch'))
    if saturated_at.get(line):
      continue
    method.set(**knobs)
    recall, qps, cpu = time_point(method, q, truth, args.repeats)
    points.append(dict(knobs=knobs, recall=recall, qps=_stats(qps), qps_all=qps,
                       cpu_per_wall=statistics.median(cpu)))
    print(f'[{dataset}] {method.name} {json.dumps(knobs)}: recall@{K} {recall:.4f}, '
          f'{statistics.median(qps):,.0f} queries/s', flush=True)
    if recall >= SATURATED:
      saturated_at[line] = True
  return dict(method=METHODS[key], key=key, build_s=build_s, build_cpu_s=build_cpu_s, index_bytes=index_bytes,
              rss_delta_bytes=rss1 - rss0, params=method.params, points=points)


def _frontier(points):
  """The points no other point beats on both recall and median queries/s, by recall."""
  best = []
  for p in sorted(points, key=lambda p: (-p['qps']['median'], -p['recall'])):
    if not best or p['recall'] > best[-1]['recall']:
      best.append(p)
  return sorted(best, key=lambda p: p['recall'])


def at_targets(points):
  """Per recall target: the fastest point (median queries/s) reaching it, or None."""
  out = {}
  for t in TARGETS:
    ok = [p for p in points if p['recall'] >= t]
    best = max(ok, key=lambda p: p['qps']['median']) if ok else None
    out[str(t)] = None if best is None else dict(qps=best['qps'], knobs=best['knobs'],
                                                 recall=best['recall'])
  return out


def ratios(methods):
  by = {m['key']: m for m in methods}
  out = {}
  for other in ('ivfpq', 'hnsw'):
    if 'scann' not in by or other not in by:
      continue
    for t in TARGETS:
      a, b = by['scann']['at'][str(t)], by[other]['at'][str(t)]
      out[f'{other}@{t}'] = (a['qps']['median'] / b['qps']['median']) if a and b else None
  return out


# --- outputs -------------------------------------------------------------------------------------

def plot(ds, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for m in ds['methods']:
    pts = m['points']
    if not pts:
      continue
    front = _frontier(pts)
    line, = ax.plot([p['recall'] for p in front], [p['qps']['median'] for p in front], '-o',
                    ms=4, label=m['method'])
    ax.scatter([p['recall'] for p in pts], [p['qps']['median'] for p in pts], s=8, alpha=0.3,
               color=line.get_color())
  for t in TARGETS:
    ax.axvline(t, color='grey', lw=0.5, ls=':')
  info = ds['info']
  ax.set_yscale('log')
  ax.set_xlabel(f'recall@{K} against exact search')
  ax.set_ylabel(f'queries/s ({ds["threads"]} thread(s), batch of {info["queries"]})')
  ax.set_title(f'{ds["name"]}: {info["points"]:,} x {info["dim"]}, inner product')
  ax.grid(True, which='both', lw=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with fileio.atomic_file(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=110)
  plt.close(fig)


def plot_path(out, name):
  """<out>_<dataset>.png; for an out ending in _quick, <stem>_<dataset>_quick.png (gitignored)."""
  if out.endswith('_quick'):
    return f'{out[:-len("_quick")]}_{name}_quick.png'
  return f'{out}_{name}.png'


def _fmt_qps(x):
  return '-' if x is None else f'{x:,.0f}'


def markdown(result):
  m, a = result['machine'], result['args']
  v = m['versions']
  lines = [f'# Retrieval: ScaNN (bigvis) beside FAISS IVF-PQ FastScan + refine, HNSW and exact search '
           f'(recall@{K}, inner product)', '',
           f"{result['time']}: {m['cpu']}, {m['cores']} cores, Python {m['python']}, numpy "
           f"{v['numpy']}, scann {v['scann']}, faiss-cpu {v['faiss-cpu']}. Queries/s: all queries "
           f"in one batch, {a['threads']} search thread(s) in both libraries (FAISS "
           f"omp_set_num_threads({a['threads']}); ScaNN "
           + ('search_batched, single-threaded' if a['threads'] == 1 else
              f"search_batched_parallel, set_num_threads({a['threads']})")
           + f"), {a['repeats']} timed repeats per sweep point after an untimed one; builds use "
           f"{a['build_threads']} FAISS thread(s), ScaNN its default training threads. "
           f"Load average before {result['loadavg_before']}, after {result['loadavg_after']}. "
           f"Command: `{result['command']}`", '']
  for ds in result['datasets']:
    info = ds['info']
    desc = (f"{info['points']:,} database vectors x {info['dim']}, {info['queries']} queries")
    if info['kind'] == 'synthetic':
      desc += (f"; mixture of {info['centers']} Gaussians (spread {info['spread']}), seed "
               f"{info['seed']}")
    else:
      desc += (f"; {len(info['files'])} embeddings files ({', '.join(info['files'])}), norms "
               f"{info['norm_min']:.4f}-{info['norm_max']:.4f} before normalizing")
    lines += [f"## {ds['name']}", '', desc + f". Plot: `{ds['plot']}`.", '',
              '| method | build s | build CPU s | index MiB | RSS delta MiB | sweep points | best recall | '
              + ' | '.join(f'queries/s @{t} median (min-max)' for t in TARGETS) + ' |',
              '|---|---:|---:|---:|---:|---:|---:|' + '---:|' * len(TARGETS)]
    for me in ds['methods']:
      cells = []
      for t in TARGETS:
        p = me['at'][str(t)]
        cells.append('-' if p is None else f"{p['qps']['median']:,.0f} ({p['qps']['min']:,.0f}"
                     f"-{p['qps']['max']:,.0f})")
      best = max((p['recall'] for p in me['points']), default=float('nan'))
      lines.append(f"| {me['method']} | {me['build_s']:.1f} | {me['build_cpu_s']:.1f} | {me['index_bytes'] / 2**20:.1f} | "
                   f"{me['rss_delta_bytes'] / 2**20:.0f} | {len(me['points'])} | {best:.4f} | "
                   + ' | '.join(cells) + ' |')
    if ds['ratios']:
      lines += ['', '| ScaNN / | ' + ' | '.join(f'queries/s ratio @{t}' for t in TARGETS) + ' |',
                '|---|' + '---:|' * len(TARGETS)]
      for other, label in (('ivfpq', IVFPQ), ('hnsw', HNSW)):
        if any(f'{other}@{t}' in ds['ratios'] for t in TARGETS):
          lines.append(f'| {label} | ' + ' | '.join(
              '-' if ds['ratios'].get(f'{other}@{t}') is None else f"{ds['ratios'][f'{other}@{t}']:.2f}"
              for t in TARGETS) + ' |')
    lines += ['', 'Knobs of the points above: ' + '; '.join(
        f"{me['method']} @{t}: {json.dumps(me['at'][str(t)]['knobs'])}"
        for me in ds['methods'] for t in TARGETS if me['at'][str(t)] and me['key'] != 'exact')
        + '.', '', 'Build params: ' + '; '.join(
            f"{me['method']}: {json.dumps(me['params'])}" for me in ds['methods']) + '.', '']
    low = [(me['method'], p) for me in ds['methods'] for p in me['points']
           if p['cpu_per_wall'] < 0.8 * a['threads']]
    if low:
      lines.append(f"- {len(low)} timed point(s) got under 80% of {a['threads']} core(s) of CPU "
                   'while timed (other processes were busy): their queries/s are low; the max '
                   'column is the least disturbed figure.')
      lines.append('')
  for name, e in result['errors'].items():
    lines.append(f"- {name} FAILED: {e.strip().splitlines()[-1] if e.strip() else e}")
  return '\n'.join(lines) + '\n'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--datasets', default='emoji,synthetic')
  p.add_argument('--methods', default=','.join(METHODS), help=f'comma list of {list(METHODS)}')
  p.add_argument('--points', type=int, default=1_000_000, help='synthetic database size')
  p.add_argument('--dim', type=int, default=64, help='synthetic dimension')
  p.add_argument('--centers', type=int, default=1000, help='synthetic mixture components')
  p.add_argument('--spread', type=float, default=0.15,
                 help='synthetic: std of the Gaussian noise per dimension around a unit center')
  p.add_argument('--queries', type=int, default=1000)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--embeddings', default=None,
                 help='comma list of embeddings .npz (tools/embed.py); default: every emoji split '
                      f'in {os.path.relpath(EMBED_DIR, ROOT)}/embeddings, made when missing')
  p.add_argument('--no-make-embeddings', dest='make_embeddings', action='store_false',
                 help='do not make missing default embeddings (the emoji dataset then fails)')
  p.add_argument('--train-steps', type=int, default=150,
                 help='steps of the finetune.py:runlocal run that makes the default embeddings')
  p.add_argument('--repeats', type=int, default=3, help='timed searches per sweep point')
  p.add_argument('--threads', type=int, default=1,
                 help='search threads, both libraries (1: FAISS 1 OpenMP thread, ScaNN '
                      'search_batched)')
  p.add_argument('--build-threads', type=int, default=os.cpu_count(),
                 help='FAISS OpenMP threads while building (HNSW built with more than 1 depends '
                      'on thread timing)')
  p.add_argument('--hnsw-m', type=int, default=16)
  p.add_argument('--hnsw-ef-construction', type=int, default=100)
  p.add_argument('--tmp', default=None, help='folder for serialized ScaNN indexes (sizes)')
  p.add_argument('--quick', action='store_true', help='50k synthetic points, out *_quick')
  p.add_argument('--out', default=None, help='output prefix (default bench/results/retrieval)')
  args = p.parse_args()
  if args.quick:
    args.points = min(args.points, 50_000)
  out = args.out or os.path.join(BENCH, 'results', 'retrieval' + ('_quick' if args.quick else ''))
  keys = [k.strip() for k in args.methods.split(',') if k.strip()]
  if not keys or set(keys) - set(METHODS):
    p.error(f'--methods: choose from {list(METHODS)}')
  keys = ['exact'] + [k for k in keys if k != 'exact']  # exact first: it is the ground truth
  names = [d.strip() for d in args.datasets.split(',') if d.strip()]
  if not names or set(names) - {'emoji', 'synthetic'}:
    p.error('--datasets: choose from emoji, synthetic')

  import faiss
  loadavg_before = os.getloadavg()
  errors, datasets = {}, []
  t_start = time.perf_counter()
  for name in names:
    try:
      if name == 'emoji':
        if args.embeddings:
          paths = [x.strip() for x in args.embeddings.split(',') if x.strip()]
        else:
          paths = [os.path.join(EMBED_DIR, 'embeddings', f'{s}.npz') for s in EMOJI_SPLITS]
          if not all(os.path.exists(x) for x in paths):
            if not args.make_embeddings:
              raise FileNotFoundError(
                  f'no emoji embeddings in {os.path.relpath(EMBED_DIR, ROOT)}/embeddings and '
                  '--no-make-embeddings: pass --embeddings a.npz,b.npz (tools/embed.py output)')
            paths = make_emoji_embeddings(EMBED_DIR, args.train_steps)
        db, q, info = emoji(paths, args.queries, args.seed)
      else:
        print(f'[synthetic] drawing {args.points:,} x {args.dim} ...', flush=True)
        db, q, info = synthetic(args.points, args.dim, args.centers, args.spread, args.queries,
                                args.seed)
    except Exception as e:  # pylint: disable=broad-except
      errors[name] = traceback.format_exc()
      print(f'[{name}] dataset FAILED: {e}', flush=True)
      continue
    faiss.omp_set_num_threads(args.build_threads)
    flat = faiss.IndexFlatIP(db.shape[1])
    flat.add(db)
    truth = flat.search(q, K)[1]
    del flat
    ds = dict(name=name, info=info, threads=args.threads, methods=[],
              plot=os.path.relpath(plot_path(out, name), ROOT))
    for key in keys:
      try:
        r = run_method(key, args, db, q, truth, name)
      except Exception as e:  # pylint: disable=broad-except
        errors[f'{name} {METHODS[key]}'] = traceback.format_exc()
        print(f'[{name}] {METHODS[key]} FAILED: {e}', flush=True)
        continue
      ds['methods'].append(r)
    datasets.append(ds)
    del db, q
    gc.collect()
  for ds in datasets:
    for me in ds['methods']:
      me['at'] = at_targets(me['points'])
    ds['ratios'] = ratios(ds['methods'])
  result = dict(
      time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command=' '.join(['python', os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
      machine=machine.describe(('numpy', 'scann', 'faiss-cpu', 'matplotlib')),
      args=vars(args), k=K, targets=TARGETS, wall_s=time.perf_counter() - t_start,
      loadavg_before=[round(x, 2) for x in loadavg_before],
      loadavg_after=[round(x, 2) for x in os.getloadavg()], errors=errors, datasets=datasets)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  for ds in datasets:
    try:
      plot(ds, plot_path(out, ds['name']))
    except Exception:  # pylint: disable=broad-except
      errors[f'{ds["name"]} plot'] = traceback.format_exc()
  fileio.write_text_atomic(out + '.json', json.dumps(result, indent=1) + '\n')
  md = markdown(result)
  fileio.write_text_atomic(out + '.md', md)
  print(md)
  print(f'wrote {os.path.relpath(out, ROOT)}.json, .md and the plots in '
        f'{result["wall_s"]:.0f} s', flush=True)
  return 1 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
