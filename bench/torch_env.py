"""bench/.torch-venv: the venv the benchmarks' PyTorch sides run in (torch is never a project requirement).

    from torch_env import TORCH_PY, ensure_torch_venv, project_pins
    ensure_torch_venv(extra=project_pins('array-record', 'msgpack', 'pillow'))

`ensure_torch_venv` makes the venv when it is missing (`torch==2.13.0`, a CPU build, and the
numpy of requirements.txt) and installs whatever of those and of `extra` it lacks or holds at
another version, so each benchmark names only what its own torch worker imports. `project_pins`
reads versions from the project's requirements.txt, so a torch worker reads and decodes with the
same packages as bigvis.
"""
import json
import os
import shutil
import subprocess

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
TORCH_VENV = os.path.join(BENCH, '.torch-venv')
TORCH_PY = os.path.join(TORCH_VENV, 'bin', 'python')
TORCH_REQ = ['torch==2.13.0']  # + the project's numpy pin (ensure_torch_venv)

# Run by the venv's python: prints the requirements (argv[1], a JSON list) it does not satisfy.
# A local version label counts as the pin ('2.13.0+cpu' is 'torch==2.13.0'); torch must import.
_CHECK = r'''
import importlib.metadata, json, sys
missing = []
for req in json.loads(sys.argv[1]):
  name, _, want = req.partition('==')
  try:
    have = importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    have = None
  if have is None or (want and have.split('+')[0] != want):
    missing.append(req)
try:
  import torch
except Exception:
  missing.append('torch')
print(json.dumps(missing))
'''


def project_pins(*names):
  """The 'name==version' lines of the project's requirements.txt for `names`."""
  pins = {}
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    for line in f:
      req = line.split('#', 1)[0].strip()
      if '==' in req:
        pins[req.split('==')[0].strip().lower().replace('_', '-')] = req.replace(' ', '')
  missing = [n for n in names if n.lower().replace('_', '-') not in pins]
  if missing:
    raise KeyError(f'requirements.txt pins no {missing}')
  return [pins[n.lower().replace('_', '-')] for n in names]


def _unsatisfied(reqs):
  if not os.path.exists(TORCH_PY):
    return list(reqs)
  out = subprocess.run([TORCH_PY, '-c', _CHECK, json.dumps(list(reqs))], capture_output=True,
                       text=True)
  if out.returncode:
    return list(reqs)
  missing = json.loads(out.stdout)
  if 'torch' in missing:  # installed but broken: reinstall the pinned one
    missing = [r for r in missing if r != 'torch']
    missing += [r for r in reqs if r.partition('==')[0] == 'torch' and r not in missing]
  return missing


def ensure_torch_venv(extra=()):
  """Makes bench/.torch-venv if needed and installs what it lacks of TORCH_REQ and `extra`."""
  reqs = [*TORCH_REQ, *project_pins('numpy'), *extra]
  missing = _unsatisfied(reqs)
  if not missing:
    return
  if not os.path.exists(TORCH_PY):
    print(f'Making {TORCH_VENV} ...', flush=True)
    base = shutil.which('python3.11') or shutil.which('python3')
    subprocess.run([base, '-m', 'venv', TORCH_VENV], check=True)
  print(f'Installing into {TORCH_VENV}: {" ".join(missing)} ...', flush=True)
  subprocess.run([TORCH_PY, '-m', 'pip', 'install', '--quiet', *missing], check=True)
