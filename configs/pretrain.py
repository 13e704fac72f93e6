"""Multi-label pretraining on weak labels: a ViT (or the ResNet baseline) with a softmax head over
the label vocabulary, targets multi-hot normalized to sum 1.

Until mined labels land, the labels are the synthetic shapes corpus's `tags` field. Make it first:
  python tools/make_synthetic.py --out runs/data/shapes

Run (seconds on a 2-core CPU):
  python -m bigvis.train --config configs/pretrain.py:runlocal --workdir runs/pretrain
Full size:
  python -m bigvis.train --config configs/pretrain.py:variant=B/16 --workdir gs://.../pretrain
Args: variant (ViT Ti/16 .. g/14, or resnet50, resnext50), runlocal, embed (add an identity
embedding task beside the multi-label one).
"""
from bigvis import config as config_lib
from bigvis import synthetic


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='B/16', runlocal=False, embed=False)
  c = config_lib.defaults()
  c.seed = 0
  c.total_steps = 90_000
  c.batch_size = 4096
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000

  c.input.data_dir = 'runs/data/shapes'
  c.input.split = 'train'
  c.input.pp = 'decode|random_resized_crop(224, scale=(0.3, 1.0))|flip_lr|value_range(-1,1)'
  c.input.worker_count = 8

  if arg.variant.startswith('res'):
    c.model.name, c.model.variant = 'resnet', arg.variant.removeprefix('resnet').removeprefix('res')
  else:
    c.model.name, c.model.variant = 'vit', arg.variant
    c.model.pool_type = 'map'
  c.tasks.labels = config_lib.task('multilabel', 'tags', synthetic.NUM_TAGS, loss='softmax_xent')
  if arg.embed:
    c.tasks.identity = config_lib.task('embedding', 'identity', synthetic.NUM_IDENTITIES,
                                       weight=0.5, embed_dim=64)

  c.optimizer.name = 'adamw'
  c.optimizer.lr = 1e-3
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 10_000
  c.optimizer.schedule = 'cosine'
  c.mesh.data, c.mesh.fsdp, c.mesh.model = -1, 1, 1

  if arg.runlocal:  # A laptop-sized run of the same recipe.
    c.total_steps = 40
    c.batch_size = 16
    c.log_every_steps = 5
    c.checkpoint_every_steps = 20
    c.input.pp = 'decode|random_resized_crop(64, scale=(0.5, 1.0))|flip_lr|value_range(-1,1)'
    c.input.worker_count = 0
    c.optimizer.warmup_steps = 5
    if c.model.name == 'vit':
      c.model.variant = 'Ti/16'
  return c
