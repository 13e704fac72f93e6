"""Keeps freed host memory in the process for reuse: glibc malloc settings for XLA's CPU backend.

XLA's CPU runtime allocates an executable's temporaries as one block per call (ViT-Ti/16's train
step at batch 32: 1.24 GB) and frees it after. glibc serves a block that large with a fresh mmap
and returns it with munmap, so every step first-touched 1.24 GB of new pages: ~303,000 page faults
and 0.45-0.55 s of kernel time per ~3 s step on one core of the dev CPU (an Intel Xeon), and the
ops writing those pages ran slower too; PyTorch, which reuses its buffers, took ~700 faults per
step. Served from one heap that is never trimmed, the block is reused: once the heap has settled,
within the first steps, 0 faults per step, and ViT-Ti/16's step went from 0.84x to 0.96-1.04x
PyTorch eager float32 on that core in two runs (README, Training;
bench/results/train_step_vit_ti16_1core.md).

`keep_freed_memory` makes those settings (mallopt: one arena, no mmap, no trimming). They must be
made before XLA's threads first allocate, so `import bigvis` calls it (as it sets XLA_FLAGS). The
cost is resident memory: freed memory stays with the process, and a temporary that no longer fits
the hole it left is placed anew. The benchmark's ViT-Ti/16 worker peaked at 3.0 GiB against
1.9 GiB before (bench/train_step.py); one of our runs of that step reached 4.34 GB.
`BIGVIS_KEEP_FREED_MEMORY=0` opts out. Elsewhere than Linux with glibc it does nothing.
"""
import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
OPT_OUT = 'BIGVIS_KEEP_FREED_MEMORY'


def keep_freed_memory():
  """Makes glibc malloc keep and reuse freed memory; returns whether the settings took effect."""
  if os.environ.get(OPT_OUT, '1') == '0' or not sys.platform.startswith('linux'):
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
