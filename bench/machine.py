"""What a benchmark ran on, for its results JSON: CPU, cores, memory, Python, package versions, commit."""
import importlib.metadata
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def describe(packages, **extra):
  """CPU, cores (and those this process may use), memory, platform, Python, the versions of
  `packages` (None when not installed), the commit; `extra` adds script-specific fields."""
  cpu = 'unknown'
  with open('/proc/cpuinfo') as f:
    for line in f:
      if line.startswith('model name'):
        cpu = line.split(':', 1)[1].strip()
        break
  with open('/proc/meminfo') as f:
    mem_kb = int(f.readline().split()[1])
  git = lambda *a: subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True).stdout
  versions = {}
  for p in packages:
    try:
      versions[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      versions[p] = None
  return dict(cpu=cpu, cores=os.cpu_count(), cores_usable=len(os.sched_getaffinity(0)),
              memory_gb=round(mem_kb / 2**20, 1), platform=platform.platform(),
              python=platform.python_version(), versions=versions,
              git_commit=git('rev-parse', 'HEAD').strip() or None,
              git_dirty=bool(git('status', '--porcelain').strip()), **extra)
