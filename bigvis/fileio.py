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
    if 'b' in mode:
      dest.write_bytes(data)
    else:
      dest.write_text(data, encoding=open_kwargs.get('encoding', 'utf-8'))
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

  The copy is kept at `<cache>/<scheme>/<bucket>/<key>` and reused while the object's size and
  modification time are those it was copied at (a `.stamp` file beside it); it is downloaded to a
  temporary name and renamed, so a killed copy is never reused.
  """
  if not is_remote(p):
    return os.fspath(p)
  scheme, rest = os.fspath(p).split('://', 1)
  local = os.path.join(cache_dir(), scheme, rest)
  src = path(p)
  stat = src.stat()
  stamp = f'{stat.length} {stat.mtime}'
  if os.path.exists(local) and _read_stamp(local) == stamp:
    return local
  os.makedirs(os.path.dirname(local), exist_ok=True)
  logging.info('staging %s (%.1f MB) in %s', p, stat.length / 1e6, local)
  tmp = f'{local}.tmp-{os.getpid()}'
  try:
    src.copy(epath.Path(tmp), overwrite=True)
    os.replace(tmp, local)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  write_text_atomic(local + '.stamp', stamp)
  return local


def _read_stamp(local):
  try:
    with open(local + '.stamp', encoding='utf-8') as f:
      return f.read()
  except FileNotFoundError:
    return None


def publish(local_file, target) -> None:
  """Moves a finished local file to `target`: a rename beside it, or one upload to a bucket."""
  if is_remote(target):
    path(local_file).copy(path(target), overwrite=True)
    os.remove(local_file)
  else:
    os.replace(local_file, target)


def scratch_dir(target) -> str:
  """A local folder to build `target` in before `publish`: beside it if local (so the rename
  stays on one filesystem), else in the cache."""
  if is_remote(target):
    parent = os.path.join(cache_dir(), 'scratch')
  else:
    parent = os.path.dirname(os.path.abspath(target))
  os.makedirs(parent, exist_ok=True)
  return parent


def upload_dir(local_dir, target_dir, *, last, remove_stale=False) -> None:
  """Copies the tree under `local_dir` into the bucket folder `target_dir`, the files named `last`
  (in any subfolder) after all others: a reader that finds `last` (a manifest, a dataset card)
  finds the rest. With `remove_stale`, objects under `target_dir` that `local_dir` lacks are
  deleted afterwards."""
  names = sorted((os.path.relpath(os.path.join(d, f), local_dir) for d, _, fs in os.walk(local_dir)
                  for f in fs), key=lambda n: (os.path.basename(n) == last, n))
  dest = path(target_dir)
  for name in names:
    (dest / name).parent.mkdir(parents=True, exist_ok=True)
    path(os.path.join(local_dir, name)).copy(dest / name, overwrite=True)
  if remove_stale and dest.exists():
    for item in _files_under(dest):
      if os.fspath(item.relative_to(dest)) not in names:
        item.unlink()


def _files_under(folder):
  """Every file below `folder` (epath refuses `**` globs on buckets)."""
  for item in folder.iterdir():
    if item.is_dir():
      yield from _files_under(item)
    else:
      yield item


@contextlib.contextmanager
def output_dir(target, *, last):
  """Yields a local folder in which to write the folder `target`: `target` itself if local; for a
  bucket, a scratch copy in the cache (kept, so tools that reuse earlier output still can), whose
  files are uploaded when the block ends without an error (`last` after the others, objects the
  new output lacks removed). On an error the bucket is left as it was."""
  if not is_remote(target):
    os.makedirs(target, exist_ok=True)
    yield os.fspath(target)
    return
  scheme, rest = os.fspath(target).split('://', 1)
  local = os.path.join(cache_dir(), 'outputs', scheme, rest)
  os.makedirs(local, exist_ok=True)
  yield local
  upload_dir(local, target, last=last, remove_stale=True)


def download_dir(source_dir, local_dir) -> None:
  """Copies the files of the bucket folder `source_dir` (not its subfolders) into `local_dir`."""
  os.makedirs(local_dir, exist_ok=True)
  for item in path(source_dir).iterdir():
    if not item.is_dir():
      item.copy(epath.Path(os.path.join(local_dir, item.name)), overwrite=True)
