"""One trunk fine-tuned on two corpora at once, each task on the corpus that labels it:

- emoji: `identity` (retrieval embedding, normalized softmax) and `skin_tone` (classifier);
- OpenClipArt: `clipart_category` (classifier over its top-level folders, card field `category`).
The trainer mixes the corpora by weight (every batch holds both in those proportions); a task's
loss averages over the examples of the corpus that gives its label, so the other corpus's
examples train it on nothing (bigvis/train_input.py). Both corpora name a field `category`
(emoji's Unicode categories, OpenClipArt's folders), so each source lists the fields it gives.
Evaluators on both: cross-vendor emoji retrieval, skin-tone accuracy, clip-art category accuracy
and k-NN on clip-art folders.

  python tools/prepare.py emoji --out runs/data/emoji
  python tools/prepare.py openclipart --out runs/data/openclipart
  python -m bigvis.train --config configs/multitask.py:runlocal,init=runs/pretrain \\
      --workdir runs/multitask
Args: variant (as in configs/pretrain.py; it must match the pretrained run's), init (a bigvis
workdir or a big_vision .npz; '' = from scratch), emoji, clipart (corpus folders), runlocal.
"""
from bigvis import config as config_lib
from bigvis.configs import pretrain  # configs/ is installed as bigvis.configs (pyproject.toml)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='B/16', init='', emoji='runs/data/emoji',
                             clipart='runs/data/openclipart', runlocal=False)
  c = pretrain.get_config(f'variant={arg.variant},runlocal={arg.runlocal}')  # Its trunk.
  c.init.path = arg.init
  size = 64 if arg.runlocal else 224
  # No flip for emoji: some differ only by the direction they face.
  crop = f'decode|random_resized_crop({size}, scale=(0.6, 1.0))'
  c.input.data_dir, c.input.split = '', ''  # The sources name the corpora.
  c.input.pp = f'{crop}|value_range(-1,1)'
  c.input.sources.emoji = config_lib.source(arg.emoji, weight=2, labels=('identity', 'skin_tone'))
  c.input.sources.clipart = config_lib.source(arg.clipart, weight=1, labels=('category',),
                                              pp=f'{crop}|flip_lr|value_range(-1,1)')
  eval_pp = f'decode|resize({size})|value_range(-1,1)'

  del c.tasks['labels']  # The pretraining task.
  c.tasks.identity = config_lib.task('embedding', 'identity', embed_dim=256, temperature=0.05)
  c.tasks.skin_tone = config_lib.task('classifier', 'skin_tone', weight=0.5)
  c.tasks.clipart_category = config_lib.task('classifier', 'category', weight=0.5)

  c.total_steps, c.batch_size, every = 5_000, 512, 1000
  c.optimizer.lr, c.optimizer.warmup_steps = 3e-4, 200
  c.freeze_trunk_steps = 200 if arg.init else 0
  if arg.runlocal:
    c.total_steps, c.batch_size, every = 400, 60, 200
    c.log_every_steps, c.checkpoint_every_steps = 20, 200
    c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 20
    c.freeze_trunk_steps = 20 if arg.init else 0

  c.evals.retrieval = config_lib.evaluator(
      'retrieval', every_steps=every, query_split='val_query', index_split='val_index',
      label_field='identity', task='identity', ks=(1, 10), pp=eval_pp, data_dir=arg.emoji)
  c.evals.emoji = config_lib.evaluator('classification', every_steps=every, split='val_query',
                                       task='skin_tone', pp=eval_pp, data_dir=arg.emoji)
  c.evals.clipart = config_lib.evaluator('classification', every_steps=every, split='validation',
                                         task='clipart_category', pp=eval_pp, data_dir=arg.clipart)
  c.evals.clipart_knn = config_lib.evaluator(
      'knn', every_steps=every, query_split='validation', index_split='train',
      label_field='folder', k=10, pp=eval_pp, data_dir=arg.clipart)
  return c
