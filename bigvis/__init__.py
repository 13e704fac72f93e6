"""bigvis: billion-scale multi-task visual representation learning in JAX/Flax.

Importing bigvis changes no process state. CPU-only host settings (an XLA CPU flag, glibc malloc)
live in `bigvis.cpu_tuning` and are applied by the trainer's start-up on the CPU backend only.
"""
