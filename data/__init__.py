"""TFDS dataset definitions over prepared bigvis corpora (see data/README.md).

Importing `data.bigvis_corpus` or `data.bigvis_emoji` registers their builders with TFDS.
"""
