"""Kill soak: SIGKILL the trainer at random moments, some inside an async checkpoint write, restart
it each time, and check that it ends bit-identical to a run that was never killed.

    .venv/bin/python tests/soak/kill_soak.py                        # 16 kills, 90 steps: ~3-5 min
    .venv/bin/python tests/soak/kill_soak.py --kills 3 --steps 24   # smoke run: ~1.5 min

The trainer runs as a child process (`python -m bigvis.train`) on the tests' tiny config
(tests/tiny_config.py: a 2-layer ViT at 32 px, three tasks, batch 8, 8 simulated CPU devices) over
a synthetic shapes corpus (96 records, made with `bigvis.synthetic.make_shapes_corpus`), with
async checkpoints every `--every` steps (3) and the default `keep_checkpoints` (3). All runs share
JAX's persistent compilation cache (`--no-compile-cache` to not), so a restart takes seconds.

1. Reference: one uninterrupted run of `--steps`, keeping every checkpoint. The bench polls its
   checkpoint dir to time each async write (from Orbax's `<step>.orbax-checkpoint-tmp` dir
   appearing to its rename to `<step>`).
2. Soak: `--kills` times, start the trainer (it resumes from its newest checkpoint) and SIGKILL it.
   A `--in-write` share of the kills (half) wait for the run's 1st, 2nd or 3rd new
   `*.orbax-checkpoint-tmp` dir (from the 2nd on, Orbax also deletes the oldest step then) and
   kill after a random delay up to the reference's median write time; the others kill at a
   uniform random time up to `--window` seconds (5) after the start of the run. A kill landed in a
   "write" when it left a tmp dir behind, else in "steps" once the progress bar was up, else in
   "startup" (imports, data, restore, model). After every kill, every committed step dir is
   restored and compared, leaf by leaf, with the reference's state at that step (params,
   optimizer state, step, counters) and its data-iterator JSON: none may restore to anything else.
3. A last restart runs to the end: final params and optimizer state, the data position and every
   metrics.jsonl loss must equal the reference's bit for bit.
4. SIGTERM: `--sigterm` times, start a long run, wait until two steps after its first own
   checkpoint, send SIGTERM and time until the process has exited (it saves a checkpoint at the
   next step and waits for the write), and until it logged that save.

Randomness comes from `--seed`. Writes `<out>.json` and `<out>.md` (default
tests/soak/kill_soak) and exits 1 when anything differs. See tests/soak/README.md.
"""
import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

SOAK = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(SOAK))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import machine  # noqa: E402  (bench/machine.py)
TMP = '.orbax-checkpoint-tmp'


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=90,
                 help='total train steps of every run: leave room for the kills (~5 steps each)')
  p.add_argument('--every', type=int, default=3, help='checkpoint_every_steps')
  p.add_argument('--kills', type=int, default=16)
  p.add_argument('--in-write', type=float, default=0.5,
                 help='share of the kills aimed at an async checkpoint write')
  p.add_argument('--window', type=float, default=5.0,
                 help='the other kills land at a uniform random time this many seconds from the '
                      "start of the run (a restart's start-up is ~4 s on 2 cores)")
  p.add_argument('--sigterm', type=int, default=3, help='SIGTERM timings (median reported)')
  p.add_argument('--devices', type=int, default=8, help='simulated CPU devices of the trainer')
  p.add_argument('--records', type=int, default=96)
  p.add_argument('--no-compile-cache', dest='compile_cache', action='store_false',
                 help="don't share JAX's persistent compilation cache between the runs")
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--workdir', default=os.path.join(ROOT, 'runs', 'bench_kill_soak'),
                 help='wiped at start')
  p.add_argument('--out', default=os.path.join(SOAK, 'kill_soak'))
  return p.parse_args()


ARGS = parse_args()
# The bench restores the trainer's sharded checkpoints itself: same device count, before jax.
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={ARGS.devices}'

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from bigvis import fileio, metrics, synthetic  # noqa: E402


# --- The trainer as a child process.

