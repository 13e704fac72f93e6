"""Training metrics: `metrics.jsonl`, TensorBoard events, analytic FLOPs and MFU."""
import json
import math

import jax
from jax.extend import core as jex_core

from bigvis import fileio


def _dot_flops(eqn):
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lhs_contract, _), (lhs_batch, _) = eqn.params['dimension_numbers']
  out = math.prod(eqn.outvars[0].aval.shape)
  return 2 * out * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn):
  rhs = eqn.invars[1].aval.shape
  spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature dim, in feature dim, spatial...)
  per_output = math.prod(rhs[d] for d in spec[1:])  # in-features/group * kernel window
  return 2 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _jaxpr_flops(jaxpr):
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      total += _dot_flops(eqn)
    elif eqn.primitive.name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    repeat = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
    for sub in jex_core.jaxprs_in_params(eqn.params):
      total += repeat * _jaxpr_flops(sub)
  return total


def matmul_flops(fn, *args):
  """FLOPs of the matmuls and convolutions `fn(*args)` would run, counted from shapes (analytic,
  no compile). Elementwise work is left out, as MFU conventions do."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


class MetricsWriter:
  """Appends one JSON object per log step to `metrics.jsonl` and the same scalars to TensorBoard.

  On resume, lines past the restored step (written after the last checkpoint of a killed run) are
  dropped first, so the file tells the history of the parameters that exist. In a bucket, where
  objects cannot be appended to, each write uploads the whole file anew (a few hundred lines).
  """

  def __init__(self, workdir, *, enabled=True, resume_step=0):
    self.enabled = enabled
    self.path = fileio.join(workdir, 'metrics.jsonl')
    self._tb = None
    self._lines = None  # In a bucket: every line so far, uploaded whole on each write.
    if not enabled:
      return
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # Imported lazily: only process 0 writes.
    self._tb = SummaryWriter(fileio.join(workdir, 'tensorboard'))  # Writes gs:// itself.

  def _truncate_after(self, step):
    exists = fileio.path(self.path).exists()
    kept = [json.dumps(row) + '\n' for row in _rows(self.path) if row['step'] <= step] if exists else []
    if fileio.is_remote(self.path):
      self._lines = kept
    if exists:
      fileio.write_text_atomic(self.path, ''.join(kept))

  def write(self, step, scalars):
    if not self.enabled:
      return
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    if self._lines is None:
      with open(self.path, 'a') as f:
        f.write(json.dumps(row) + '\n')
    else:
      self._lines.append(json.dumps(row) + '\n')
      fileio.write_text_atomic(self.path, ''.join(self._lines))
    for key, value in scalars.items():
      self._tb.add_scalar(key, float(value), int(step))
    self._tb.flush()

  def close(self):
    if self._tb:
      self._tb.close()


def _rows(path):
  """Parsed lines; a line torn by a kill mid-write is dropped, not fatal."""
  rows = []
  for line in fileio.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def read_metrics(workdir):
  return _rows(fileio.join(workdir, 'metrics.jsonl'))
