"""Studies: a declared grid of bigvis runs, run through the real command-line tools, and the
report that answers each question with means and seed spreads.

    jobs    Job(name, commands, deps): a folder under the study root, made by its commands
            (train, embed, evaluate, ...). Done when `job.json` is there; a job without it is run
            again (the trainer resumes from its checkpoint), a finished one is skipped.
    cells   Cell(condition, seed, jobs, scores): the jobs one seed of one condition needs and
            where they wrote its figures.
    question  Question(key, title, cells, metrics, reference): one table; every other condition
            is compared with `reference`, every metric named by `Score` prefixes.

A difference is called a finding only where |mean difference| exceeds the sum of the two
conditions' seed standard deviations (population std over seeds); paired metrics (binary vs
float of the same model) compare per-seed differences with their own spread. Every cell of a
question must have been scored on the same corpora and splits, read back from the files the
runs wrote; a grid that mixes them is refused.

A study can grow across machines and sessions: `previous` (an earlier report's study.json) stands
in for the cells this root has not finished, with the per-seed figures it recorded; a cell is
taken from it only when that report finished every job the cell needs (job names carry the
variant, labels, loss, data fraction, seed and step counts), and only on the same splits.

configs/study.py declares the default grid; tools/study.py runs it and writes the report.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

from bigvis import fileio, retrieval


class StudyError(ValueError):
  """A grid that cannot be run or reported as declared; the message names the job or cell."""


@dataclasses.dataclass(frozen=True)
class Job:
  """A folder under the study root made by `commands` (argv tuples) once `deps` are done.
  '{root}', '{job}' and '{py}' in an argument become the study root, this job's folder and the
  Python running the study."""
  name: str
  commands: tuple[tuple[str, ...], ...]
  deps: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Score:
  """Figures one job wrote: kind 'retrieval' (a tools/eval_retrieval.py folder), 'probe' (a
  tools/probe.py folder: k-NN and linear accuracy, or per-band precision of a multi-label
  field) or 'heads' (embeddings files, comma-separated, with pred/<task>);
  `path` is relative to the study root, `prefix` names its metrics ('emoji' -> 'emoji R@1')."""
  kind: str
  prefix: str
  path: str


@dataclasses.dataclass(frozen=True)
class Cell:
  """One seed of one condition: the jobs that make it and the figures they write."""
  condition: str
  seed: int
  jobs: tuple[str, ...]
  scores: tuple[Score, ...]


@dataclasses.dataclass(frozen=True)
class Question:
  key: str
  title: str
  cells: tuple[Cell, ...]
  metrics: tuple[str, ...]  # Columns, in order.
  reference: str = ''  # The condition the others are compared with ('' = none).
  paired: tuple[tuple[str, str], ...] = ()  # (a, b): per-seed a - b within each condition.
  notes: str = ''  # What the reader should know about the setup (matched FLOPs, ...).


# --- Running ---------------------------------------------------------------------------------

def collect_jobs(questions, jobs) -> list[Job]:
  """The jobs the questions' cells need, deps first; one name with two definitions is refused."""
  by_name = {}
  for job in jobs:
    if job.name in by_name and by_name[job.name] != job:
      raise StudyError(f'job {job.name!r} is declared twice, differently')
    by_name[job.name] = job
  ordered, state = [], {}

  def visit(name, chain):
    if state.get(name) == 'done':
      return
    if state.get(name) == 'visiting':
      raise StudyError(f'jobs depend on each other in a cycle: {" -> ".join(chain + [name])}')
    if name not in by_name:
      raise StudyError(f'job {name!r} (needed by {chain[-1] if chain else "a cell"}) is not declared')
    state[name] = 'visiting'
    for dep in by_name[name].deps:
      visit(dep, chain + [name])
    state[name] = 'done'
    ordered.append(by_name[name])

  for q in questions:
    for cell in q.cells:
      for name in cell.jobs:
        visit(name, [])
  return ordered


def _argv(command, root, job):
  return [a.replace('{root}', root).replace('{job}', fileio.join(root, job.name))
          .replace('{py}', sys.executable) for a in command]


def _marker(root, name):
  return fileio.join(root, name, 'job.json')


def job_done(root, job) -> bool:
  """Whether `job` finished with these commands; a marker from other commands is refused."""
  path = _marker(root, job.name)
  if not fileio.path(path).exists():
    return False
  with fileio.path(path).open() as f:
    recorded = json.load(f)
  if recorded.get('commands') != [list(c) for c in job.commands]:
    raise StudyError(f'{path}: job {job.name!r} finished with other commands than the grid now '
                     f'declares; remove {fileio.join(root, job.name)} to run it anew, or use '
                     f'another study root')
  return True


