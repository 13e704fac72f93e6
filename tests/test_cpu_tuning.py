"""bigvis.cpu_tuning: nothing at import; the CPU settings where asked, and what they buy."""
import json
import os
import subprocess
import sys

import pytest

from bigvis import cpu_tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Prints XLA_FLAGS, and how many bytes glibc served from fresh mappings for a 64 MB malloc: the
# whole block by default, none once malloc keeps freed memory (M_MMAP_MAX=0).
_PROBE = """
import ctypes, json, os, sys
{setup}
class MallInfo2(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in
              'arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()]
libc = ctypes.CDLL('libc.so.6')
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(ctypes.c_void_p(block))
print(json.dumps(dict(xla_flags=os.environ.get('XLA_FLAGS'), mapped=mapped, applied=applied)))
"""


def _probe(setup, **env_overrides):
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'JAX_PLATFORMS', cpu_tuning.OPT_OUT,
                      cpu_tuning.KEEP_FREED_OPT_OUT)}
  env.update(env_overrides)
  proc = subprocess.run([sys.executable, '-c', _PROBE.format(setup=setup)], env=env, cwd=ROOT,
                        capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


_IMPORT_ALL = ('import bigvis, bigvis.train, bigvis.data, bigvis.heads, bigvis.retrieval\n'
               'import bigvis.models.vit, bigvis.models.attention, bigvis.kernels.cpu_attention\n'
               'applied = None')

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc')


def test_importing_bigvis_leaves_the_allocator_and_xla_flags_alone():
  out = _probe(_IMPORT_ALL, JAX_PLATFORMS='cpu')
  assert out['xla_flags'] is None
  assert out['mapped'] >= 64 << 20  # glibc's default: a block this large is a fresh mapping


def test_apply_on_the_cpu_backend_sets_both():
  out = _probe('from bigvis import cpu_tuning\napplied = cpu_tuning.apply()', JAX_PLATFORMS='cpu')
  assert out['applied'] == dict(xla_flags=True, keep_freed_memory=True)
  assert out['xla_flags'] == f'{cpu_tuning.YNN_FLAG}='
  assert out['mapped'] == 0  # served from the kept heap


def test_auto_does_nothing_on_an_accelerator_backend():
  out = _probe('from bigvis import cpu_tuning\napplied = cpu_tuning.apply()', JAX_PLATFORMS='cuda')
  assert out['applied'] == dict(xla_flags=False, keep_freed_memory=False)
  assert out['xla_flags'] is None and out['mapped'] >= 64 << 20


@pytest.mark.parametrize('env,expected', [
    (dict(XLA_FLAGS=f'{cpu_tuning.YNN_FLAG}=dot'), (f'{cpu_tuning.YNN_FLAG}=dot', 0)),
    ({cpu_tuning.KEEP_FREED_OPT_OUT: '0'}, (f'{cpu_tuning.YNN_FLAG}=', 64 << 20)),
    ({cpu_tuning.OPT_OUT: '0'}, (None, 64 << 20)),
])
def test_the_users_choices_win(env, expected):
  out = _probe('from bigvis import cpu_tuning\napplied = cpu_tuning.apply()', JAX_PLATFORMS='cpu',
               **env)
  flags, mapped = expected
  assert out['xla_flags'] == flags
  assert (out['mapped'] >= mapped) if mapped else out['mapped'] == 0


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match='choose from'):
    cpu_tuning.apply('fast')


# A jitted call whose temporary (the dot's [8192, 2048] float32 output, 64 MB = 16384 pages) is
# above any size glibc would serve from its heap by default. Prints the page faults of each call
# after warm-up, and the result. Kept, the block still lands on fresh pages now and then while the
# heap settles (a few of the first ~15 calls of this small script), so warm-up is 10 calls.
_FAULTS = """
import json, resource
from bigvis import cpu_tuning
cpu_tuning.apply('on')  # The YNNPACK opt-out in both runs: its dots allocate differently.
import jax, jax.numpy as jnp, numpy as np
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


def _faults(keep_freed):
  env = {k: v for k, v in os.environ.items() if k not in (cpu_tuning.OPT_OUT,
                                                          cpu_tuning.KEEP_FREED_OPT_OUT)}
  if not keep_freed:
    env[cpu_tuning.KEEP_FREED_OPT_OUT] = '0'
  proc = subprocess.run([sys.executable, '-c', _FAULTS], env=env, cwd=ROOT,
                        capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tuned_xla_temporaries_are_reused_across_calls():
  kept, default = _faults(keep_freed=True), _faults(keep_freed=False)
  pages = 8192 * 2048 * 4 // 4096
  fresh = lambda run: sum(n > pages // 2 for n in run['faults'])  # calls on fresh pages
  # glibc's default maps the 64 MB temporary afresh on every call; kept, it is mostly reused
  # (at most 5 of these 20 calls landed on fresh pages in 10 runs of the earlier version).
  assert fresh(default) == len(default['faults']), default
  assert fresh(kept) <= len(kept['faults']) // 2, kept
  assert kept['out'] == default['out']
