"""The main job end to end on the emoji corpus, as `make demo` runs it:

  prepare -> mine labels -> pretrain (weak labels) -> fine-tune (multi-task) -> embed -> ScaNN
  index -> retrieval eval, and the same fine-tuning recipe from scratch as the baseline.

  python tools/demo.py --workdir runs/demo [--pretrain_steps 1200 --finetune_steps 400]
  python tools/demo.py --workdir runs/demo_seeds --seeds 0,1,2   # the seed spread (~3x longer)

Each stage is the command a user would type (printed before it runs). The report, every figure
named, is printed as a table and written to WORKDIR/report.json (and report.md): cross-vendor
retrieval (Google queries, Twitter database, emoji never seen in training) recall@1/@10 float and
binary, skin-tone and category accuracy on the test splits, ScaNN recall relative to exact search
and its speed-up, and the wall time of every stage, for the pretrained+fine-tuned model and for
the model trained from scratch. With several --seeds every model is trained once per seed (each
seed's runs in WORKDIR/seed_N) and the report adds, per headline figure, the mean and population
std over seeds of both models and whether the fine-tuned model's lead exceeds the two spreads added
(the rule bigvis.study calls a finding).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bigvis import fileio, retrieval, study

QUERY_SPLIT, DATABASE_SPLIT = 'test_query', 'test_index'
# The figures the seed summary compares (higher is better for each).
HEADLINE = ('float_exact recall@1', 'float_exact recall@10', 'binary_exact recall@1',
            'skin_tone accuracy', 'category accuracy')


def run_stage(name, cmd, timings):
  print(f'\n=== {name}: {shlex.join(cmd)}', flush=True)
  start = time.perf_counter()
  subprocess.run(cmd, cwd=REPO, check=True)
  timings[name] = round(time.perf_counter() - start, 1)


def model_report(run_dir, timings, name):
  """Embeds the test splits with `run_dir`, evaluates retrieval, returns the named figures."""
  py = sys.executable
  emb = os.path.join(run_dir, 'embeddings')
  q, db = os.path.join(emb, f'{QUERY_SPLIT}.npz'), os.path.join(emb, f'{DATABASE_SPLIT}.npz')
  for split, out in ((QUERY_SPLIT, q), (DATABASE_SPLIT, db)):
    run_stage(f'{name}: embed {split}', [py, 'tools/embed.py', '--workdir', run_dir, '--split',
                                         split, '--out', out], timings)
  index_dir = os.path.join(run_dir, 'index')
  # The test database is small enough that the default would be brute force; a tree + AH index
  # makes the demo exercise (and report) approximate search.
  run_stage(f'{name}: build ScaNN index', [py, 'tools/build_index.py', '--embeddings', db,
                                           '--out', index_dir, '--param', 'algorithm=tree_ah'],
            timings)
  eval_dir = os.path.join(run_dir, 'retrieval')
  run_stage(f'{name}: evaluate retrieval',
            [py, 'tools/eval_retrieval.py', '--queries', q, '--database', db, '--label',
             'identity', '--ks', '1,10', '--index', index_dir, '--out', eval_dir], timings)
  with open(os.path.join(eval_dir, 'retrieval.json')) as f:
    result = json.load(f)
  methods, figures = result['methods'], {}
  for method, values in methods.items():  # float_exact, float_scann, binary_exact, binary_scann
    for metric in ('recall@1', 'recall@10', 'map@10', 'ann_recall@10', 'queries_per_sec',
                   'build_seconds'):
      if metric in values:
        figures[f'{method} {metric}'] = values[metric]
  for kind in ('float', 'binary'):
    figures[f'{kind}_scann speed-up vs exact'] = (methods[f'{kind}_scann']['queries_per_sec']
                                                 / methods[f'{kind}_exact']['queries_per_sec'])
  for task in ('skin_tone', 'category'):
    figures[f'{task} accuracy'], figures[f'{task} examples'] = retrieval.head_accuracy(
        [retrieval.load_embeddings(p) for p in (q, db)], task)
  return figures


def seed_summary(per_seed):
  """{figure: {model: {mean, std, values}, lead, spread, finding}} over the seeds of `per_seed`
  ({seed: {model: figures}}); a lead (either sign) is a finding when its size exceeds the two
  models' stds added."""
  out = {}
  for name in HEADLINE:
    row = {}
    for model in ('finetuned', 'scratch'):
      values = [per_seed[s][model][name] for s in sorted(per_seed)]
      row[model] = {'mean': statistics.fmean(values), 'values': values,
                    'std': study.seed_spread(values)}
    row['lead'] = row['finetuned']['mean'] - row['scratch']['mean']
    row['spread'] = row['finetuned']['std'] + row['scratch']['std']
    row['finding'] = study.is_finding(row['lead'], row['spread'])
    out[name] = row
  return out


def verdict(row):
  if not row['finding']:
    return 'within spread'
  return '**finding**: ' + ('fine-tuned higher' if row['lead'] > 0 else 'scratch higher')


def seed_dir(workdir, seeds, seed):
  """Where `seed`'s runs go: WORKDIR itself for a single seed (as before seeds), else seed_N."""
  return workdir if len(seeds) == 1 else os.path.join(workdir, f'seed_{seed}')


