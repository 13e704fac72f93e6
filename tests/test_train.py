"""The trainer end to end: metrics, checkpoints, 1 vs 8 devices, exact resume after SIGKILL,
clean exit on SIGTERM, gradient accumulation."""
import json
import os
import random
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bigvis import config as config_lib, data, heads, metrics, optim, records, train
from tests import helpers


def _steps(ckpt_dir):
  """Finished checkpoint steps (Orbax renames a step's temp dir to its number on commit)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _load_state(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))


def _assert_trees_equal(a, b):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_train_writes_metrics_config_and_checkpoints(shapes_dir, tmp_path):
  c = helpers.tiny_config(shapes_dir, total_steps=6)
  state = train.train(c, str(tmp_path))
  assert int(state['step']) == 6
  rows = metrics.read_metrics(tmp_path)
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
  for r in rows:
    assert {'loss', 'loss/labels', 'loss/identity', 'loss/shape', 'learning_rate',
            'grad_norm'} <= set(r)
    weighted = r['loss/labels'] + 0.5 * r['loss/identity'] + 0.5 * r['loss/shape']
    assert r['loss'] == pytest.approx(weighted, rel=1e-5)
  for r in rows[1:]:  # Step 1 compiles and is not timed.
    assert r['examples_per_sec'] > 0 and r['flops_per_example'] > 0 and 0 < r['mfu'] < 1
    assert r['examples_per_sec_per_device'] == pytest.approx(r['examples_per_sec'] / 8)
  assert _steps(tmp_path / 'checkpoints') == [3, 6]
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['total_steps'] == 6 and saved['model']['variant'] == 'test/8'
  assert any(f.startswith('events') for f in os.listdir(tmp_path / 'tensorboard'))


def test_metrics_resume_drops_later_and_torn_lines(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text(
      '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
  writer = metrics.MetricsWriter(str(tmp_path), resume_step=2)
  writer.write(3, {'loss': 0.5})
  writer.close()
  assert [(r['step'], r['loss']) for r in metrics.read_metrics(tmp_path)] == [
      (1, 2.0), (2, 1.5), (3, 0.5)]


def test_loss_goes_down_in_bf16(shapes_dir, tmp_path):
  c = helpers.tiny_config(shapes_dir, total_steps=40, log_every_steps=1,
                          checkpoint_every_steps=40, **{'model.dtype': 'bfloat16'})
  c.optimizer.lr = 3e-3
  state = train.train(c, str(tmp_path))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state['params']))
  losses = [r['loss'] for r in metrics.read_metrics(tmp_path)]
  assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_one_device_and_eight_devices_give_the_same_losses(shapes_dir, tmp_path):
  runs = {'1': ([], 1), '8': (['--config.mesh.data=2', '--config.mesh.fsdp=2',
                               '--config.mesh.model=2'], 8)}
  procs = {}
  for name, (flags, devices) in runs.items():
    procs[name] = helpers.train_process(tmp_path / name, shapes_dir, '--config.total_steps=8',
                                        *flags, devices=devices)
  for name, p in procs.items():
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    # The CLI's start-up applied the CPU host settings (this backend is the CPU).
    assert "host tuning (host_tuning=auto): {'xla_flags': True, 'keep_freed_memory': True}" in err
  one, eight = (metrics.read_metrics(tmp_path / n) for n in ('1', '8'))
  assert [r['step'] for r in one] == [r['step'] for r in eight] == list(range(1, 9))
  for key in ('loss', 'loss/labels', 'loss/identity', 'loss/shape', 'grad_norm'):
    np.testing.assert_allclose([r[key] for r in eight], [r[key] for r in one], rtol=2e-4,
                               err_msg=key)
  # Adam scales every update to about the learning rate (1e-3 here), so a gradient at rounding-noise
  # level may flip sign between reduction orders: params agree to within a fraction of one step.
  one_p, eight_p = (_load_state(tmp_path / n, 8)['params'] for n in ('1', '8'))
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(one_p),
                               jax.tree_util.tree_leaves_with_path(eight_p)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4, err_msg=jax.tree_util.keystr(path))


def test_a_checkpoint_of_one_impl_resumes_in_the_other(shapes_dir, tmp_path):
  """model.impl changes how the ViT computes, not its parameters: a run saved with the CPU layers
  resumes with flax's (and the reverse is the same tree), on the same trajectory."""
  first = helpers.tiny_config(shapes_dir, total_steps=3, **{'model.impl': 'cpu'})
  train.train(first, str(tmp_path / 'cpu'))
  shutil.copytree(tmp_path / 'cpu', tmp_path / 'flax')
  for impl in ('cpu', 'flax'):
    train.train(helpers.tiny_config(shapes_dir, total_steps=6, **{'model.impl': impl}),
                str(tmp_path / impl))
  cpu, flax_run = (metrics.read_metrics(tmp_path / n) for n in ('cpu', 'flax'))
  assert [r['step'] for r in cpu] == [r['step'] for r in flax_run] == list(range(1, 7))
  for key in ('loss', 'grad_norm'):
    np.testing.assert_allclose([r[key] for r in flax_run], [r[key] for r in cpu], rtol=2e-4,
                               err_msg=key)
  for (path, a), (_, b) in zip(
      jax.tree_util.tree_leaves_with_path(_load_state(tmp_path / 'cpu', 6)['params']),
      jax.tree_util.tree_leaves_with_path(_load_state(tmp_path / 'flax', 6)['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4, err_msg=jax.tree_util.keystr(path))


def _wait_for_checkpoint(proc, ckpt_dir, timeout=300):
  deadline = time.time() + timeout
  while not _steps(ckpt_dir):
    if proc.poll() is not None:
      raise AssertionError(f'trainer exited early: {proc.stderr.read()[-3000:]}')
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.01)


def test_sigkill_then_restart_ends_bit_identical(shapes_dir, tmp_path):
  steps = ['--config.total_steps=40', '--config.checkpoint_every_steps=5']
  reference = helpers.train_process(tmp_path / 'ref', shapes_dir, *steps)
  _, err = reference.communicate(timeout=600)
  assert reference.returncode == 0, err[-3000:]

  workdir = tmp_path / 'killed'
  rng = random.Random(0)
  for kill in range(2):  # Kill twice, at a random moment after a checkpoint exists.
    p = helpers.train_process(workdir, shapes_dir, *steps)
    before = _steps(workdir / 'checkpoints')
    _wait_for_checkpoint(p, workdir / 'checkpoints')
    while _steps(workdir / 'checkpoints') == before:
      time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.3))
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL, f'run {kill} finished before it could be killed'
    assert _steps(workdir / 'checkpoints')[-1] < 40
  p = helpers.train_process(workdir, shapes_dir, *steps)
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]

  _assert_trees_equal(_load_state(tmp_path / 'ref', 40), _load_state(workdir, 40))
  # metrics.jsonl dropped the lines of steps redone after each kill: one row per step.
  ref_rows, rows = metrics.read_metrics(tmp_path / 'ref'), metrics.read_metrics(workdir)
  assert [r['step'] for r in rows] == list(range(1, 41))
  assert [r['loss'] for r in rows] == [r['loss'] for r in ref_rows]


