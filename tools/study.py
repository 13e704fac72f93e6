"""Runs the study grid of configs/study.py and writes its report (what `make study` does).

  python tools/study.py [--root runs/study] [--out study] [--questions labels,loss]
                        [--seeds 3] [--scale 1] [--previous study/study.json]
                        [--dry_run] [--report_only]

Each run is a normal bigvis workdir under ROOT (train, embed, evaluate: the real command line);
a run whose job.json is there is skipped, an interrupted one is resumed (the trainer restores its
checkpoint), so the same command continues a grid after a kill. After every finished job, OUT
gets the report so far: STUDY.md (per question: mean ± seed std, each comparison called a finding
only where it exceeds the seed spreads), study.json (every figure, per seed) and study_<q>.png.
ROOT and OUT may be buckets. --report_only rewrites the report from what ROOT holds.

--previous grows an earlier report: cells ROOT has not finished are taken from that study.json
(its per-seed figures; only where it ran every job the cell needs) and their jobs are not run,
so a new question or condition can be added to a committed study without re-running the rest.
"""
import argparse
import json
import os
import platform
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bigvis import fileio, study
from bigvis.configs import study as grid


def _machine():
  cores = os.cpu_count()
  try:
    with open('/proc/meminfo') as f:
      mem = f'{int(f.readline().split()[1]) / 2**20:.0f} GiB'
  except OSError:
    mem = '?'
  return f'{platform.system()} {platform.machine()}, {cores} cores, {mem}, Python {platform.python_version()}'


def _readings(out):
  """Hand-written readings of the results, kept across report rewrites: READINGS.json in OUT
  ({question: text}); a reading belongs to the numbers it was written for, so it is shown with
  the commit those numbers came from."""
  path = fileio.join(out, 'READINGS.json')
  return json.loads(fileio.read_text(path)) if fileio.path(path).exists() else {}


def write_report(root, out, questions, args):
  results = study.aggregate(root, questions, args.previous)
  markers, own_jobs = {}, study.collect_jobs(
      study.without_carried(root, questions, args.previous), args.jobs)
  for job in own_jobs:
    path = fileio.join(root, job.name, 'job.json')
    if fileio.path(path).exists():
      markers[job.name] = json.loads(fileio.read_text(path))
  carried = study.carried_jobs(root, questions, args.previous)
  commits = sorted({m['commit'] for m in markers.values()})
  last_report = fileio.join(out, 'study.json')
  if args.report_only and fileio.path(last_report).exists():  # Keep the command that ran the jobs.
    args.command = json.loads(fileio.read_text(last_report))['command']
  run_seconds = sum(m['seconds'] for m in markers.values())
  header = '\n'.join([
      '# The paper\'s findings in miniature', '',
      'Beal et al., *Billion-scale Pretraining with Vision Transformers for Multi-Task Visual '
      'Representations* (WACV 2022), re-run at laptop scale by `make study` '
      f'(`{args.command}`); the grid is configs/study.py.', '',
      f'- machine: {_machine()}',
      *([f'- git HEAD when each job finished (`+changes`: uncommitted edits then): '
         f'{", ".join(commits) or "none yet"}',
         f'- jobs finished: {len(markers)} of {len(own_jobs)}; their wall time '
         f'{run_seconds / 60:.1f} min'] if own_jobs or not carried else []),
      *([f'- carried from the previous report (`--previous {args.previous_path}`, git HEAD '
         f'{", ".join(args.previous["commits"])}, machine {args.previous["machine"]}): the '
         f'cells of {len(carried)} jobs ({sum(carried.values()) / 60:.1f} min then) this run did '
         'not repeat; the seeds column counts them'] if carried else []),
      f'- seeds per cell: {args.seeds}; scale {args.scale:g}; spread = population std over '
      'seeds; a difference is a **finding** only where it exceeds the two spreads added.',
      '- every figure is on a held-out split (emoji test, OpenClipArt test, Fashion-MNIST '
      'test); nothing was '
      'chosen on them.'])
  fileio.path(out).mkdir(parents=True, exist_ok=True)
  fileio.write_text_atomic(fileio.join(out, 'STUDY.md'),
                           study.render(results, header=header, readings=_readings(out)))
  fileio.write_text_atomic(fileio.join(out, 'study.json'), json.dumps(dict(
      command=args.command, machine=_machine(),
      commits=sorted(set(commits) | set(args.previous['commits'] if carried else ())),
      job_seconds={**carried, **{k: m['seconds'] for k, m in markers.items()}},
      seeds=args.seeds, scale=args.scale,
      results=results), indent=1) + '\n')
  study.plot(results, out)
  return results


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--root', default='runs/study', help='where the runs go')
  p.add_argument('--out', default='study', help='where STUDY.md, study.json and the plots go')
  p.add_argument('--questions', default=','.join(grid.QUESTIONS),
                 help=f'comma-separated, from {",".join(grid.QUESTIONS)}')
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--scale', type=float, default=1.0, help='multiplies every schedule')
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  p.add_argument('--report_only', action='store_true', help='rewrite the report, run nothing')
  p.add_argument('--previous', help="an earlier study.json whose cells stand in for those ROOT "
                 "has not finished (they are not run)")
  a = p.parse_args(argv)
  if a.seeds < 1 or a.scale <= 0:
    p.error('--seeds must be >= 1 and --scale > 0')
  a.command = shlex.join(['python', 'tools/study.py', *(sys.argv[1:] if argv is None else argv)])
  a.root, a.out = fileio.absolute(a.root), fileio.absolute(a.out)
  questions, a.jobs = grid.get_study(a.scale, a.seeds, tuple(a.questions.split(',')))
  a.previous_path, a.previous = a.previous, None
  if a.previous_path:
    if not fileio.path(a.previous_path).exists():
      p.error(f'--previous {a.previous_path}: no such file')
    a.previous = json.loads(fileio.read_text(a.previous_path))
  jobs = study.collect_jobs(sorted(study.without_carried(a.root, questions, a.previous),
                                   key=lambda q: grid.RUN_ORDER.index(q.key)), a.jobs)
  if a.dry_run:
    study.run_jobs(a.root, jobs, dry_run=True, cwd=REPO)
    return
  if not a.report_only:
    report = lambda: write_report(a.root, a.out, questions, a)
    # Runs of one shape compile the same programs: JAX's persistent cache compiles each once.
    env = dict(os.environ)
    env.setdefault('JAX_COMPILATION_CACHE_DIR', fileio.join(a.root, 'jax_cache'))
    study.run_jobs(a.root, jobs, cwd=REPO, env=env, after_job=report, report_dir=a.out)
  write_report(a.root, a.out, questions, a)
  print(f'Report: {fileio.join(a.out, "STUDY.md")} (and study.json, study_*.png)')


if __name__ == '__main__':
  main()