def run_jobs(root, jobs, *, dry_run=False, log=print, cwd=None, env=None, after_job=None,
             report_dir=None):
  """Runs every job not yet done, in order; returns {name: seconds} of the jobs run now.
  report_dir: where after_job writes the report; its edits do not count as uncommitted changes
  in the commit each job records.

  A failing command raises StudyError naming the job and its log file; jobs done before it
  keep their markers, so running again resumes at the failed job."""
  from tqdm import tqdm
  todo = [j for j in jobs if not job_done(root, j)]
  if dry_run:
    for job in jobs:
      state = 'todo' if job in todo else 'done'
      for command in job.commands:
        log(f'[{state}] {job.name}: {shlex.join(_argv(command, root, job))}')
    return {}
  seconds = {}
  bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc='study', unit='job',
             dynamic_ncols=True)
  try:
    for job in todo:
      bar.set_postfix_str(job.name)
      folder = fileio.join(root, job.name)
      fileio.path(folder).mkdir(parents=True, exist_ok=True)
      # The commands' output goes to job.log (in a bucket root: a local copy, uploaded after).
      log_path = fileio.join(folder, 'job.log')
      local_log = (fileio.join(fileio.scratch_dir(folder), 'job.log') if fileio.is_remote(folder)
                   else log_path)
      start, command_seconds = time.perf_counter(), []
      try:
        with open(local_log, 'a') as out:
          for command in job.commands:
            argv = _argv(command, root, job)
            out.write(f'\n$ {shlex.join(argv)}\n')
            out.flush()
            t = time.perf_counter()
            rc = subprocess.run(argv, cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT).returncode
            command_seconds.append(round(time.perf_counter() - t, 1))
            if rc:
              raise StudyError(f'job {job.name!r}: exit {rc} from {shlex.join(argv)} (log: '
                               f'{log_path}); run the study again to resume here')
      finally:
        if local_log != log_path:
          fileio.publish(local_log, log_path)
      seconds[job.name] = round(time.perf_counter() - start, 1)
      fileio.write_text_atomic(_marker(root, job.name), json.dumps(dict(
          commands=[list(c) for c in job.commands], seconds=seconds[job.name],
          command_seconds=command_seconds,
          commit=git_commit(cwd, ignore=report_dir),
          finished=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())),
          indent=1) + '\n')
      bar.update(1)
      if after_job:
        after_job()
  finally:
    bar.close()
  return seconds


