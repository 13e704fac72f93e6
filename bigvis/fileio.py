"""The one path layer: every file a run reads or writes may be local or in a bucket (`gs://...`).

Paths are `etils.epath.Path` (local files through `os`, buckets through fsspec: gcsfs for gs://,
s3fs for s3:// where installed). Orbax writes its arrays with tensorstore, which reaches the same
buckets with its own drivers.

Writes are atomic either way: `atomic_file` writes a local file under a temporary name and renames
it; an object in a bucket is uploaded whole when the block ends without an error (an object store
shows a reader the old object or the new one, never part of one), so an error leaves the old one.

ArrayRecord's reader (C++, riegeli) opens local files only, so `local_copy` stages a bucket's
shards in a local cache first (`BIGVIS_CACHE_DIR`, default `~/.cache/bigvis`); see records.py.
"""
import contextlib
import io
import logging
import os

from etils import epath

CACHE_ENV = 'BIGVIS_CACHE_DIR'


def path(p) -> epath.Path:
  """`p` (str, os.PathLike or epath.Path) as an epath.Path."""
  return p if isinstance(p, epath.Path) else epath.Path(os.fspath(p))


def is_remote(p) -> bool:
  """Whether `p` names an object store (`gs://`, `s3://`, ...) rather than a local file."""
  return '://' in os.fspath(p)


def join(*parts) -> str:
  """`os.path.join` that keeps a bucket URI's `gs://` prefix intact."""
  return os.fspath(path(parts[0]).joinpath(*map(os.fspath, parts[1:])))


def absolute(p) -> str:
  """A local path made absolute (Orbax wants those); a bucket URI as it is."""
  return os.fspath(p) if is_remote(p) else os.path.abspath(p)


@contextlib.contextmanager
def atomic_file(target, mode='wb', **open_kwargs):
  """Yields a file to write; when the block ends without an error, `target` becomes its content
  at once (local: fsync + rename of a temporary beside it; bucket: one upload). On an error,
  `target` is left as it was."""
  if is_remote(target):
    buffer = io.BytesIO() if 'b' in mode else io.StringIO()
    yield buffer
    data = buffer.getvalue()
    dest = path(target)
    (dest.write_bytes if 'b' in mode else dest.write_text)(data)
    return
  tmp = f'{target}.tmp-{os.getpid()}'
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text_atomic(target, text):
  with atomic_file(target, 'w', encoding='utf-8') as f:
    f.write(text)


def read_text(p) -> str:
  return path(p).read_text(encoding='utf-8')


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'bigvis')


def local_copy(p) -> str:
  """A local path with the content of `p`: `p` itself if local, else a copy in the cache.

  The copy is kept at `<cache>/<scheme>/<bucket>/<key>` and reused while its size matches the
  object's; it is downloaded to a temporary name and renamed, so a killed copy is never reused.
  """
  if not is_remote(p):
    return os.fspath(p)
  scheme, rest = os.fspath(p).split('://', 1)
  local = os.path.join(cache_dir(), scheme, rest)
  src = path(p)
  size = src.stat().length
  if os.path.exists(local) and os.path.getsize(local) == size:
    return local
  os.makedirs(os.path.dirname(local), exist_ok=True)
  logging.info('staging %s (%.1f MB) in %s', p, size / 1e6, local)
  tmp = f'{local}.tmp-{os.getpid()}'
  try:
    src.copy(epath.Path(tmp), overwrite=True)
    os.replace(tmp, local)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return local
