"""Shared by the benchmarks' long-lived worker processes (bench/train_step.py, input_pipeline.py)."""
import subprocess


def stop(proc, log):
  """Asks a worker to quit (its `quit` line), kills it if it has not within 30 s, closes its log."""
  if proc.poll() is None:
    try:
      proc.stdin.write('quit\n')
      proc.stdin.flush()
      proc.wait(timeout=30)
    except (BrokenPipeError, subprocess.TimeoutExpired):
      proc.kill()
      proc.wait()
  log.close()
