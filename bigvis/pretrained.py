"""Pretrained weights to start fine-tuning from, mapped onto a fresh model's params by name.

Sources: a big_vision `.npz` (trunk names at the top level, or under `params/`), an older
google-research/vision_transformer `.npz`, a bigvis `.npz` from `save_npz`, or a bigvis training
run (its workdir, or one `checkpoints/<step>` folder). ViT names follow big_vision, so a trunk
param `X` in a file is `trunk/X` in a MultiTaskModel.

  params = pretrained.load(init_params, 'ViT-B_16.npz')        # trunk only; heads stay at init
  params = pretrained.load(init_params, 'runs/a', skip='^$')   # trunk and heads of a bigvis run
"""
import io
import math
import os
import re
import zipfile

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from bigvis import fileio, sharding

POSEMB = 'trunk/pos_embedding'
# Whole-checkpoint .npz files keep the params under a prefix beside the optimizer state:
# big_vision's `params/`, and flax.optim's `opt/target/` in vision_transformer's training files.
_PREFIXES = ('params/', 'opt/target/')
# Older layouts -> big_vision names. vision_transformer kept the posemb in a `posembed_input`
# module (big_vision before 2022: in the encoder), and its blocks kept pre-linen names, numbered by
# one counter over all submodules rather than one per type.
_RENAMES = (
    (r'^Transformer/(posembed_input/)?pos_embedding$', 'pos_embedding'),
    (r'^(Transformer/encoderblock_\d+)/LayerNorm_2/', r'\1/LayerNorm_1/'),
    (r'^(Transformer/encoderblock_\d+)/MultiHeadDotProductAttention_1/',
     r'\1/MultiHeadDotProductAttention_0/'),
    (r'^(Transformer/encoderblock_\d+)/MlpBlock_3/', r'\1/MlpBlock_0/'),
)
_SHOW = 10  # Names listed per log line.


def load(init_params, path, *, skip=r'^head_', log=True):
  """`init_params` with every param found in `path` (and not matching `skip`) replaced.

  Names are `sharding.path_name`s ('trunk/Transformer/...', 'head_<task>/...'). The result has
  `init_params`' structure, shapes and dtypes. A learned `trunk/pos_embedding` is resampled to the
  model's patch grid; any other shape mismatch is an error. Raises ValueError if nothing loads.
  """
  path = os.fspath(path)
  if not fileio.path(path).exists():  # Local or in a bucket.
    raise FileNotFoundError(f'No pretrained weights at {path}')
  source = _read_checkpoint(path) if fileio.path(path).is_dir() else _read_npz(path)
  loaded, kept = [], []

  def one(key_path, init):
    name = sharding.path_name(key_path)
    if name not in source or re.search(skip, name):
      kept.append(name)
      return init
    value = source[name]
    if name == POSEMB and value.shape[-1] == init.shape[-1]:  # Same width, maybe another grid.
      value = resample_posemb(value, init.shape[1])
    if value.shape != init.shape:
      raise ValueError(f'{path}: {name} has shape {source[name].shape}, the model wants '
                       f'{tuple(init.shape)}')
    loaded.append(name)
    return np.asarray(value, init.dtype)

  params = jax.tree_util.tree_map_with_path(one, init_params)
  unused = sorted(set(source) - set(loaded))
  if not loaded:
    raise ValueError(f'{path}: none of its {len(source)} params ({_names(sorted(source))}) is a '
                     f'param of this model ({_names(kept)}); is it a checkpoint of another model?')
  if log:
    logging.info('Loaded %d params from %s; kept at init %d: %s; unused in the source %d: %s',
                 len(loaded), path, len(kept), _names(kept), len(unused), _names(unused))
  return params


def save_npz(path, params):
  """Writes `params` as a flat big_vision-layout .npz, atomically.

  Trunk params lose their `trunk/` prefix, so big_vision (and timm) read the trunk as a ViT;
  heads keep their `head_<task>/` names, which `load` maps back.
  """
  flat = {re.sub('^trunk/', '', sharding.path_name(p)): np.asarray(jax.device_get(x))
          for p, x in jax.tree_util.tree_leaves_with_path(params)}
  with fileio.atomic_file(path) as f:  # A file object: np.savez would append '.npz' to a name.
    np.savez(f, **flat)


