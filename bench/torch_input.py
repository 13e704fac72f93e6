"""A PyTorch DataLoader doing bigvis's input pipeline work: the baseline of input_pipeline.py.

Runs in bench/.torch-venv (torch, numpy, and requirements.txt's array-record, msgpack and pillow,
installed by the driver through bench/torch_env.py), never in the project's venv. The timed work
imports nothing from bigvis; only `--check` imports bigvis.preprocess (numpy and PIL) to compare.
Per example it does what `bigvis.data.make_dataset` does with
pp `decode|random_resized_crop(S)|flip_lr|value_range(-1, 1)` and no labels:

  read    one record of the ArrayRecord shards: a reader per shard and process, opened on first
          use, with the options of Grain's ArrayRecordDataSource (no readahead, 32 KiB buffer)
  record  a msgpack map of bigvis.records' schema v1, checked as records.decode checks it
  decode  PIL; transparency composited on white, then RGB (bigvis's `decode`)
  crop    Inception crop: area fraction uniform in (0.08, 1), aspect log-uniform in (3/4, 4/3),
          10 tries, else the largest central box within the aspect bounds; the box resized to
          S x S by PIL bilinear over the whole source footprint (bigvis's `random_resized_crop`)
  flip    left-right with probability 0.5
  range   uint8 -> float32 x / 255 * 2 - 1
  batch   torch's default_collate: {'image': float32 [B, S, S, 3], 'index': int64 [B]}

The random draws come from numpy.random.default_rng([seed, record number, epoch]) in bigvis's
order, as in bigvis.data, so an example equals bigvis's bit for bit (`--check` says so) and both
pipelines do the same crops. The sampler is endless, a seeded torch.randperm of the records per
epoch (Grain's shuffle then repeat), so the DataLoader never ends an epoch, which would stop and
restart its worker processes. DataLoader: batch B, drop_last, num_workers W (forked,
prefetch_factor 2 each), no pinned memory. `--threads` sets torch's intra-op threads in this
process (the driver passes 1): with num_workers 0, default_collate's torch.stack runs here, and
with torch's default of one thread per core its OpenMP threads wait on each other whenever
another process holds a core (batches of 32 at 224 px took up to 0.25 s, not ~3 ms, on the
shared 2-core dev CPU). DataLoader worker processes always run one thread.

As a worker of the driver (`--worker`), it prints one `@@{json}` line (versions, threads, check
results), then answers each line on stdin with one `@@{json}` line:
  build {json}  a fresh Dataset and DataLoader (keys paths, size, batch, workers, seed, warmup);
                starts iterating and takes `warmup` batches: {"start_s": seconds for all that}
  time SECONDS  reads batches until SECONDS have passed and at least 3 were read:
                {"stamps": [0, then seconds after the start when each batch arrived]}
  close         ends the iterator and its worker processes: {}
  quit
Standalone: bench/.torch-venv/bin/python bench/torch_input.py runs/data/emoji --size 224 --workers 2
(--threads 1 --seconds 5) checks 48 examples against bigvis, then prints images/s.
"""
import argparse
import bisect
import glob
import io
import itertools
import json
import os
import sys
import time

