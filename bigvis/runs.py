"""A finished training run on disk, read back: its config, eval preprocessing, features and params.

Shared by the tools that use a trained model (tools/embed.py, tools/export_model.py).
"""
import json
import re

import jax
import jax.numpy as jnp
import ml_collections

from bigvis import fileio, pretrained

FEATURES = ('auto', 'embedding', 'pooled')


def load_run(workdir):
  """The run's config.json (the resolved config, class counts included)."""
  path = fileio.join(workdir, 'config.json')
  if not fileio.path(path).exists():
    raise FileNotFoundError(f'{path}: not found; --workdir must be a bigvis training run')
  return ml_collections.ConfigDict(json.loads(fileio.read_text(path)))


def default_pp(config):
  """The run's evaluation preprocessing (from its evaluators), else one derived from training's:
  decode, resize to its crop size, and its final value_range/normalize op."""
  for e in config.get('evals', {}).values():
    if e.pp:
      return e.pp
  ops = [op.strip() for op in config.input.pp.split('|')]
  sized = re.compile(r'(?:random_resized_crop|resize|center_crop|random_crop)\((\d+)')
  size = next((m[1] for m in map(sized.match, ops) if m), None)
  if size and ops[-1].startswith(('value_range', 'normalize')):
    return f'decode|resize({size})|{ops[-1]}'
  raise ValueError(f'cannot derive an evaluation pp from the training pp {config.input.pp!r}; '
                   "pass --pp, e.g. 'decode|resize(224)|value_range(-1,1)'")


def resolve_features(config, features='auto', task=None):
  """(features, task): 'embedding' and the embedding head `task` (the only one by default), or
  'pooled' (the trunk's pooled features, L2-normalized: any run); 'auto' = the head if any."""
  if features not in FEATURES:
    raise ValueError(f'--features {features!r}: choose from {FEATURES}')
  embedding_tasks = [n for n, t in config.tasks.items() if t.head == 'embedding']
  if features == 'auto':
    features = 'embedding' if task or embedding_tasks else 'pooled'
  if features == 'embedding':
    task = task or (embedding_tasks[0] if len(embedding_tasks) == 1 else None)
    if task not in embedding_tasks:
      raise ValueError(f'--task {task!r}: the run\'s embedding tasks are {embedding_tasks} '
                       '(--features pooled embeds any run with its trunk\'s pooled features)')
  elif task:
    raise ValueError(f'--task {task!r} names an embedding head; --features pooled uses none')
  return features, task or ''


def checkpoint_path(workdir, step=None):
  return fileio.join(workdir, 'checkpoints', str(step)) if step is not None else workdir


def restore_params(model, workdir, image, step=None):
  """Host params of the latest checkpoint (or `step`), on the tree `model` builds for `image`."""
  fresh = jax.jit(model.init, static_argnames='train')(
      jax.random.key(0), jnp.asarray(image), train=False)['params']
  return pretrained.load(jax.device_get(fresh), checkpoint_path(workdir, step), skip=r'^$')


def restored_step(workdir, step=None):
  if step is not None:
    return step
  steps = [int(d.name) for d in (fileio.path(workdir) / 'checkpoints').iterdir()
           if d.name.isdigit()]
  return max(steps)
