"""Runs every speed benchmark, one after another, and regenerates bench/results/SUMMARY.md.

    .venv/bin/python bench/run_all.py            # all of them, full size (~1 h on the 2-core CPU)
    .venv/bin/python bench/run_all.py --quick    # every benchmark's smoke run (~10 min)
    .venv/bin/python bench/run_all.py --only train_step,retrieval
    .venv/bin/python bench/run_all.py --summary-only   # rebuild SUMMARY.md from the results

`make bench` runs the first. Each benchmark writes its own bench/results/<name>.{json,md} (both
sides of every comparison measured in the same run, figures as median/min/max over repeats, the
machine and versions in the JSON); this script only sequences them, so no two run at once, and
concatenates their tables under one header (machine, versions, wall time and exit status of each)
into bench/results/SUMMARY.md (SUMMARY_quick.md for --quick). A failing benchmark is reported
and the others still run; the exit status is 1 if any failed.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, 'results')
sys.path.insert(0, BENCH)

import machine  # noqa: E402

# name -> (script, extra args of the full run). Order: cheapest first, so a broken set-up shows early.
BENCHMARKS = {
    'checkpointing': ('checkpointing.py', []),
    'input_pipeline': ('input_pipeline.py', []),
    'label_mining': ('label_mining.py', []),
    'retrieval': ('retrieval.py', []),
    'sharded_index': ('sharded_index.py', []),
    'train_step': ('train_step.py', []),
}
QUICK_ARGS = {'label_mining': ['--records', '100000', '--beam_records', '5000',
                               '--out', os.path.join(RESULTS, 'label_mining_quick')],
              'sharded_index': ['--points', '100000',
                                '--out', os.path.join(RESULTS, 'sharded_index_quick')]}


def run_one(name, quick):
  script, extra = BENCHMARKS[name]
  args = QUICK_ARGS.get(name, ['--quick']) if quick else extra
  cmd = [sys.executable, os.path.join(BENCH, script), *args]
  print(f'== {name}: {" ".join(cmd[1:])}', flush=True)
  t0 = time.perf_counter()
  rc = subprocess.run(cmd, cwd=ROOT).returncode
  return dict(command=' '.join(['python', *[os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                                             for c in cmd[1:]]]),
              returncode=rc, wall_seconds=round(time.perf_counter() - t0, 1))


def write_summary(names, runs, quick):
  suffix = '_quick' if quick else ''
  info = machine.describe(['jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'scann'])
  lines = [f'# bigvis benchmarks{" (smoke runs)" if quick else ""}', '',
           f'{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}: '
           f'{info["cpu"]}, {info["cores"]} cores, {info["memory_gb"]} GB, Python {info["python"]}, '
           + ', '.join(f'{k} {v}' for k, v in info['versions'].items())
           + f'; commit {(info["git_commit"] or "?")[:10]}{" (dirty)" if info["git_dirty"] else ""}.',
           '', 'Each section below is the benchmark\'s own table (bench/results/<name>.md); see '
           'bench/README.md for what every column means.', '']
  if runs:
    lines += ['| benchmark | command | exit status | wall s |', '|---|---|---:|---:|']
    lines += [f'| {n} | `{r["command"]}` | {r["returncode"]} | {r["wall_seconds"]} |'
              for n, r in runs.items()]
    lines.append('')
  for name in names:
    path = os.path.join(RESULTS, name + suffix + '.md')
    if not os.path.exists(path):
      lines += [f'## {name}', '', f'(no {os.path.relpath(path, ROOT)})', '']
      continue
    with open(path, encoding='utf-8') as f:
      body = f.read().strip().splitlines()
    # Demote the benchmark's headings one level under this page's title.
    lines += [('#' + line if line.startswith('#') else line) for line in body] + ['']
  out = os.path.join(RESULTS, f'SUMMARY{suffix}.md')
  with open(out + '.tmp', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines))
  os.replace(out + '.tmp', out)
  if runs:
    with open(os.path.join(RESULTS, f'run_all{suffix}.json') + '.tmp', 'w') as f:
      json.dump(dict(machine=info, runs=runs), f, indent=1)
    os.replace(os.path.join(RESULTS, f'run_all{suffix}.json') + '.tmp',
               os.path.join(RESULTS, f'run_all{suffix}.json'))
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true', help="each benchmark's smoke run")
  ap.add_argument('--only', default='', help=f'comma-separated subset of {",".join(BENCHMARKS)}')
  ap.add_argument('--summary-only', action='store_true', help='rebuild SUMMARY.md, run nothing')
  a = ap.parse_args()
  names = [n for n in a.only.split(',') if n] or list(BENCHMARKS)
  unknown = set(names) - set(BENCHMARKS)
  if unknown:
    ap.error(f'unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}')
  runs = {} if a.summary_only else {n: run_one(n, a.quick) for n in names}
  print(f'wrote {os.path.relpath(write_summary(names, runs, a.quick), ROOT)}')
  failed = [n for n, r in runs.items() if r['returncode']]
  if failed:
    print(f'FAILED: {", ".join(failed)}', file=sys.stderr)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
