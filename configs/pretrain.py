"""Pretraining on weak labels mined from text: a ViT (or the ResNet baseline) with a multi-label
head, softmax over multi-hot targets normalized to sum 1 (Mahajan et al. 2018).

Targets are the mined label clusters by default (`labels=clusters`), the raw mined vocabulary with
`labels=vocab`. Class counts come from the corpus's dataset card. data=shapes trains on the
synthetic corpus's `tags` instead (no mining needed).

Prepare the data first:
  python tools/prepare.py emoji --out runs/data/emoji
  python tools/mine_labels.py --corpus runs/data/emoji --out runs/data/emoji_mined
  python tools/make_synthetic.py --out runs/data/shapes          # for data=shapes
Run (about 4 minutes on a 2-core CPU):
  python -m bigvis.train --config configs/pretrain.py:runlocal --workdir runs/pretrain
Full size:
  python -m bigvis.train --config configs/pretrain.py:variant=B/16 --workdir gs://.../pretrain
Corpora mixed (data=emoji+openclipart): mine them jointly, so that their labels are one class
list, then train on both train splits, every record sampled alike as from one pooled corpus
(input.mix='records'; 'weight' mixes by input.sources.NAME.weight alone):
  python tools/mine_labels.py --corpus runs/data/emoji runs/data/openclipart \\
      --out runs/data/emoji+openclipart_mined --exclude_names_of folder
  python -m bigvis.train --config configs/pretrain.py:runlocal,data=emoji+openclipart \\
      --workdir runs/pretrain_mixed
Args: variant (ViT Ti/16 .. g/14 at any patch, or resnet50, resnext50_32x4d), data (emoji |
openclipart | shapes, or corpora joined by '+'), labels (clusters | vocab), runlocal.
"""
from bigvis import config as config_lib
from bigvis import synthetic


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='B/16', data='emoji', labels='clusters',
                             runlocal=False)
  c = config_lib.defaults()
  c.seed = 0
  c.total_steps = 20_000
  c.batch_size = 1024
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000

  corpora = arg.data.split('+')
  if unknown := sorted(set(corpora) - {'emoji', 'openclipart', 'shapes'}):
    raise ValueError(f'data={arg.data!r}: {unknown} unknown; choose emoji, openclipart or shapes '
                     "(several mined ones joined by '+')")
  c.input.data_dir = f'runs/data/{arg.data}' if arg.data == 'shapes' else f'runs/data/{arg.data}_mined'
  c.input.split = 'train'
  if len(corpora) > 1:
    if 'shapes' in corpora:
      raise ValueError(f'data={arg.data!r}: shapes has no mined labels to mix')
    c.input.data_dir, c.input.split, c.input.mix = '', '', 'records'
    for name in corpora:  # Their copies under the joint mining's output (tools/mine_labels.py).
      c.input.sources[name] = config_lib.source(f'runs/data/{arg.data}_mined/{name}')
  c.input.pp = 'decode|random_resized_crop(224, scale=(0.5, 1.0))|flip_lr|value_range(-1,1)'
  c.input.worker_count = 8

  if arg.variant.startswith('res'):  # resnet50 -> '50', resnext50_32x4d -> 'x50_32x4d'
    c.model.name = 'resnet'
    c.model.variant = (arg.variant.replace('resnext', 'x', 1) if arg.variant.startswith('resnext')
                       else arg.variant.removeprefix('resnet'))
  else:
    c.model.name, c.model.variant = 'vit', arg.variant
    c.model.pool_type = 'map'

  if arg.data == 'shapes':
    # tools/make_synthetic.py writes no dataset card: the class count comes from the module.
    c.tasks.labels = config_lib.task('multilabel', 'tags', synthetic.NUM_TAGS, loss='softmax_xent')
  else:
    fields = {'clusters': 'mined_clusters', 'vocab': 'mined_labels'}
    if arg.labels not in fields:
      raise ValueError(f'labels={arg.labels!r}: choose from {sorted(fields)}')
    field = fields[arg.labels]
    c.tasks.labels = config_lib.task('multilabel', field, loss='softmax_xent')

  c.optimizer.name = 'adamw'
  c.optimizer.lr = 1e-3
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 1000
  c.optimizer.schedule = 'cosine'
  c.mesh.data, c.mesh.fsdp, c.mesh.model = -1, 1, 1

  if arg.runlocal:  # A laptop-sized run of the same recipe, the demo's pretraining.
    # 1200 steps, not 600: the demo's lead over scratch grows by more than the seed spread
    # (tools/demo.py --seeds 0,1,2 at both, README "The demo's recipe").
    c.total_steps = 1200
    c.batch_size = 64
    c.log_every_steps = 50
    c.checkpoint_every_steps = 600
    c.input.pp = 'decode|random_resized_crop(64, scale=(0.5, 1.0))|flip_lr|value_range(-1,1)'
    c.input.worker_count = 0
    c.optimizer.warmup_steps = 30
    if c.model.name == 'vit':
      c.model.variant = 'Ti/16'
  return c