def parse_seeds(text):
  try:
    seeds = [int(s) for s in text.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'--seeds {text!r}: comma-separated integers, e.g. 0,1,2')
  if len(set(seeds)) != len(seeds):
    raise argparse.ArgumentTypeError(f'--seeds {text!r}: a seed is named twice')
  return seeds


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--workdir', default='runs/demo')
  p.add_argument('--pretrain_steps', type=int, default=None, help='default: pretrain.py:runlocal')
  p.add_argument('--finetune_steps', type=int, default=None, help='default: finetune.py:runlocal')
  p.add_argument('--seeds', type=parse_seeds, default=[0],
                 help='comma-separated config seeds, one training of each model per seed '
                      '(default 0: one run, folders directly under WORKDIR)')
  a = p.parse_args(argv)
  w, py, timings = a.workdir, sys.executable, {}
  start = time.perf_counter()
  data, mined = os.path.join(w, 'data', 'emoji'), os.path.join(w, 'data', 'emoji_mined')
  run_stage('prepare', [py, 'tools/prepare.py', 'emoji', '--out', data], timings)
  run_stage('mine labels', [py, 'tools/mine_labels.py', '--corpus', data, '--out', mined], timings)

  per_seed = {}
  for seed in a.seeds:
    d = seed_dir(w, a.seeds, seed)
    tag = '' if len(a.seeds) == 1 else f'seed {seed}: '

    def train(name, config, data_dir, steps):
      cmd = [py, '-m', 'bigvis.train', '--config', config,
             f'--config.input.data_dir={data_dir}', f'--config.seed={seed}',
             '--workdir', os.path.join(d, name)]
      run_stage(tag + name, cmd + ([f'--config.total_steps={steps}'] if steps else []), timings)

    train('pretrain', 'configs/pretrain.py:runlocal', mined, a.pretrain_steps)
    train('finetune', f'configs/finetune.py:runlocal,init={os.path.join(d, "pretrain")}', data,
          a.finetune_steps)
    train('scratch', 'configs/finetune.py:runlocal', data, a.finetune_steps)
    per_seed[seed] = {
        'finetuned': model_report(os.path.join(d, 'finetune'), timings, tag + 'finetune'),
        'scratch': model_report(os.path.join(d, 'scratch'), timings, tag + 'scratch')}
  timings['total'] = round(time.perf_counter() - start, 1)
  first = per_seed[a.seeds[0]]
  report = {
      'task': ('cross-vendor retrieval on emoji: Google renderings (test_query) search Twitter '
               'renderings (test_index) of emoji whose base never appears in training; relevant = '
               'same identity (exact sequence, skin tone included)'),
      'models': {'finetuned': 'pretrained on mined weak labels, then multi-task fine-tuned',
                 'scratch': 'the same fine-tuning recipe from a random init'},
      'seeds': a.seeds,
      'figures': first,  # Of the first seed; every seed's under per_seed.
      'per_seed': {str(s): v for s, v in per_seed.items()},
      'finetuned_beats_scratch_recall@1': (first['finetuned']['float_exact recall@1']
                                           > first['scratch']['float_exact recall@1']),
      'wall_seconds': timings,
      'command': shlex.join([os.path.relpath(sys.executable, REPO), *sys.argv]),
      'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
  }
  if len(a.seeds) > 1:
    report['seed_summary'] = seed_summary(per_seed)
  fileio.write_text_atomic(os.path.join(w, 'report.json'), json.dumps(report, indent=1) + '\n')
  table = render(report)
  fileio.write_text_atomic(os.path.join(w, 'report.md'), table)
  print('\n' + table)
  examples = os.path.join(seed_dir(w, a.seeds, a.seeds[0]), 'finetune', 'retrieval',
                          'examples.png')
  print(f'Report: {os.path.join(w, "report.json")} (and report.md); retrieval examples: '
        f'{examples}')


def render(report):
  """The report as markdown: one row per figure, one column per model."""
  figures = report['figures']
  names = list(figures['finetuned'])
  lines = []
  if 'seed_summary' in report:
    lines += [f'Over seeds {",".join(map(str, report["seeds"]))} (mean ± population std; a lead '
              'is a finding when its size exceeds the two stds added):', '',
              '| figure | finetuned | scratch | lead | spread | verdict |',
              '| --- | ---: | ---: | ---: | ---: | --- |']
    for name, row in report['seed_summary'].items():
      f, s = row['finetuned'], row['scratch']
      lines.append(f'| {name} | {f["mean"]:.3f} ± {f["std"]:.3f} | {s["mean"]:.3f} ± '
                   f'{s["std"]:.3f} | {row["lead"]:+.3f} | {row["spread"]:.3f} | '
                   f'{verdict(row)} |')
    lines += ['', f'Seed {report["seeds"][0]}, every figure:', '']
  lines += ['| figure | finetuned | scratch |', '| --- | ---: | ---: |']
  for name in names:
    cells = [figures[m].get(name) for m in ('finetuned', 'scratch')]
    fmt = lambda v: f'{v:,.0f}' if isinstance(v, (int, float)) and abs(v) >= 100 else (
        f'{v:.3f}' if isinstance(v, float) else str(v))
    lines.append(f'| {name} | ' + ' | '.join(fmt(c) for c in cells) + ' |')
  lines += ['', '| stage | seconds |', '| --- | ---: |']
  lines += [f'| {k} | {v:,.1f} |' for k, v in report['wall_seconds'].items()]
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