import msgpack
import numpy as np
import torch
from array_record.python import array_record_module
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PP = 'decode|random_resized_crop({size})|flip_lr|value_range(-1, 1)'  # what --check compares with
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # bigvis's random_resized_crop defaults
RECORD_KEYS = frozenset({'v', 'id', 'image', 'texts', 'labels'})
IMAGE_MAGIC = (b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff')


# ---- one record -------------------------------------------------------------------------------

def record_image(raw, where):
  """The image bytes of one serialized record, after the schema checks of bigvis.records.decode."""
  rec = msgpack.unpackb(raw, raw=False, strict_map_key=True)
  if not isinstance(rec, dict) or rec.keys() != RECORD_KEYS:
    raise ValueError(f'{where}: not a v1 record map (keys {sorted(map(str, rec))})'
                     if isinstance(rec, dict) else f'{where}: not a msgpack map')
  if rec['v'] != 1:
    raise ValueError(f"{where}: record version {rec['v']!r}, want 1")
  if not isinstance(rec['id'], str) or not rec['id']:
    raise ValueError(f"{where}: field 'id' must be a non-empty str")
  image = rec['image']
  if not isinstance(image, (bytes, bytearray)) or not image.startswith(IMAGE_MAGIC):
    raise ValueError(f"{where}: field 'image' is not PNG or JPEG bytes")
  for name in ('texts', 'labels'):
    if not isinstance(rec[name], dict) or not all(isinstance(k, str) and k for k in rec[name]):
      raise ValueError(f"{where}: field {name!r} must map non-empty str keys")
  if not all(isinstance(t, str) for t in rec['texts'].values()):
    raise ValueError(f"{where}: field 'texts' values must be str")
  for field, value in rec['labels'].items():
    items = value if isinstance(value, list) else [value]
    kinds = {type(x) for x in items}
    if not value == [] and kinds not in ({int}, {str}):
      raise ValueError(f"{where}: field 'labels.{field}' must be int, str or a list of one of them")
  return image


def decode_rgb(data):
  """PNG/JPEG bytes -> uint8 [H, W, 3]; an image with transparency is put on white first."""
  pil = Image.open(io.BytesIO(data))
  if pil.mode in ('RGBA', 'LA', 'PA') or 'transparency' in pil.info:
    pil = Image.alpha_composite(Image.new('RGBA', pil.size, (255, 255, 255, 255)),
                                pil.convert('RGBA'))
  return np.asarray(pil.convert('RGB'))


def crop_box(h, w, rng):
  """(left, top, right, bottom) of an Inception crop of an h x w image; draws as bigvis does."""
  lo, hi = np.log(RATIO[0]), np.log(RATIO[1])
  for _ in range(10):
    area = h * w * rng.uniform(*SCALE)
    aspect = np.exp(rng.uniform(lo, hi))
    bw, bh = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
    if 0 < bw <= w and 0 < bh <= h:
      top = int(rng.integers(h - bh + 1))
      left = int(rng.integers(w - bw + 1))
      return left, top, left + bw, top + bh
  aspect = np.clip(w / h, *RATIO)  # no try fitted: the widest central box the bounds allow
  bw, bh = (w, round(w / aspect)) if w / h <= aspect else (round(h * aspect), h)
  left, top = (w - bw) // 2, (h - bh) // 2
  return left, top, left + bw, top + bh


def augment(image, size, rng):
  """uint8 [H, W, 3] -> random resized crop to size x size, random flip, float32 in [-1, 1]."""
  box = crop_box(image.shape[0], image.shape[1], rng)
  image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR,
                                                    box=box))
  if rng.random() < 0.5:
    image = np.ascontiguousarray(image[:, ::-1])
  return image.astype(np.float32) / 255.0 * np.float32(2.0) + np.float32(-1.0)


# ---- Dataset, sampler, loader -------------------------------------------------------------------

class RecordImages(Dataset):
  """ArrayRecord shards -> augmented images; an item key is (record number, epoch)."""

  def __init__(self, paths, size, seed):
    self.paths, self.size, self.seed = list(paths), size, seed
    counts = []
    for p in self.paths:
      reader = array_record_module.ArrayRecordReader(p)
      counts.append(reader.num_records())
      reader.close()
    self.ends = list(itertools.accumulate(counts))
    self._readers, self._pid = {}, None

  def __len__(self):
    return self.ends[-1]

  def raw(self, index):
    if self._pid != os.getpid():  # a forked DataLoader worker opens its own readers
      self._readers, self._pid = {}, os.getpid()
    shard = bisect.bisect_right(self.ends, index)
    reader = self._readers.get(shard)
    if reader is None:
      reader = self._readers[shard] = array_record_module.ArrayRecordReader(
          self.paths[shard], 'readahead_buffer_size:0', file_reader_buffer_size=32768)
    return reader.read([index - (self.ends[shard - 1] if shard else 0)])[0]

  def where(self, index):
    shard = bisect.bisect_right(self.ends, index)
    return f'{self.paths[shard]} record {index - (self.ends[shard - 1] if shard else 0)}'

  def __getitem__(self, key):
    index, epoch = key
    image = decode_rgb(record_image(self.raw(index), self.where(index)))
    image = augment(image, self.size, np.random.default_rng([self.seed, index, epoch]))
    return {'image': image, 'index': index}


class EndlessShuffle(Sampler):
  """(record number, epoch) keys: a new seeded permutation of the records every epoch, forever."""

  def __init__(self, num_records, seed):
    self.num_records, self.seed = num_records, seed

  def __iter__(self):
    gen = torch.Generator().manual_seed(self.seed)
    for epoch in itertools.count():
      for index in torch.randperm(self.num_records, generator=gen).tolist():
        yield index, epoch