def resample_posemb(posemb, new_len):
  """Bilinear resize of a square grid of position embeddings [1, h*w, D] -> [1, new_len, D].

  For fine-tuning at another resolution (Dosovitskiy et al. 2021, sec. 3.2). big_vision uses
  scipy's corner-aligned zoom; jax.image.resize samples at pixel centres, like timm.
  """
  posemb = np.asarray(posemb)
  if posemb.shape[1] == new_len:
    return posemb
  old, new = _grid_side(posemb.shape[1]), _grid_side(new_len)
  grid = posemb.reshape(old, old, -1).astype(np.float32)
  grid = jax.image.resize(grid, (new, new, grid.shape[-1]), method='bilinear')
  return np.asarray(grid, posemb.dtype).reshape(1, new_len, -1)


def _grid_side(length):
  side = math.isqrt(length)
  if side * side != length:
    raise ValueError(f'pos_embedding of length {length} is not a square grid of patches')
  return side


def _read_npz(path):
  """{model param name: array} from a .npz in any of the layouts in the module docstring."""
  try:
    # No pickle: loading a pickled object runs code from the file.
    data = np.load(io.BytesIO(fileio.path(path).read_bytes()), allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError('it holds a single array, not named params')
    with data:
      flat = {k: data[k] for k in data.files}  # Reads every array now, so errors surface here.
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path}: not a readable .npz of arrays ({e})') from e
  for prefix in _PREFIXES:
    if any(k.startswith(prefix) for k in flat):
      flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
      break
  for pattern, repl in _RENAMES:
    flat = {re.sub(pattern, repl, k): v for k, v in flat.items()}
  pe = flat.get('pos_embedding')
  if pe is not None and pe.ndim == 3 and _is_square(pe.shape[1] - 1) and pe.shape[1] > 1:
    # Old vit.py prepended the class token, then added a posemb with a row for it. Adding that row
    # to `cls` gives the same network in this ViT's layout, where the posemb covers patches only.
    if 'cls' in flat:
      flat['cls'] = flat['cls'] + pe[:, :1]
    flat['pos_embedding'] = pe[:, 1:]
  # A bigvis export names its params as the model does; a big_vision file holds a bare trunk.
  return {k if k.startswith(('trunk/', 'head_')) else f'trunk/{k}': v for k, v in flat.items()}


def _is_square(n):
  return n >= 0 and math.isqrt(n) ** 2 == n


def _read_checkpoint(path):
  """{param name: array} of a bigvis run: `path` is its workdir, checkpoints/ or one step folder."""
  step_dir = fileio.path(fileio.absolute(path))  # Orbax wants absolute paths.
  if not (step_dir / 'state').is_dir():
    ckpt_dir = step_dir / 'checkpoints'
    ckpt_dir = ckpt_dir if ckpt_dir.is_dir() else step_dir
    # Orbax writes a step under a temporary name and renames it to the number once complete.
    steps = [int(d.name) for d in ckpt_dir.iterdir()
             if d.name.isdigit() and (d / 'state').is_dir()]
    if not steps:
      raise FileNotFoundError(f'{path}: no checkpoint (want a workdir with checkpoints/<step>/'
                              f'state, or a checkpoints/<step> folder)')
    step_dir = ckpt_dir / str(max(steps))
  state_dir = step_dir / 'state'
  # A partial restore of `params` alone: the optimizer state is neither read nor needs a target,
  # and numpy leaves need neither the devices nor the mesh the run was saved from (a restore with
  # no target at all would rebuild the saved shardings and fail on another device count).
  handler = ocp.PyTreeCheckpointHandler()
  try:
    item = {'params': handler.metadata(state_dir).tree['params']}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    params = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True))['params']
  finally:
    handler.close()
  logging.info('Read params of %s', state_dir)
  return {sharding.path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}


def _names(names):
  if not names:
    return '-'
  return ', '.join(names[:_SHOW]) + (f', ... ({len(names) - _SHOW} more)' if len(names) > _SHOW
                                     else '')
