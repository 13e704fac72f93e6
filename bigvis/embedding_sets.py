"""Embeddings sets: one split embedded as N shard files plus a manifest, by several processes
at once, resumable after a kill.

    OUT/shard-00000-of-00004.npz        the records i, i + N, ... of the split (shard i), an
                                        embeddings file as tools/embed.py writes (bigvis/retrieval.py)
    OUT/shard-00000-of-00004.npz.json   written after its shard: rows, bytes, sha256, fingerprint
    OUT/manifest.json                   written once every shard is done: counts, checksums, the
                                        run, checkpoint step, features, pp, corpus and split

Process p of P writes the shards i with i % P == p (each process alone, on its own devices), so
memory is bounded by a batch and P machines embed P shards at a time. A shard whose sidecar
matches its file and the set's fingerprint is kept and skipped; a kill loses at most the shards
in flight. Whichever process finds every sidecar present writes the manifest (the same bytes from
any of them). `load_set` checks every shard's sha256 against the manifest.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from bigvis import fileio

MANIFEST = 'manifest.json'
FORMAT = 1
_SHARD_RE = re.compile(r'^shard-(\d{5})-of-(\d{5})\.npz$')


def shard_name(i: int, n: int) -> str:
  return f'shard-{i:05d}-of-{n:05d}.npz'


def is_set(path) -> bool:
  return fileio.path(fileio.join(path, MANIFEST)).exists()


def sha256(path: str) -> tuple[int, str]:
  """(bytes, sha256) of a local or bucket file."""
  h, size = hashlib.sha256(), 0
  with fileio.path(path).open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
      size += len(chunk)
  return size, h.hexdigest()


def _read_json(path):
  p = fileio.path(path)
  return json.loads(p.read_text()) if p.exists() else None


def _done(out_dir: str, i: int, n: int, fingerprint: dict) -> dict | None:
  """The sidecar of shard i if the shard is finished for this fingerprint, else None."""
  name = shard_name(i, n)
  side = _read_json(fileio.join(out_dir, name + '.json'))
  if side is None or not fileio.path(fileio.join(out_dir, name)).exists():
    return None
  if side.get('fingerprint') != fingerprint:
    differ = sorted(k for k in {**fingerprint, **side.get('fingerprint', {})}
                    if side.get('fingerprint', {}).get(k) != fingerprint.get(k))
    raise ValueError(f'{fileio.join(out_dir, name)}: written for another set (differs in '
                     f'{differ}); remove {out_dir} or choose another --out')
  size, digest = sha256(fileio.join(out_dir, name))
  return side if (size, digest) == (side['bytes'], side['sha256']) else None


def write_set(out_dir: str, num_shards: int, write_shard: Callable[[int, str], int],
              fingerprint: dict, *, process_index: int = 0, process_count: int = 1,
              meta: dict | None = None) -> dict | None:
  """Writes this process's missing shards with write_shard(i, path) -> rows (atomic per file);
  returns the manifest if every shard is done now (written by this call), else None."""
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  fileio.path(out_dir).mkdir(parents=True, exist_ok=True)
  mine = [i for i in range(num_shards) if i % process_count == process_index]
  for i in tqdm(mine, desc=f'shards (process {process_index})', unit='shard', disable=None,
                file=sys.stderr):
    if _done(out_dir, i, num_shards, fingerprint) is not None:
      continue  # Finished by an earlier run.
    path = fileio.join(out_dir, shard_name(i, num_shards))
    rows = write_shard(i, path)
    size, digest = sha256(path)
    fileio.write_text_atomic(path + '.json', json.dumps(
        {'rows': int(rows), 'bytes': size, 'sha256': digest, 'fingerprint': fingerprint}) + '\n')
  done = [_done(out_dir, i, num_shards, fingerprint) for i in range(num_shards)]
  if any(d is None for d in done):
    return None  # Other processes' shards are still in flight.
  manifest = {'format': FORMAT, 'num_shards': num_shards,
              'rows': sum(d['rows'] for d in done), 'fingerprint': fingerprint,
              'meta': meta or {},
              'shards': [{'file': shard_name(i, num_shards), 'rows': d['rows'],
                          'bytes': d['bytes'], 'sha256': d['sha256']}
                         for i, d in enumerate(done)]}
  fileio.write_text_atomic(fileio.join(out_dir, MANIFEST), json.dumps(manifest, indent=1) + '\n')
  return manifest


def read_manifest(set_dir: str) -> dict:
  path = fileio.join(set_dir, MANIFEST)
  try:
    manifest = json.loads(fileio.read_text(path))
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: not found; not a finished embeddings set') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: corrupt ({e})') from e
  if manifest.get('format') != FORMAT:
    raise ValueError(f'{path}: format {manifest.get("format")!r}, this code reads {FORMAT}')
  return manifest


def shard_files(set_dir: str, verify: bool = True) -> list[str]:
  """The set's shard paths in order; with verify, each checked against the manifest."""
  manifest = read_manifest(set_dir)
  paths = []
  for s in manifest['shards']:
    path = fileio.join(set_dir, s['file'])
    if not fileio.path(path).exists():
      raise ValueError(f'{path}: missing (listed in {MANIFEST})')
    if verify and sha256(path) != (s['bytes'], s['sha256']):
      raise ValueError(f'{path}: size or sha256 differs from {MANIFEST}: the shard changed '
                       'or is damaged; embed it again')
    paths.append(path)
  return paths


def load_set(set_dir: str) -> dict:
  """The whole set as one embeddings dict (shards concatenated in order; checksums checked)."""
  from bigvis import retrieval  # retrieval.load_embeddings reads sets through this module
  manifest = read_manifest(set_dir)
  parts = [retrieval.load_embeddings(p) for p in shard_files(set_dir)]
  keys = set(parts[0]) - {'meta'}
  for p, part in zip(manifest['shards'], parts):
    if set(part) - {'meta'} != keys or len(part['id']) != p['rows']:
      raise ValueError(f'{fileio.join(set_dir, p["file"])}: fields or rows differ from the set')
  out = {k: np.concatenate([part[k] for part in parts]) for k in keys}
  if len(np.unique(out['id'])) != len(out['id']):
    raise ValueError(f'{set_dir}: record ids repeat across shards')
  out['meta'] = {**parts[0]['meta'], **manifest['meta'], 'set': fileio.absolute(set_dir),
                 'num_shards': manifest['num_shards']}
  return out
