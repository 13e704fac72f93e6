"""bigvis: billion-scale multi-task visual representation learning in JAX/Flax."""
import os

# XLA's CPU backend hands dots to YNNPACK by default; with them ViT-Ti/16's fwd+bwd took ~10% longer
# on the 2-core dev CPU than with XLA's own (Eigen) dots (3.88 vs 3.47 s at batch 32, one run after
# the other), so bigvis opts out unless XLA_FLAGS already names the flag. It only takes effect if set before JAX starts
# its CPU backend, i.e. when bigvis is imported before the first computation, and does nothing on
# GPU or TPU.
_YNN = '--xla_cpu_experimental_ynn_fusion_type'
if _YNN not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN}=".strip()

# XLA's CPU temporaries are reused rather than mapped afresh each step (see hostmem.py).
from bigvis import hostmem  # noqa: E402

hostmem.keep_freed_memory()
