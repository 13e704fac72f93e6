"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""
import contextlib
import os


@contextlib.contextmanager
def atomic_file(path, mode='wb', **open_kwargs):
  """Yields a file opened on a temporary name beside `path`; when the block ends without an
  error, syncs it and renames it over `path`. On an error `path` is left as it was."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text_atomic(path, text):
  with atomic_file(path, 'w', encoding='utf-8') as f:
    f.write(text)