def git_commit(cwd=None, ignore=None) -> str:
  """HEAD, '+changes' when tracked files differ from it (other than under the folder `ignore`)."""
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=cwd, capture_output=True,
                         text=True, check=True).stdout.strip()
    exclude = [f':(exclude){os.path.abspath(ignore)}'] if ignore and not fileio.is_remote(
        ignore) else []
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', '.',
                            *exclude], cwd=cwd, capture_output=True, text=True,
                           check=True).stdout.strip()
    return out + ('+changes' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


# --- Reading what the runs wrote -------------------------------------------------------------

def _meta(path):
  meta = retrieval.load_embeddings(path)['meta']
  return f'{os.path.basename(str(meta["corpus"]).rstrip("/"))}:{meta["split"]}'


def _read_json(path):
  with fileio.path(path).open() as f:
    return json.load(f)


def read_score(root, score: Score):
  """(metrics, evaluated-on) of one Score; evaluated-on names corpus:split of every file read."""
  path = fileio.join(root, score.path)
  p = score.prefix
  if score.kind == 'retrieval':
    r = _read_json(fileio.join(path, 'retrieval.json'))
    names = {'float_exact': 'float', 'binary_exact': 'binary', 'float_scann': 'float ScaNN',
             'binary_scann': 'binary ScaNN'}
    metrics = {}
    for method, values in r['methods'].items():
      for k in r['ks']:
        metrics[f'{p} {names[method]} R@{k}'] = values[f'recall@{k}']
    on = (f'{_meta(r["queries_file"])} -> {_meta(r["database_file"])}, relevant = same '
          f'{r["label"]}')
    return metrics, on
  if score.kind == 'probe':
    r = _read_json(fileio.join(path, 'probe.json'))
    if 'band_precision' in r:  # A multi-label field, per frequency band.
      metrics = {f'{p} {band} {k}-NN P@1': v['precision@1']
                 for k, bands in r['band_precision'].items() for band, v in bands.items()}
    else:
      metrics = {f'{p} {k}-NN': v for k, v in r['knn_accuracy'].items()}
      metrics[f'{p} linear'] = r['linear_probe']['accuracy']
    return metrics, (f'train {_meta(r["train_file"])}, test {_meta(r["test_file"])}, '
                     f'{r["features"]} features, label {r["label"]}')
  if score.kind == 'heads':
    files = [fileio.join(root, f) for f in score.path.split(',')]
    arrays = [retrieval.load_embeddings(f) for f in files]
    metrics = {}
    for key in sorted(k for k in arrays[0] if k.startswith('pred/')):
      task = key.removeprefix('pred/')
      metrics[f'{p} {task} acc'] = retrieval.head_accuracy(arrays, task)[0]
    return metrics, ' + '.join(_meta(f) for f in files)
  raise StudyError(f'score kind {score.kind!r}: choose retrieval, probe or heads')


def seed_spread(values):
  """Population std over seeds; NaN for one seed (no spread to compare with)."""
  return statistics.pstdev(values) if len(values) > 1 else float('nan')


def cell_done(root, cell) -> bool:
  return all(fileio.path(_marker(root, j)).exists() for j in cell.jobs)


def previous_cell(previous, question, cell):
  """(per-seed metrics, {score: evaluated-on}) that `previous` (a study.json, loaded) recorded
  for `cell` of `question`, or None when it did not finish every job the cell needs."""
  if not previous or not set(cell.jobs) <= set(previous.get('job_seconds', {})):
    return None
  r = previous['results'].get(question.key)
  row = next((row for row in (r or {}).get('conditions', ())
              if row['condition'] == cell.condition and cell.seed in row['seeds']), None)
  if row is None:
    return None
  i = row['seeds'].index(cell.seed)
  metrics = {m: v['values'][i] for m, v in row['metrics'].items()
             if len(v['values']) == len(row['seeds'])}  # Else not per seed: not taken.
  return metrics, r['evaluated_on']


def _carried(root, question, cell, previous):
  return not cell_done(root, cell) and previous_cell(previous, question, cell) is not None


def without_carried(root, questions, previous):
  """The questions with only the cells this study makes itself, not those taken from `previous`
  (whose jobs are then not run)."""
  return [dataclasses.replace(q, cells=tuple(c for c in q.cells
                                             if not _carried(root, q, c, previous)))
          for q in questions]


def carried_jobs(root, questions, previous) -> dict:
  """{job name: seconds it took then} of the jobs behind the cells taken from `previous`."""
  return {j: previous['job_seconds'][j] for q in questions for c in q.cells
          if _carried(root, q, c, previous) for j in c.jobs}


def aggregate(root, questions, previous=None) -> dict:
  """Every question's table from what its finished jobs wrote, or else `previous` recorded (a
  cell in neither is listed as missing). Raises StudyError when two cells of one question were
  scored on different splits."""
  out = {}
  for q in questions:
    evaluated_on, per_condition, missing, carried = {}, {}, [], {}
    for cell in q.cells:
      if cell_done(root, cell):
        values, scored, where = {}, [], ''
        for score in cell.scores:
          metrics, on = read_score(root, score)
          values.update(metrics)
          scored.append((f'{score.prefix} {score.kind}', on))
      elif (old := previous_cell(previous, q, cell)) is not None:
        values, old_on = old
        scored = [(f'{s.prefix} {s.kind}', old_on.get(f'{s.prefix} {s.kind}'))
                  for s in cell.scores]
        carried.setdefault(cell.condition, []).append(cell.seed)
        where = ' (previous report)'
      else:
        missing.append(f'{cell.condition} seed {cell.seed}')
        continue
      for what, on in scored:
        first = evaluated_on.setdefault(what, (on, f'{cell.condition} seed {cell.seed}{where}'))
        if first[0] != on:
          raise StudyError(
              f'question {q.key!r}: {what!r} of {cell.condition} seed {cell.seed}{where} was '
              f'scored on {on!r}, but {first[1]} on {first[0]!r}: every run of a question must '
              'be evaluated on the same splits')
      per_condition.setdefault(cell.condition, {})[cell.seed] = values
    conditions = []
    for name in dict.fromkeys(c.condition for c in q.cells):
      seeds = per_condition.get(name, {})
      row = {'condition': name, 'seeds': sorted(seeds), 'carried': carried.get(name, []),
             'metrics': {}}
      for m in q.metrics:
        vals = [seeds[s][m] for s in sorted(seeds) if m in seeds[s]]
        if vals:
          row['metrics'][m] = {'mean': statistics.fmean(vals), 'std': seed_spread(vals),
                               'values': vals}
      row['paired'] = {}
      for a, b in q.paired:
        diffs = [seeds[s][a] - seeds[s][b] for s in sorted(seeds) if a in seeds[s] and b in seeds[s]]
        if diffs:
          mean, std = statistics.fmean(diffs), seed_spread(diffs)
          row['paired'][f'{a} - {b}'] = {'mean': mean, 'std': std, 'values': diffs,
                                         'finding': is_finding(mean, std)}
      conditions.append(row)
    comparisons = []
    ref = next((r for r in conditions if r['condition'] == q.reference), None)
    for row in conditions:
      if ref is None or row is ref:
        continue
      for m in q.metrics:
        if m in row['metrics'] and m in ref['metrics']:
          a, b = row['metrics'][m], ref['metrics'][m]
          delta, spread = a['mean'] - b['mean'], a['std'] + b['std']
          comparisons.append({'condition': row['condition'], 'reference': q.reference,
                              'metric': m, 'delta': delta, 'spread': spread,
                              'finding': is_finding(delta, spread)})
    out[q.key] = {'title': q.title, 'notes': q.notes, 'metrics': list(q.metrics),
                  'reference': q.reference,
                  'evaluated_on': {p: on for p, (on, _) in evaluated_on.items()},
                  'conditions': conditions, 'comparisons': comparisons, 'missing': missing}
  return out


def is_finding(delta, spread):
  """A difference is a finding only where its size exceeds the spread (the seed stds added)."""
  return bool(spread == spread and abs(delta) > spread)  # spread NaN (one seed): never


# --- Report ----------------------------------------------------------------------------------

def _cell(m):
  return f'{m["mean"]:.3f} ± {m["std"]:.3f}' if m['std'] == m['std'] else f'{m["mean"]:.3f}'


def render(results, *, header: str, readings: dict | None = None) -> str:
  """STUDY.md: per question the setup, a mean ± std table, the comparisons and their verdicts."""
  lines = [header.rstrip(), '']
  for key, r in results.items():
    lines += [f'## {r["title"]}', '']
    if r['notes']:
      lines += [r['notes'], '']
    for prefix, on in r['evaluated_on'].items():
      lines.append(f'- {prefix}: {on}')
    if r['missing']:
      lines.append(f'- not run yet: {", ".join(r["missing"])}')
    lines += ['', f'![{key}](study_{key}.png)', '']
    lines.append('| condition | seeds | ' + ' | '.join(r['metrics']) + ' |')
    lines.append('| --- | --- |' + ' ---: |' * len(r['metrics']))
    for row in r['conditions']:
      cells = [_cell(row['metrics'][m]) if m in row['metrics'] else '–' for m in r['metrics']]
      seeds = str(len(row['seeds'])) + (f' ({len(row["carried"])} carried)'
                                        if row.get('carried') else '')
      lines.append(f'| {row["condition"]} | {seeds} | ' + ' | '.join(cells) + ' |')
    if r['comparisons']:
      lines += ['', f'Against `{r["reference"]}` (a finding: |difference| > the two seed '
                    'spreads added):', '', '| condition | metric | difference | spread | verdict |',
                '| --- | --- | ---: | ---: | --- |']
      for c in r['comparisons']:
        verdict = ('**finding**: ' + ('higher' if c['delta'] > 0 else 'lower')) if c['finding'] \
            else 'within spread'
        spread = f'{c["spread"]:.3f}' if c['spread'] == c['spread'] else '– (one seed)'
        lines.append(f'| {c["condition"]} | {c["metric"]} | {c["delta"]:+.3f} | {spread} | '
                     f'{verdict} |')
    paired = [(row['condition'], name, p) for row in r['conditions']
              for name, p in row['paired'].items()]
    if paired:
      lines += ['', 'Per-seed differences within each model (a finding: |mean| > their std):', '',
                '| condition | difference | mean ± std | verdict |', '| --- | --- | ---: | --- |']
      for cond, name, p in paired:
        verdict = ('**finding**' if p['finding'] else 'within spread')
        lines.append(f'| {cond} | {name} | {_cell(p)} | {verdict} |')
    if readings and readings.get(key):
      lines += ['', '**Reading.** ' + readings[key].strip()]
    lines.append('')
  return '\n'.join(lines)


def plot(results, out_dir):
  """study_<key>.png per question: each metric's mean per condition, seed std as error bars."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  for key, r in results.items():
    rows = [row for row in r['conditions'] if row['metrics']]
    if not rows:
      continue
    metrics = r['metrics']
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(metrics) * len(rows) / 2 + 2), 3.6))
    width = 0.8 / len(rows)
    x = np.arange(len(metrics))
    for i, row in enumerate(rows):
      means = [row['metrics'].get(m, {}).get('mean', np.nan) for m in metrics]
      stds = [row['metrics'].get(m, {}).get('std', np.nan) for m in metrics]
      ax.bar(x + (i - (len(rows) - 1) / 2) * width, means, width, yerr=np.nan_to_num(stds),
             capsize=3, label=f'{row["condition"]} ({len(row["seeds"])} seeds)')
    ax.set_xticks(x, metrics, rotation=20, ha='right', fontsize=8)
    ax.set_ylabel('mean over seeds (± std)')
    ax.set_title(r['title'], fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with fileio.atomic_file(fileio.join(out_dir, f'study_{key}.png')) as f:
      fig.savefig(f, format='png', dpi=110)
    plt.close(fig)
