"""The jit matmul ceiling of this machine in GFLOP/s, float32 and bf16 inputs with float32 accumulation.

    .venv/bin/python bench/matmul_ceiling.py            # ~20 s on the 2-core dev CPU
    .venv/bin/python bench/matmul_ceiling.py --json     # one JSON object on stdout

    from matmul_ceiling import measure                   # bench/ on sys.path
    ceiling = measure()['ceiling']                       # {'float32': 1.4e11, 'bfloat16': 2.3e11}

For each precision and shape, `jax.jit(jnp.dot)` of two fixed random matrices: float32 x float32,
and bfloat16 x bfloat16 with `preferred_element_type=float32` (what a bf16 layer asks XLA for).
Shapes: a square 2048 x 2048 x 2048 and the ViT-Ti/16 MLP matmul at 224 px, batch 32
([6304, 192] x [192, 768]: 32 x 197 tokens). One sample is as many back-to-back calls (each
ended by `block_until_ready`) as fill `--sample-seconds`; FLOP/s = 2 m k n x calls / seconds;
median, min and max over `--samples` samples, after one untimed compile + warm-up call.
The ceiling of a precision is the best median over its shapes: the figure a training step's MFU
divides by (`bench/train_step.py` measures it at the start of each run).
"""
import argparse
import json
import statistics
import time

SHAPES = {'square 2048': (2048, 2048, 2048), 'vit-ti16 mlp [6304,192]x[192,768]': (6304, 192, 768)}
PRECISIONS = ('float32', 'bfloat16')


def _time_matmul(m, k, n, precision, samples, sample_seconds, seed=0):
  import jax
  import jax.numpy as jnp
  dtype = jnp.float32 if precision == 'float32' else jnp.bfloat16
  ka, kb = jax.random.split(jax.random.key(seed))
  a = jax.random.normal(ka, (m, k), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (k, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  t = time.perf_counter()
  f(a, b).block_until_ready()  # Compile + first run.
  first = time.perf_counter() - t
  t = time.perf_counter()
  f(a, b).block_until_ready()
  calls = max(1, round(sample_seconds / max(time.perf_counter() - t, 1e-6)))
  flops = 2.0 * m * k * n
  rates = []
  for _ in range(samples):
    t = time.perf_counter()
    for _ in range(calls):
      f(a, b).block_until_ready()
    rates.append(flops * calls / (time.perf_counter() - t))
  return dict(shape=[m, k, n], precision=precision, calls_per_sample=calls,
              first_call_seconds=first, flops_per_sec=dict(
                  median=statistics.median(rates), min=min(rates), max=max(rates), values=rates))


def measure(shapes=None, precisions=PRECISIONS, samples=7, sample_seconds=0.3):
  """Times every (precision, shape); returns a dict:

    ceiling:      {precision: FLOP/s}, the best median over the shapes
    ceiling_shape: {precision: shape name} that gave it
    results:      {precision: {shape name: {shape, flops_per_sec: {median, min, max, values}, ...}}}
  """
  import jax
  shapes = shapes or SHAPES
  results, ceiling, best = {}, {}, {}
  t0 = time.perf_counter()
  for p in precisions:
    results[p] = {name: _time_matmul(*mkn, p, samples, sample_seconds)
                  for name, mkn in shapes.items()}
    best[p] = max(results[p], key=lambda s: results[p][s]['flops_per_sec']['median'])
    ceiling[p] = results[p][best[p]]['flops_per_sec']['median']
  return dict(ceiling=ceiling, ceiling_shape=best, results=results,
              method='jax.jit(jnp.dot(a, b, preferred_element_type=float32)); median of '
                     f'{samples} samples of ~{sample_seconds} s each',
              jax=jax.__version__, devices=[str(d) for d in jax.devices()],
              seconds=time.perf_counter() - t0)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument('--samples', type=int, default=7)
  ap.add_argument('--sample-seconds', type=float, default=0.3)
  ap.add_argument('--json', action='store_true', help='print one JSON object, nothing else')
  args = ap.parse_args()
  res = measure(samples=args.samples, sample_seconds=args.sample_seconds)
  if args.json:
    print(json.dumps(res))
    return
  print(f'| precision | shape [m,k]x[k,n] | GFLOP/s median | min | max |\n|---|---|---:|---:|---:|')
  for p, by_shape in res['results'].items():
    for name, r in by_shape.items():
      f = r['flops_per_sec']
      print(f'| {p} | {name} | {f["median"] / 1e9:.1f} | {f["min"] / 1e9:.1f} | '
            f'{f["max"] / 1e9:.1f} |')
  print('ceiling: ' + ', '.join(f'{p} {c / 1e9:.1f} GFLOP/s ({res["ceiling_shape"][p]})'
                                for p, c in res['ceiling'].items()))


if __name__ == '__main__':
  main()
