"""bigvis.hostmem: XLA's per-call temporaries are reused, not faulted in afresh on every call."""
import json
import os
import subprocess
import sys

import pytest

from bigvis import hostmem

# A jitted call whose temporary (the dot's [8192, 2048] float32 output, 64 MB = 16384 pages) is
# above any size glibc would serve from its heap by default. Prints the page faults of each call
# after warm-up, and the result. Kept, the block still lands on fresh pages now and then while the
# heap settles (a few of the first ~15 calls of this small script), so warm-up is 10 calls.
_SCRIPT = """
import json, resource
import bigvis, jax, jax.numpy as jnp, numpy as np
x = jnp.asarray(np.random.default_rng(0).normal(size=(8192, 64)).astype(np.float32))
w = jnp.asarray(np.random.default_rng(1).normal(size=(64, 2048)).astype(np.float32)) / 8
f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(axis=1))
faults = []
for i in range(30):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  out = f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(faults=faults[10:], out=np.asarray(out)[:4].tolist())))
"""


def _run(opt_out):
  env = dict(os.environ)
  env.pop(hostmem.OPT_OUT, None)
  if opt_out:
    env[hostmem.OPT_OUT] = '0'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `import bigvis` works
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, cwd=root, capture_output=True,
                        text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_temporaries_are_reused_across_calls():
  kept, default = _run(opt_out=False), _run(opt_out=True)
  pages = 8192 * 2048 * 4 // 4096
  fresh = lambda run: sum(n > pages // 2 for n in run['faults'])  # calls on fresh pages
  # glibc's default maps the 64 MB temporary afresh on every call; kept, it is mostly reused
  # (at most 5 of these 20 calls landed on fresh pages in 10 runs of the script).
  assert fresh(default) == len(default['faults']), default
  assert fresh(kept) <= len(kept['faults']) // 2, kept
  assert kept['out'] == default['out']

