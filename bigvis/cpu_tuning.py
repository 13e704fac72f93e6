"""Host settings that pay only when JAX computes on the CPU: an XLA CPU flag and glibc malloc.

Nothing here runs at import. `apply()` is called by the trainer's start-up (`bigvis.train.main`)
and by tools and benchmarks that compute, before JAX starts its backends; library users who want
the settings call it themselves. On a GPU or TPU host it changes nothing (`mode='auto'`), so Grain
and Beam workers, notebooks and accelerator runs keep the process defaults.

The two settings, both measured on the 2-core dev CPUs (README, Training; bench/results):
- `--xla_cpu_experimental_ynn_fusion_type=` in XLA_FLAGS: XLA's CPU backend otherwise hands dots
  to YNNPACK, which ran the ViT-Ti/16 train step slower than its own Eigen dots. Read once, when
  JAX creates its CPU client, so it must be set before the first computation. Left alone if
  XLA_FLAGS already names the flag.
- glibc keeps freed memory for reuse (mallopt: one arena, no mmap, no trimming). XLA's CPU runtime
  allocates each call's temporaries as one block, which glibc otherwise maps afresh and unmaps on
  every call, so each train step first-touched all its temporaries as new zeroed pages. The cost
  is resident memory: freed memory stays with the process. It must be made before XLA's threads
  first allocate. Elsewhere than Linux with glibc it does nothing.

Opt-outs: `BIGVIS_CPU_TUNING=0` (both), `BIGVIS_KEEP_FREED_MEMORY=0` (malloc only), a `mode` of
'off', or `config.host_tuning='off'` for the trainer.
"""
import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import sys

MODES = ('auto', 'on', 'off')
OPT_OUT = 'BIGVIS_CPU_TUNING'
KEEP_FREED_OPT_OUT = 'BIGVIS_KEEP_FREED_MEMORY'
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def computes_on_cpu():
  """Whether JAX's default backend will be the CPU, decided without starting any backend.

  JAX_PLATFORMS (or jax.config.jax_platforms) decides where it is set; otherwise JAX takes an
  accelerator whenever a GPU or TPU plugin is installed, so any installed plugin counts as 'no'
  (a CUDA wheel on a machine without a GPU then keeps the defaults: the safe side).
  """
  import jax  # Importing jax starts no backend.
  platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS', '')
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  try:
    import jax_plugins  # The namespace package GPU plugins install into.
    if any(pkgutil.iter_modules(jax_plugins.__path__)):
      return False
  except ImportError:
    pass
  if any(True for _ in importlib.metadata.entry_points(group='jax_plugins')):
    return False
  return importlib.util.find_spec('libtpu') is None


def _backends_started():
  try:
    from jax._src import xla_bridge  # No public API says this.
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return False


def disable_ynnpack_dots():
  """Adds the YNNPACK opt-out to XLA_FLAGS unless the flag is there; returns whether it added it."""
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG in flags:
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}='.strip()
  return True


def keep_freed_memory():
  """Makes glibc malloc keep and reuse freed memory; returns whether the settings took effect."""
  if os.environ.get(KEEP_FREED_OPT_OUT, '1') == '0' or not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL('libc.so.6')
    libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
  except (OSError, AttributeError):
    return False
  settings = ((_M_ARENA_MAX, 1),  # XLA's threads allocate from the main heap, not mmap'd arenas
              (_M_MMAP_MAX, 0),  # large blocks come from that heap too, not fresh mappings
              (_M_TRIM_THRESHOLD, -1))  # (size_t)-1: freed memory at the heap's top is kept
  return all(libc.mallopt(param, value) == 1 for param, value in settings)


def apply(mode='auto'):
  """Applies the CPU settings if `mode` is 'on', or 'auto' and JAX will compute on the CPU.

  Returns {'xla_flags': bool, 'keep_freed_memory': bool}: what this call changed.
  """
  if mode not in MODES:
    raise ValueError(f'host tuning mode {mode!r}; choose from {MODES}')
  done = dict(xla_flags=False, keep_freed_memory=False)
  if mode == 'off' or os.environ.get(OPT_OUT, '1') == '0':
    return done
  if mode == 'auto' and not computes_on_cpu():
    return done
  if _backends_started():
    logging.warning('bigvis.cpu_tuning.apply: JAX has already started its backends, so the XLA '
                    'CPU flag cannot take effect; call it before the first computation')
  done['xla_flags'] = disable_ynnpack_dots()
  done['keep_freed_memory'] = keep_freed_memory()
  return done
