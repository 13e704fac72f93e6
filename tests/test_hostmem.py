"""bigvis.hostmem: XLA's per-call temporaries are reused, not faulted in afresh on every call."""
import json
import os
import subprocess
import sys

import pytest

from bigvis import hostmem

# A jitted call whose temporary (the dot's [8192, 2048] float32 output, 64 MB = 16384 pages) is
# above any size glibc would serve from its heap by default. Prints the page faults of each call
# after warm-up, and the result.
_SCRIPT = """
import json, resource
import bigvis, jax, jax.numpy as jnp, numpy as np
x = jnp.asarray(np.random.default_rng(0).normal(size=(8192, 64)).astype(np.float32))
w = jnp.asarray(np.random.default_rng(1).normal(size=(64, 2048)).astype(np.float32)) / 8
f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(axis=1))
faults = []
for i in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  out = f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(faults=faults[3:], out=np.asarray(out)[:4].tolist())))
"""


def _run(opt_out):
  env = dict(os.environ)
  env.pop(hostmem.OPT_OUT, None)
  if opt_out:
    env[hostmem.OPT_OUT] = '0'
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True,
                        check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_temporaries_are_reused_across_calls():
  kept, default = _run(opt_out=False), _run(opt_out=True)
  pages = 8192 * 2048 * 4 // 4096
  # glibc's default maps the 64 MB temporary afresh on every call; kept, it is reused.
  assert min(default['faults']) > pages // 2, default
  assert sorted(kept['faults'])[len(kept['faults']) // 2] < pages // 20, kept
  assert kept['out'] == default['out']

