"""Small configs and corpora shared by the tests, and a way to run the trainer as a process."""
import os
import re
import socket
import subprocess
import sys

from bigvis import config as config_lib
from bigvis import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hlo_defs(hlo):
  """name -> (shape, text after the shape) of each instruction in compiled HLO text."""
  return {m[1]: (tuple(int(d) for d in m[2].split(',') if d), m[3])
          for m in re.finditer(r'(%[\w.-]+) = \w+\[([\d,]*)\]\S* (.*)', hlo)}


def make_corpus(out_dir, num_records=96):
  synthetic.make_shapes_corpus(str(out_dir), num_records=num_records, image_size=32,
                               num_shards=2, seed=0, name='train')
  return str(out_dir)


def tiny_config(data_dir, **fields):
  """Three tasks (multi-label, embedding, classifier) on a 2-layer ViT at 32 px."""
  c = config_lib.defaults()
  c.total_steps, c.batch_size, c.log_every_steps, c.checkpoint_every_steps = 6, 8, 1, 3
  c.input.data_dir = data_dir
  c.input.pp = 'decode|resize(32)|flip_lr|value_range(-1,1)'
  c.model.variant = 'test/8'
  c.model.pool_type = 'gap'
  c.tasks.labels = config_lib.task('multilabel', 'tags', synthetic.NUM_TAGS)
  c.tasks.identity = config_lib.task('embedding', 'identity', synthetic.NUM_IDENTITIES,
                                     embed_dim=16, weight=0.5)
  c.tasks.shape = config_lib.task('classifier', 'shape', synthetic.NUM_SHAPES, weight=0.5)
  c.optimizer.warmup_steps = 2
  c.async_checkpointing = True
  for key, value in fields.items():
    target = c
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


def train_process(workdir, data_dir, *extra_flags, devices=8, cwd=REPO, env_extra=None,
                  **popen_kwargs):
  """Starts `python -m bigvis.train` on tests/tiny_config.py as a child process."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             PYTHONPATH=REPO, **(env_extra or {}))
  cmd = [sys.executable, '-m', 'bigvis.train', '--config',
         os.path.join(REPO, 'tests', 'tiny_config.py') + f':data_dir={data_dir}',
         '--workdir', str(workdir), *extra_flags]
  return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **popen_kwargs)


def free_port():
  """A TCP port free on loopback now (for a coordinator or an emulator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
