"""bigvis: billion-scale multi-task visual representation learning in JAX/Flax."""
import os

# XLA's CPU backend hands dots to YNNPACK by default; its dots ran bigvis's ViT-Ti/16 training step
# ~10% slower on the dev CPU than XLA's own (Eigen) ones (bench/results/train_step.md), so bigvis
# opts out unless XLA_FLAGS already says otherwise. It only takes effect if set before JAX starts
# its CPU backend, i.e. when bigvis is imported before the first computation, and does nothing on
# GPU or TPU.
_YNN = '--xla_cpu_experimental_ynn_fusion_type'
if _YNN not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_YNN}=".strip()