def make_loader(paths, size, batch, workers, seed):
  ds = RecordImages(paths, size, seed)
  return DataLoader(ds, batch_size=batch, sampler=EndlessShuffle(len(ds), seed),
                    num_workers=workers, drop_last=True, pin_memory=False)


# ---- driver protocol ----------------------------------------------------------------------------

def check(paths, size, seed=0, records=24):
  """Examples equal to bigvis.preprocess's for the same record and rng, of `records` x 2 epochs."""
  sys.path.insert(0, ROOT)
  from bigvis import preprocess  # pylint: disable=import-outside-toplevel
  pp = preprocess.parse(PP.format(size=size))
  ds = RecordImages(paths, size, seed)
  keys = [(i, e) for i in np.linspace(0, len(ds) - 1, records).astype(int).tolist() for e in (0, 1)]
  same = 0
  for index, epoch in keys:
    ours = ds[(index, epoch)]['image']
    theirs = pp({'image': record_image(ds.raw(index), ds.where(index))},
                np.random.default_rng([seed, index, epoch]))['image']
    same += bool(ours.dtype == theirs.dtype and np.array_equal(ours, theirs))
  return dict(examples=len(keys), identical=same)


def versions():
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  out = {p: importlib.metadata.version(p) for p in ('torch', 'numpy', 'pillow', 'msgpack',
                                                    'array-record')}
  return dict(out, python='.'.join(map(str, sys.version_info[:3])))


def _emit(obj):
  print('@@' + json.dumps(obj), flush=True)


def worker(args):
  checks = {}
  for item in json.loads(args.check or '[]'):
    checks[f"{item['name']} {item['size']}"] = check(item['paths'], item['size'])
  _emit(dict(versions=versions(), threads=torch.get_num_threads(),
             interop_threads=torch.get_num_interop_threads(), check=checks))
  it = None
  for line in sys.stdin:
    cmd, _, rest = line.strip().partition(' ')
    if cmd == 'build':
      spec = json.loads(rest)
      t0 = time.perf_counter()
      loader = make_loader(spec['paths'], spec['size'], spec['batch'], spec['workers'],
                           spec['seed'])
      it = iter(loader)
      for _ in range(spec['warmup']):  # starts the worker processes, fills their queues
        next(it)
      _emit(dict(start_s=time.perf_counter() - t0))
    elif cmd == 'time':
      seconds = float(rest)
      t0 = time.perf_counter()
      stamps = [t0]
      while stamps[-1] - t0 < seconds or len(stamps) < 4:
        next(it)
        stamps.append(time.perf_counter())
      _emit(dict(stamps=[s - t0 for s in stamps]))
    elif cmd == 'close':
      del it  # the multiprocessing iterator ends its workers when it goes
      it = None
      _emit({})
    elif cmd in ('quit', ''):
      break
    else:
      raise ValueError(f'unknown command {line!r}')


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('corpus', nargs='?', help='a shard dir (its train split) or a glob of shards')
  ap.add_argument('--size', type=int, default=224)
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--workers', type=int, default=0)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--seconds', type=float, default=5.0)
  ap.add_argument('--threads', type=int, default=0,
                  help="torch intra-op threads of this process; 0: torch's default")
  ap.add_argument('--worker', action='store_true', help='serve the driver over stdin/stdout')
  ap.add_argument('--check', help='JSON list of {name, paths, size} to compare with bigvis')
  args = ap.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  if args.worker:
    return worker(args)
  if not args.corpus:
    ap.error('give a corpus (or --worker)')
  pattern = (os.path.join(args.corpus, 'train-*-of-*.array_record') if os.path.isdir(args.corpus)
             else args.corpus)
  paths = sorted(glob.glob(pattern))
  if not paths:
    ap.error(f'no shards match {pattern!r}')
  print(json.dumps(dict(versions=versions(), check=check(paths, args.size))))
  t0 = time.perf_counter()
  it = iter(make_loader(paths, args.size, args.batch, args.workers, args.seed))
  for _ in range(args.warmup):
    next(it)
  t1 = time.perf_counter()
  n = 0
  while time.perf_counter() - t1 < args.seconds:
    next(it)
    n += 1
  t2 = time.perf_counter()
  print(f'{n * args.batch / (t2 - t1):.0f} images/s ({n} batches of {args.batch}, {args.workers} '
        f'workers, {args.size} px; start {t1 - t0:.1f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
