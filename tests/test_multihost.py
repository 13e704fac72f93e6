"""A real multi-host run on one machine: two processes joined by jax.distributed (gloo CPU
collectives), 4 devices each, training the tiny model on one 8-device mesh; SIGTERM to both makes
them agree on a step, save it and exit 0 (Orbax's preemption sync point), and a restart resumes
from it; the result matches one process with 8 devices and the same global batch."""
import os
import re
import signal
import subprocess
import sys
import time

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from bigvis import metrics
from tests import helpers


def _start_two_processes(workdir, data_dir, *flags):
  port = helpers.free_port()
  procs = []
  for process_id in range(2):
    env = dict(os.environ, PYTHONPATH=helpers.REPO,
               XLA_FLAGS='--xla_force_host_platform_device_count=4',
               BIGVIS_COORDINATOR=f'127.0.0.1:{port}', BIGVIS_NUM_PROCESSES='2',
               BIGVIS_PROCESS_ID=str(process_id))
    cmd = [sys.executable, '-m', 'bigvis.train', '--config',
           os.path.join(helpers.REPO, 'tests', 'tiny_config.py') + f':data_dir={data_dir}',
           '--workdir', str(workdir), *flags]
    procs.append(subprocess.Popen(cmd, env=env, cwd=helpers.REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def _wait(procs):
  errs = []
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    errs.append(err)
  return errs


def _params(workdir, step):
  path = epath.Path(workdir) / 'checkpoints' / str(step) / 'state'
  handler = ocp.PyTreeCheckpointHandler()
  item = handler.metadata(path).tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  return handler.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args))


def test_two_processes_sigterm_save_resume_and_match_one_process(shapes_dir, tmp_path):
  steps = 20
  common = [f'--config.total_steps={steps}', '--config.checkpoint_every_steps=1000',
            '--config.input.shuffle=True']
  multi = tmp_path / 'multi'
  procs = _start_two_processes(multi, shapes_dir, *common)
  deadline = time.time() + 300
  while not (multi / 'metrics.jsonl').exists():  # Step 1 is done: both are training.
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  errs = _wait(procs)  # Each exits 0 after the save.
  saved = sorted(int(s) for s in os.listdir(multi / 'checkpoints'))
  assert len(saved) == 1 and saved[0] < steps, f'not preempted before the end: {saved}'
  for err in errs:  # Both stopped at the step they agreed on, and said so.
    assert re.findall(r'Preempted at step (\d+)', err) == [str(saved[0])], err[-2000:]
  _wait(_start_two_processes(multi, shapes_dir, *common))  # Resumes from it, runs to the end.
  assert sorted(int(s) for s in os.listdir(multi / 'checkpoints')) == [saved[0], steps]

  single = helpers.train_process(tmp_path / 'single', shapes_dir, *common)
  _, err = single.communicate(timeout=600)
  assert single.returncode == 0, err[-3000:]
  expected, got = _params(tmp_path / 'single', steps), _params(multi, steps)
  assert int(got['step']) == steps
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(expected['params']),
                               jax.tree_util.tree_leaves_with_path(got['params'])):
    # Same global batches, same mesh shape; only the all-reduce order may differ (gloo vs in
    # process), as in the 1-vs-8-device test.
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4, err_msg=jax.tree_util.keystr(path))
  losses = [r['loss'] for r in metrics.read_metrics(tmp_path / 'single') if 'loss' in r]
  multi_losses = [r['loss'] for r in metrics.read_metrics(multi) if 'loss' in r]
  assert len(losses) == len(multi_losses) == steps
  np.testing.assert_allclose(multi_losses, losses, rtol=2e-4)
