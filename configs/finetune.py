"""Multi-task fine-tuning on the emoji corpus: one trunk, three heads trained together.

- `identity`: the retrieval embedding (LayerNorm -> linear -> L2, 256-d, binary by sign) trained
  with normalized softmax on identity proxies (one per exact emoji sequence, skin tone included);
- `skin_tone`: a classifier (none, Fitzpatrick 1-2 .. 6, mixed), the paper's example use case;
- `category`: a classifier over the 10 Unicode emoji categories.
Every batch trains every task (tasks mixed inside the batch, big_vision style); each task's loss is
scaled by its `weight`. Evaluators during training: cross-vendor retrieval (Google queries against
Twitter renderings of emoji never seen in training), head accuracy, and k-NN on pooled features.

Start from a pretrained run (`init=` a bigvis workdir, or a big_vision .npz ViT file); without
`init` the same recipe trains from scratch, the baseline the report compares against.

  python tools/prepare.py emoji --out runs/data/emoji
  python -m bigvis.train --config configs/pretrain.py:runlocal --workdir runs/pretrain
  python -m bigvis.train --config configs/finetune.py:runlocal,init=runs/pretrain \\
      --workdir runs/finetune
Full size:
  python -m bigvis.train --config configs/finetune.py:variant=B/16,init=gs://.../pretrain \\
      --workdir gs://.../finetune
Args: variant (as in configs/pretrain.py; it must match the pretrained run's), init (path),
freeze (steps of frozen-trunk warm-up), runlocal.
"""
from bigvis import config as config_lib
from bigvis.configs import pretrain  # configs/ is installed as bigvis.configs (pyproject.toml)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='B/16', init='', freeze=-1, runlocal=False)
  # The trunk is the pretraining config's, so `init` restores it name for name.
  c = pretrain.get_config(f'variant={arg.variant},runlocal={arg.runlocal}')
  c.init.path = arg.init
  c.input.data_dir = 'runs/data/emoji'
  c.input.split = 'train'
  # No flip: some emoji differ only by the direction they face.
  c.input.pp = 'decode|random_resized_crop(224, scale=(0.6, 1.0))|value_range(-1,1)'
  eval_pp = 'decode|resize(224)|value_range(-1,1)'

  del c.tasks['labels']  # The pretraining task; fine-tuning trains these three instead.
  c.tasks.identity = config_lib.task('embedding', 'identity', embed_dim=256, temperature=0.05)
  c.tasks.skin_tone = config_lib.task('classifier', 'skin_tone', weight=0.5)
  c.tasks.category = config_lib.task('classifier', 'category', weight=0.5)

  c.total_steps = 5_000
  c.batch_size = 512
  c.optimizer.lr = 3e-4
  c.optimizer.warmup_steps = 200
  c.freeze_trunk_steps = 200 if arg.init else 0
  every = 1000
  if arg.runlocal:
    c.total_steps = 400
    c.batch_size = 64
    c.log_every_steps = 20
    c.checkpoint_every_steps = 200
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 20
    c.freeze_trunk_steps = 20 if arg.init else 0
    c.input.pp = 'decode|random_resized_crop(64, scale=(0.6, 1.0))|value_range(-1,1)'
    eval_pp = 'decode|resize(64)|value_range(-1,1)'
    every = 200
  if arg.freeze >= 0:
    c.freeze_trunk_steps = arg.freeze

  c.evals.retrieval = config_lib.evaluator(
      'retrieval', every_steps=every, query_split='val_query', index_split='val_index',
      label_field='identity', task='identity', ks=(1, 10), pp=eval_pp)
  c.evals.heads = config_lib.evaluator('classification', every_steps=every, split='val_query',
                                       pp=eval_pp)
  c.evals.knn = config_lib.evaluator('knn', every_steps=every, query_split='val_query',
                                     index_split='val_index', label_field='category', k=10,
                                     pp=eval_pp)
  return c