def test_sigterm_saves_and_exits_cleanly(shapes_dir, tmp_path):
  p = helpers.train_process(tmp_path, shapes_dir, '--config.total_steps=100000',
                            '--config.checkpoint_every_steps=1000')
  deadline = time.time() + 300
  while not (tmp_path / 'metrics.jsonl').exists():  # Training has started.
    assert p.poll() is None and time.time() < deadline
    time.sleep(0.05)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=60)
  assert p.returncode == 0, err[-3000:]
  saved = _steps(tmp_path / 'checkpoints')
  assert len(saved) == 1 and 0 < saved[0] < 1000
  assert 'Preempted at step' in err


def test_grad_accumulation_matches_one_big_batch(shapes_dir):
  c = helpers.tiny_config(shapes_dir)
  ds = data.make_dataset(records.shard_paths(shapes_dir, 'train'), pp=c.input.pp,
                         labels=config_lib.label_specs(c), batch_size=8, seed=0)
  batch = next(iter(ds))
  batch = {'image': jnp.asarray(batch['image']), 'labels': batch['labels']}
  model = heads.build_model(c)
  tx, lr = optim.make_optimizer(c.optimizer, c.total_steps)
  params = model.init(jax.random.key(0), batch['image'][:1])['params']
  state = dict(step=jnp.array(3), params=params, opt_state=tx.init(params))
  results = {}
  for accum in (1, 4):
    c.grad_accum_steps = accum
    step = jax.jit(train.make_train_step(model, c, tx, lr))
    results[accum] = step(state, batch)
  for accum in (4,):
    np.testing.assert_allclose(results[accum][1]['loss'], results[1][1]['loss'], rtol=1e-5)
    # Adam behind clipping is blind to the gradient's scale: the norm is what shows a wrong mean.
    np.testing.assert_allclose(results[accum][1]['grad_norm'], results[1][1]['grad_norm'],
                               rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 results[accum][0]['params'], results[1][0]['params'])
