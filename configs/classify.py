"""Fine-tunes a trunk on one label field of any prepared corpus: a classifier on `label` and a
retrieval embedding trained on the same classes, with evaluators on the validation split.
The config for your own data (README, "Your own data, end to end").

  python -m bigvis.train --config configs/classify.py:runlocal,data=runs/data/mine,label=category,init=runs/mine_pretrain \\
      --workdir runs/mine_classify
Args: data (corpus folder with `train` and `validation` splits), label (a class field its card
names classes for), init (a bigvis workdir or a big_vision .npz; '' = from scratch), variant (as
in configs/pretrain.py; it must match the pretrained run's), runlocal.
"""
from bigvis import config as config_lib
from bigvis.configs import pretrain  # configs/ is installed as bigvis.configs (pyproject.toml)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant='B/16', data='', label='', init='', runlocal=False)
  if not arg.data or not arg.label:
    raise ValueError('configs/classify.py needs data=CORPUS_DIR,label=FIELD')
  c = pretrain.get_config(f'variant={arg.variant},runlocal={arg.runlocal}')  # Its trunk.
  c.init.path = arg.init
  size = 64 if arg.runlocal else 224
  c.input.data_dir, c.input.split = arg.data, 'train'
  c.input.pp = f'decode|random_resized_crop({size}, scale=(0.6, 1.0))|flip_lr|value_range(-1,1)'
  eval_pp = f'decode|resize({size})|value_range(-1,1)'
  del c.tasks['labels']
  c.tasks.classes = config_lib.task('classifier', arg.label)
  c.tasks.embedding = config_lib.task('embedding', arg.label, embed_dim=256, weight=0.5)

  c.total_steps, c.batch_size, every = 5_000, 512, 1000
  c.optimizer.lr, c.optimizer.warmup_steps = 3e-4, 200
  c.freeze_trunk_steps = 200 if arg.init else 0
  if arg.runlocal:
    c.total_steps, c.batch_size, every = 300, 64, 150
    c.log_every_steps, c.checkpoint_every_steps = 20, 150
    c.optimizer.lr, c.optimizer.warmup_steps = 1e-3, 20
    c.freeze_trunk_steps = 20 if arg.init else 0
  c.evals.heads = config_lib.evaluator('classification', every_steps=every, split='validation',
                                       pp=eval_pp)
  c.evals.retrieval = config_lib.evaluator(
      'retrieval', every_steps=every, query_split='validation', index_split='validation',
      label_field=arg.label, task='embedding', ks=(1, 10), pp=eval_pp)
  c.evals.knn = config_lib.evaluator('knn', every_steps=every, query_split='validation',
                                     index_split='train', label_field=arg.label, k=10, pp=eval_pp)
  return c
