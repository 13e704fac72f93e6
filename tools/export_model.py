"""Exports a trained run's embedding model for serving: a jax.export StableHLO program with a
symbolic batch size, its weights, and serving.json (preprocessing, shapes, checksums).

  python tools/export_model.py --workdir runs/finetune --out runs/finetune/export
  python tools/export_model.py --workdir runs/pretrain --features pooled --out runs/pretrain/export

Run it with bigvis/serving.py (jax, numpy and PIL only):
  from bigvis import serving
  model = serving.load('runs/finetune/export'); model.embed_images([png_bytes, ...])
"""
import argparse
import json
import sys

from bigvis import config as config_lib, export, runs


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--workdir', required=True, help='a bigvis training run')
  p.add_argument('--out', required=True, help='export folder (local or gs://)')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  p.add_argument('--task', default=None, help='embedding task (default: the only one)')
  p.add_argument('--features', choices=runs.FEATURES, default='auto',
                 help="'embedding' (a head), 'pooled' (the trunk's features), 'auto'")
  p.add_argument('--pp', default=None, help="eval preprocessing (default: the run's)")
  p.add_argument('--platforms', default=','.join(export.DEFAULT_PLATFORMS),
                 help='comma-separated jax platforms to lower for (default cpu,cuda,tpu)')
  a = p.parse_args(argv)
  try:
    meta = export.export_model(a.workdir, a.out, step=a.step, task=a.task, features=a.features,
                               pp=a.pp, platforms=[x for x in a.platforms.split(',') if x])
  except (OSError, ValueError, config_lib.ConfigError) as e:
    sys.exit(f'export_model.py: error: {e}')
  print(json.dumps(meta, indent=1))


if __name__ == '__main__':
  main()