def start(workdir, *flags, steps=None):
  os.makedirs(os.path.join(workdir, 'logs'), exist_ok=True)
  n = len(os.listdir(os.path.join(workdir, 'logs')))
  log = open(os.path.join(workdir, 'logs', f'run{n:02d}.log'), 'w')
  cmd = [sys.executable, '-m', 'bigvis.train', '--config',
         os.path.join(ROOT, 'tests', 'tiny_config.py') + f':data_dir={ARGS.workdir}/data',
         '--workdir', workdir, f'--config.total_steps={steps or ARGS.steps}',
         f'--config.checkpoint_every_steps={ARGS.every}', *flags]
  env = dict(os.environ, PYTHONPATH=ROOT)
  if ARGS.compile_cache:  # Restarts then skip the compile (most of a start on 2 cores).
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.join(ARGS.workdir, 'jax_cache'),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  proc.log_path, proc.started = log.name, time.perf_counter()
  log.close()
  return proc


def log_text(path):
  with open(path, errors='replace') as f:
    return f.read()


def committed(ckpt_dir):
  """Steps Orbax has committed (it renames `<step>.orbax-checkpoint-tmp` to `<step>`)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def tmp_dirs(ckpt_dir):
  """Unfinished step dirs (Orbax's `<step>.orbax-checkpoint-tmp`)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(d for d in os.listdir(ckpt_dir) if TMP in d)


def last_metrics_step(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    try:
      return json.loads(line)['step']
    except (json.JSONDecodeError, KeyError):  # Torn by a kill or being written.
      continue
  return 0


def resumed_from(proc):
  """The step the run restored, 0 if it started afresh, None if it was killed before it knew."""
  text = log_text(proc.log_path)
  for line in text.splitlines():
    if 'Restored step ' in line:
      return int(line.split('Restored step ')[1].split()[0])
  return 0 if _BAR.search(text) else None


# --- Checkpoint contents.

_CHECKPOINTER = None


def load_step(step_dir):
  """(flat {leaf path: numpy}, data-iterator JSON) of a committed step dir."""
  global _CHECKPOINTER
  _CHECKPOINTER = _CHECKPOINTER or ocp.StandardCheckpointer()
  state = _CHECKPOINTER.restore(os.path.join(step_dir, 'state'))
  flat = {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(state)}
  with open(os.path.join(step_dir, 'data', 'process_0-of-1.json')) as f:
    return flat, json.load(f)


def compare(flat, data, ref):
  """'equal', or what differs from the reference's (flat, data)."""
  ref_flat, ref_data = ref
  if flat.keys() != ref_flat.keys():
    return f'other leaves: {sorted(flat.keys() ^ ref_flat.keys())[:5]}'
  differ = [k for k in ref_flat if flat[k].dtype != ref_flat[k].dtype
            or not np.array_equal(flat[k], ref_flat[k])]
  if differ:
    return f'{len(differ)} leaves differ, e.g. {differ[:3]}'
  return 'equal' if data == ref_data else f'data position {data} != {ref_data}'


def check_all(ckpt_dir, reference):
  """Every committed step dir against the reference: {step: 'equal' | what differs}."""
  out = {}
  for step in committed(ckpt_dir):
    try:
      out[step] = compare(*load_step(os.path.join(ckpt_dir, str(step))), reference[step])
    except Exception as e:  # pylint: disable=broad-except  (reported, and fails the soak)
      out[step] = f'unreadable: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}'
  return out


# --- The phases.

def reference_run(workdir):
  """An uninterrupted run keeping every checkpoint; times each async write from the outside."""
  proc = start(workdir, f'--config.keep_checkpoints={ARGS.steps}')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  seen, writes = {}, []
  while proc.poll() is None:
    now, current = time.perf_counter(), set(tmp_dirs(ckpt_dir))
    for name in current - seen.keys():
      seen[name] = now
    for name in seen.keys() - current:
      writes.append(now - seen.pop(name))
    time.sleep(0.002)
  if proc.returncode != 0:
    raise SystemExit(f'reference run failed (rc {proc.returncode}):\n'
                     f'{log_text(proc.log_path)[-3000:]}')
  seconds = time.perf_counter() - proc.started
  steps = committed(ckpt_dir)
  reference = {s: load_step(os.path.join(ckpt_dir, str(s))) for s in steps}
  return reference, dict(seconds=round(seconds, 1), checkpoints=steps,
                         write_seconds=[round(w, 4) for w in writes])


def kill_once(workdir, mode, rng, write_s):
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # Tmp dirs left by the last kill: the new run deletes them when it starts, long before it
  # writes a checkpoint of its own (which may reuse a name).
  stale = set(tmp_dirs(ckpt_dir))
  proc = start(workdir)
  delay = rng.uniform(0, ARGS.window) if mode == 'random' else None
  # In the 1st, 2nd or 3rd write of the run: from the 2nd on, Orbax also deletes the oldest step.
  last = (committed(ckpt_dir) or [0])[-1]  # Where the run will resume.
  nth, seen, previous = min(rng.randint(1, 3), (ARGS.steps - last) // ARGS.every), 0, set()
  while mode == 'in_write' and proc.poll() is None:
    current = set(tmp_dirs(ckpt_dir))
    stale &= current
    seen += len(current - stale - previous)
    previous = current
    if seen >= nth:
      delay = rng.uniform(0, write_s)
      break
    time.sleep(0.002)
  if delay is not None:
    since = proc.started if mode == 'random' else time.perf_counter()
    time.sleep(max(0.0, delay - (time.perf_counter() - since)))
    proc.send_signal(signal.SIGKILL)
  proc.wait()
  left = tmp_dirs(ckpt_dir)
  bar = _BAR.findall(log_text(proc.log_path))
  return dict(mode=mode, nth_write=nth if mode == 'in_write' else None,
              resumed_from=resumed_from(proc), delay_s=round(delay or 0, 4),
              killed_after_s=round(time.perf_counter() - proc.started, 2),
              returncode=proc.returncode, killed=proc.returncode == -signal.SIGKILL,
              # Before the progress bar the trainer writes nothing: a tmp dir is the last run's.
              phase='startup' if not bar else 'write' if left else 'steps',
              step_at_kill=int(bar[-1]) if bar else None, tmp_dirs_left=left,
              committed=committed(ckpt_dir))


# The trainer's progress bar: `train: ... | 17/60 [`, the step count after each step.
_BAR = re.compile(r'\| *(\d+)/\d+ \[')
# The trainer's absl line (local time), maybe behind a progress bar on the same line.
_PREEMPTED = re.compile(r'W(\d{4} \d\d:\d\d:\d\d\.\d{6}) .*Preempted at step (\d+)')


def sigterm_once(workdir):
  """A long run, SIGTERMed two steps after its first own checkpoint (so the save path is warm, as
  in a preemption mid-run): seconds until exit, and until the trainer logged its save."""
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  before = set(committed(ckpt_dir))
  proc = start(workdir, steps=100000)
  target = None
  while proc.poll() is None:
    if target is None:
      new = set(committed(ckpt_dir)) - before
      target = max(new) + 2 if new else None
    elif last_metrics_step(workdir) >= target:
      break
    time.sleep(0.01)
  at_step = last_metrics_step(workdir)
  t_wall, t0 = time.time(), time.perf_counter()
  proc.send_signal(signal.SIGTERM)
  proc.wait()
  seconds = time.perf_counter() - t0
  found = _PREEMPTED.search(log_text(proc.log_path))
  logged = found and datetime.datetime.strptime(
      f'{time.localtime().tm_year}{found[1]}', '%Y%m%d %H:%M:%S.%f').timestamp()
  return dict(seconds=round(seconds, 2), returncode=proc.returncode, metrics_step_at_signal=at_step,
              preempted_step=found and int(found[2]),
              saved=bool(found) and int(found[2]) in committed(ckpt_dir),
              to_save_logged_s=found and round(logged - t_wall, 2))


def machine_info():
  return machine.describe(('jax', 'orbax-checkpoint', 'grain', 'flax', 'optax'))


def dash(value):
  return '-' if value is None else value


def aimed(kill):
  return f"write {kill['nth_write']}" if kill['mode'] == 'in_write' else 'random time'


def markdown(r):
  m, s, a = r['machine'], r['summary'], r['args']
  lines = [
      '# Kill soak: SIGKILL at random moments, restart, compare bit for bit', '',
      f"{r['time']}: {m['cpu']}, {m['cores']} cores, jax {m['versions']['jax']}, orbax-checkpoint "
      f"{m['versions']['orbax-checkpoint']}, grain {m['versions']['grain']}, Python {m['python']}. "
      f"Tiny config, {a['devices']} simulated devices, {a['steps']} steps, async checkpoints "
      f"every {a['every']} (keep 3), seed {a['seed']}. Command: `{r['command']}`", '',
      '| kill | aimed at | resumed from | killed after s | landed in | step shown '
      '| tmp dirs after | committed steps after | all restore to the reference |',
      '|---:|---|---:|---:|---|---:|---|---|---|']
  for i, k in enumerate(r['kills'], 1):
    bad = {st: v for st, v in k['checks'].items() if v != 'equal'}
    lines.append(
        f"| {i} | {aimed(k)} | {dash(k['resumed_from'])} | {k['killed_after_s']} | "
        f"{k['phase']} | {dash(k['step_at_kill'])} | "
        f"{', '.join(k['tmp_dirs_left']) or '-'} | {', '.join(map(str, k['committed']))} | "
        f"{'yes' if not bad else json.dumps(bad)} |")
  lines += ['', "Resumed from: '-' when killed before the restore. Step shown: the progress bar's "
            "last count. A start-up kill's tmp dirs are the previous run's (each run deletes them "
            "when its checkpoint manager starts)."]
  w, t = r['reference']['write_seconds'], r['sigterm']
  w_text = f"{statistics.median(w):.3f} ({max(w):.3f})" if w else '-'
  lines += [
      '', '| result | value |', '|---|---|',
      f"| kills: in a checkpoint write / in steps / in start-up | {s['kills']}: "
      f"{s['kills_in']['write']} / {s['kills_in']['steps']} / {s['kills_in']['startup']} |",
      f"| restarts | {s['restarts']} |",
      f"| steps trained in all (from the progress bars), of {a['steps']} | "
      f"{s['steps_trained']} |",
      f"| committed step dirs checked after the kills and at the end, equal to the reference | "
      f"{s['step_dirs_checked']}, {s['step_dirs_equal']} |",
      f"| final params / optimizer state / step / data position equal | "
      f"{s['final_params_equal']} / {s['final_opt_state_equal']} / {s['final_step_equal']} / "
      f"{s['final_data_equal']} |",
      f"| metrics.jsonl: one row per step, losses equal | {s['metrics_equal']} |",
      f"| unreadable-checkpoint warnings, dirs moved aside | {s['unreadable_warnings']}, "
      f"{len(s['moved_aside'])} |",
      f"| reference run s | {r['reference']['seconds']} |",
      f"| async checkpoint write s, median (max) of {len(w)} | {w_text} |",
      f"| SIGTERM to exit s, median (all) | {t['median_s']} "
      f"({', '.join(str(x['seconds']) for x in t['runs'])}) |",
      f"| SIGTERM to the trainer's 'Preempted at step' log line s, median | "
      f"{t['median_to_save_logged_s']} |",
      f"| total s | {s['seconds']} |", '',
      f"**{'OK' if r['ok'] else 'FAILED: ' + '; '.join(r['failures'])}**", '']
  return '\n'.join(lines)


def main():
  t_start = time.perf_counter()
  rng = random.Random(ARGS.seed)
  shutil.rmtree(ARGS.workdir, ignore_errors=True)
  synthetic.make_shapes_corpus(os.path.join(ARGS.workdir, 'data'), num_records=ARGS.records,
                               image_size=32, num_shards=2, seed=0, name='train')

  ref_dir = os.path.join(ARGS.workdir, 'reference')
  reference, ref_info = reference_run(ref_dir)
  write_s = statistics.median(ref_info['write_seconds']) if ref_info['write_seconds'] else 0.05
  print(f"reference: {ref_info['seconds']} s, checkpoints {ref_info['checkpoints']}, async write "
        f"median {write_s:.3f} s", flush=True)

  soak_dir = os.path.join(ARGS.workdir, 'soak')
  ckpt_dir = os.path.join(soak_dir, 'checkpoints')
  n_write = round(ARGS.kills * ARGS.in_write)
  modes = ['in_write'] * n_write + ['random'] * (ARGS.kills - n_write)
  rng.shuffle(modes)
  kills, failures = [], []
  for i, mode in enumerate(modes, 1):
    k = kill_once(soak_dir, mode, rng, write_s)
    k['checks'] = check_all(ckpt_dir, reference)
    kills.append(k)
    print(f"kill {i:2d} ({mode:8s}): resumed from {k['resumed_from']}, after "
          f"{k['killed_after_s']:5.1f} s in {k['phase']:7s} (bar at step {k['step_at_kill']}), "
          f"left {k['tmp_dirs_left'] or 'no tmp dir'}, committed {k['committed']}: "
          f"{'all equal' if set(k['checks'].values()) <= {'equal'} else k['checks']}", flush=True)
    if not k['killed']:
      failures.append(f"run {i} exited (rc {k['returncode']}) before it was killed")
      break

  final = start(soak_dir)
  final.wait()
  if final.returncode != 0:
    failures.append(f'final run failed (rc {final.returncode})')
  final_checks = check_all(ckpt_dir, reference)
  flat, data = load_step(os.path.join(ckpt_dir, str(ARGS.steps))) if (
      ARGS.steps in committed(ckpt_dir)) else ({}, None)
  ref_flat, ref_data = reference[ARGS.steps]
  same = lambda part: flat.keys() == ref_flat.keys() and all(
      flat[k].dtype == v.dtype and np.array_equal(flat[k], v)
      for k, v in ref_flat.items() if k.startswith(f"['{part}']"))
  rows, ref_rows = metrics.read_metrics(soak_dir), metrics.read_metrics(ref_dir)
  logs = ''.join(log_text(os.path.join(soak_dir, 'logs', f))
                 for f in sorted(os.listdir(os.path.join(soak_dir, 'logs'))))

  term_dir = os.path.join(ARGS.workdir, 'sigterm')
  terms = [sigterm_once(term_dir) for _ in range(ARGS.sigterm)]
  for t in terms:
    if t['returncode'] != 0 or not t['saved']:
      failures.append(f"a SIGTERM run exited with rc {t['returncode']}, checkpoint of step "
                      f"{t['preempted_step']} saved: {t['saved']}")

  checked = [v for k in kills for v in k['checks'].values()] + list(final_checks.values())
  trained = ARGS.steps - (resumed_from(final) or 0) + sum(
      max(0, (k['step_at_kill'] or 0) - (k['resumed_from'] or 0)) for k in kills)
  summary = dict(
      kills=sum(k['killed'] for k in kills),
      kills_in={p: sum(k['phase'] == p for k in kills) for p in ('write', 'steps', 'startup')},
      restarts=len(kills), steps_trained=trained,
      step_dirs_checked=len(checked), step_dirs_equal=sum(v == 'equal' for v in checked),
      final_params_equal=same('params'), final_opt_state_equal=same('opt_state'),
      final_step_equal=same('step'), final_data_equal=data == ref_data,
      metrics_equal=[r['step'] for r in rows] == list(range(1, ARGS.steps + 1))
      and [r['loss'] for r in rows] == [r['loss'] for r in ref_rows],
      unreadable_warnings=logs.count('is unreadable'),
      moved_aside=sorted(d for d in os.listdir(ckpt_dir) if d.startswith('corrupt-')),
      seconds=round(time.perf_counter() - t_start, 1))
  if summary['step_dirs_equal'] != summary['step_dirs_checked']:
    failures.append('a committed step dir restores to something else, or not at all')
  for key in ('final_params_equal', 'final_opt_state_equal', 'final_step_equal',
              'final_data_equal', 'metrics_equal'):
    if not summary[key]:
      failures.append(f'{key} is false')
  if summary['kills'] < ARGS.kills:
    failures.append(f"only {summary['kills']} of {ARGS.kills} kills landed")
  run_seconds = [t['seconds'] for t in terms]
  result = dict(
      time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      command=' '.join(['.venv/bin/python', os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
      machine=machine_info(), args=vars(ARGS), loadavg_after=[round(x, 2) for x in os.getloadavg()],
      reference=ref_info, kills=kills,
      final=dict(returncode=final.returncode, resumed_from=resumed_from(final),
                 checks=final_checks),
      sigterm=dict(runs=terms, median_s=round(statistics.median(run_seconds), 2) if terms else None,
                   median_to_save_logged_s=round(statistics.median(
                       t['to_save_logged_s'] or 0 for t in terms), 2) if terms else None),
      summary=summary, ok=not failures, failures=failures)
  os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
  fileio.write_text_atomic(ARGS.out + '.json', json.dumps(result, indent=1, default=str))
  fileio.write_text_atomic(ARGS.out + '.md', markdown(result))
  print(markdown(result))
  sys.exit(0 if not failures else 1)


if __name__ == '__main__':
  main()
