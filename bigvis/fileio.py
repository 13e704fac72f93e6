"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""
import os


def write_text_atomic(path, text):
  """Writes `text` to a temporary file beside `path`, syncs it, then renames it over `path`."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
