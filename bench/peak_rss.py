"""Peak memory of a command and all its child processes together (what the machine must hold).

    .venv/bin/python bench/peak_rss.py [--every 0.2] [--log main.tsv] -- CMD ARG...

Samples the summed resident set size (VmRSS from /proc) of the command's whole process tree
every `--every` seconds, and prints one JSON line: exit status, peak tree RSS in MB, peak of the
main process alone, wall seconds. `/usr/bin/time -v` reports only the largest single process,
which hides worker pools (label mining runs one per core). `--log` writes every sample (seconds,
main MB, tree MB) as TSV, to see which phase holds the memory.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def _rss_mb(pid):
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def _tree(pid):
  """pid and all its live descendants."""
  children = {}
  for name in os.listdir('/proc'):
    if name.isdigit():
      try:
        with open(f'/proc/{name}/stat') as f:
          ppid = int(f.read().rsplit(')', 1)[1].split()[1])
      except OSError:
        continue
      children.setdefault(ppid, []).append(int(name))
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    todo += children.get(p, [])
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--every', type=float, default=0.2, help='seconds between samples')
  ap.add_argument('--log', help='TSV of every sample: seconds, main MB, tree MB')
  ap.add_argument('cmd', nargs=argparse.REMAINDER, help='-- then the command')
  a = ap.parse_args()
  cmd = a.cmd[1:] if a.cmd[:1] == ['--'] else a.cmd
  if not cmd:
    ap.error('no command given')
  log = open(a.log, 'w') if a.log else None
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd)
  peak = peak_main = 0.0
  while proc.poll() is None:
    main_mb = _rss_mb(proc.pid)
    tree_mb = sum(_rss_mb(p) for p in _tree(proc.pid))
    peak, peak_main = max(peak, tree_mb), max(peak_main, main_mb)
    if log:
      log.write(f'{time.perf_counter() - t0:.1f}\t{main_mb:.0f}\t{tree_mb:.0f}\n')
    time.sleep(a.every)
  if log:
    log.close()
  print(json.dumps(dict(command=cmd, returncode=proc.returncode, peak_tree_rss_mb=round(peak),
                        peak_main_rss_mb=round(peak_main),
                        wall_seconds=round(time.perf_counter() - t0, 1))))
  return proc.returncode


if __name__ == '__main__':
  sys.exit(main())
