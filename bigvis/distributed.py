"""Multi-host start-up, behind one function."""
import logging
import os

import jax


def initialize():
  """Starts `jax.distributed` when the environment describes more than one process.

  - Explicit: BIGVIS_COORDINATOR (host:port), BIGVIS_NUM_PROCESSES, BIGVIS_PROCESS_ID
    (any machines, including several processes on one CPU host).
  - SLURM: a job step with more than one task (srun sets SLURM_NTASKS, SLURM_PROCID, ...).
  - TPU pod slice: more than one worker in TPU_WORKER_HOSTNAMES.
  Otherwise nothing is started and the run is single-process. Returns (process_index, count).
  """
  env = os.environ
  if 'BIGVIS_COORDINATOR' in env:
    num = int(env['BIGVIS_NUM_PROCESSES'])
    if jax.config.jax_platforms in (None, '', 'cpu') and num > 1:
      # CPU processes need a collectives backend to all-reduce across hosts.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(env['BIGVIS_COORDINATOR'], num, int(env['BIGVIS_PROCESS_ID']))
  elif int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in env:
    jax.distributed.initialize(cluster_detection_method='slurm')
  elif len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1:
    jax.distributed.initialize()
  logging.info('process %d of %d; %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return jax.process_index(), jax.process_count()
