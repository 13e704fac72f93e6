"""The fused CPU attention kernel (cpu_attention.cc): build, load, and call it from JAX.

`make` builds it once per checkout, on the machine that runs it (`-march=native`), with
`python -m bigvis.kernels.cpu_attention`; it links OpenBLAS from the pinned `scipy-openblas32`
wheel and compiles against the XLA FFI headers that jaxlib ships. `available()` says whether the
built library loaded; bigvis.models.attention falls back to its XLA path where it did not (no
compiler, another platform), so the kernel only ever changes speed, never results beyond float
rounding (tests/test_cpu_attention.py compares the two).
"""
import ctypes
import functools
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(__file__), 'cpu_attention.cc')
LIBRARY = os.path.join(os.path.dirname(__file__), '_cpu_attention.so')


def build(library=LIBRARY, verbose=False):
  """Compiles cpu_attention.cc into `library` (written to a temp file, then renamed)."""
  import scipy_openblas32 as openblas
  lib_dir = openblas.get_lib_dir()
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(library))
  os.close(fd)
  # -ffast-math lets GCC vectorize expf through glibc's libmvec (a faster softmax); the
  # kernel has no NaN checks for it to drop, and NaN still propagates through the arithmetic.
  # Compiling and linking apart keeps fast-math's start-up code, which would flush subnormals to
  # zero for the whole process, out of the library.
  compile_cmd = ['g++', '-c', '-O3', '-march=native', '-ffast-math',
                 '-std=c++17', '-fPIC', '-isystem', jax.ffi.include_dir(),
                 '-isystem', openblas.get_include_dir(), SOURCE, '-o', tmp + '.o']
  link_cmd = ['g++', '-shared', tmp + '.o', '-o', tmp, '-L', lib_dir,
              '-l' + openblas.get_library(), '-Wl,-rpath,' + lib_dir]
  try:
    for cmd in (compile_cmd, link_cmd):
      if verbose:
        print(' '.join(cmd))
      try:
        subprocess.run(cmd, check=True)
      except FileNotFoundError:
        sys.exit('bigvis: g++ not found: install a C++ compiler (Debian: apt install g++) to '
                 'build the CPU attention kernel; without it bigvis uses XLA\'s attention')
    os.replace(tmp, library)
  finally:
    for path in (tmp, tmp + '.o'):
      if os.path.exists(path):
        os.remove(path)
  return library


@functools.cache
def _load():
  """Registers the kernel's FFI targets; returns False if the library is missing or broken."""
  if not os.path.exists(LIBRARY):
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(LIBRARY)
    lib.BigvisAttentionInit()
    for name in ('BigvisAttentionForward', 'BigvisAttentionBackward'):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform='cpu')
  except (OSError, AttributeError) as e:
    print(f'bigvis: not using {LIBRARY} ({e}); rebuild it with '
          f'`python -m bigvis.kernels.cpu_attention`', file=sys.stderr)
    return False
  return True


def available():
  """True when the kernel is built and registered and JAX computes on the CPU."""
  return jax.default_backend() == 'cpu' and _load()


def _forward(q, k, v, scale):
  b, n, h, _ = q.shape
  return jax.ffi.ffi_call('BigvisAttentionForward', (
      jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, n), jnp.float32)))(
          q, k, v, scale=np.float32(scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attention(q, k, v, scale):
  """softmax(scale * q k^T) v per head: q [B, N, H, D], k and v [B, M, H, D], float32."""
  return _forward(q, k, v, scale)[0]


def _attention_fwd(q, k, v, scale):
  out, lse = _forward(q, k, v, scale)
  return out, (q, k, v, out, lse)


def _attention_bwd(scale, res, g):
  q, k, v, out, lse = res
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
  return jax.ffi.ffi_call('BigvisAttentionBackward', shapes)(
      q, k, v, out, lse, g.astype(jnp.float32), scale=np.float32(scale))


attention.defvjp(_attention_fwd, _attention_bwd)


if __name__ == '__main__':
  _load.cache_clear()
  print('built', build(verbose=True))
  if not _load():
    sys.exit('bigvis: the built kernel did not load')
