"""Config schema, argument parsing and validation.

Every config file builds on `defaults()`, which lists each field the trainer reads. `validate` rejects
any key not in that schema (with a did-you-mean hint), so a typo fails before anything compiles;
big_vision silently ignores such keys.
"""
import ast
import difflib

import ml_collections

TASK_HEADS = {  # head -> losses it supports
    'multilabel': ('softmax_xent', 'sigmoid_bce'),
    'embedding': ('normalized_softmax',),
    'classifier': ('xent',),
}


def task(head, label_field, num_classes=0, *, loss=None, weight=1.0, embed_dim=256,
         temperature=0.05):
  """One task of a multi-task model: a head on the shared trunk, its loss, weight and label field.

  num_classes=0 takes the class count of `label_field` from the corpus's dataset card.
  """
  return ml_collections.ConfigDict(dict(
      head=head, loss=loss or TASK_HEADS[head][0], weight=weight, label_field=label_field,
      num_classes=num_classes, embed_dim=embed_dim, temperature=temperature))


def source(data_dir, *, split='train', weight=1.0, labels=(), pp=''):
  """One corpus of a multi-corpus input: `config.input.sources.NAME = source(...)`.

  The trainer mixes the sources in proportion to their weights (every batch holds them in those
  proportions). labels: the label fields this corpus gives the tasks; () = every task field its
  dataset card lists. A task trains on the examples of the sources that give its field (its loss
  averages over those alone). pp '' = config.input.pp; every source's pp must give one image shape.
  """
  return ml_collections.ConfigDict(dict(data_dir=data_dir, split=split, weight=float(weight),
                                        labels=tuple(labels), pp=pp))


MIX_MODES = ('weight', 'records')  # input.mix
EVAL_KINDS = ('classification', 'retrieval', 'knn', 'linear_probe')
NONFINITE_POLICIES = ('skip', 'stop')
HOST_TUNING = ('auto', 'on', 'off')  # bigvis.cpu_tuning.MODES


def evaluator(kind, *, every_steps, split='', query_split='', index_split='', label_field='',
              task='', ks=(1, 10), k=10, pp='', batch_size=0, data_dir=''):
  """An evaluator run during training every `every_steps` steps and at the last step.

  kind 'classification': accuracy of every classifier task (and precision@1 of every multilabel
    task) on `split`; only that of `task`, if set (a corpus that labels one task's field only).
  kind 'retrieval': the embedding task `task` embeds `query_split` and `index_split`; exact search
    by cosine and by Hamming distance on the sign codes; recall@k for k in `ks` against
    `label_field` (same label = relevant). With one split for both, a query never finds itself.
  kind 'knn': k-nearest-neighbour classification (k = `k`, cosine, majority vote) of
    `label_field` on the trunk's pooled features, `index_split` as memory, `query_split` as test.
  kind 'linear_probe': logistic regression on the frozen pooled features (bigvis/probe.py: L2
    chosen on a slice of `index_split`), trained on `index_split`, accuracy on `query_split`.
  pp: the eval preprocessing (no random ops), e.g. 'decode|resize(64)|value_range(-1,1)'.
  batch_size 0 = the training batch; data_dir '' = config.input.data_dir.
  """
  return ml_collections.ConfigDict(dict(
      kind=kind, every_steps=every_steps, split=split, query_split=query_split,
      index_split=index_split, label_field=label_field, task=task, ks=tuple(ks), k=k, pp=pp,
      batch_size=batch_size, data_dir=data_dir))


def defaults():
  """The full schema with default values. Config files override fields; they may not add any."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 100
  c.batch_size = 32  # Global batch, split over processes and devices.
  c.grad_accum_steps = 1  # Micro-batches per step; batch_size must divide by it.
  c.log_every_steps = 10
  c.checkpoint_every_steps = 50
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  # Peak FLOP/s of one device, for MFU. Default: the float32 jit-matmul ceiling measured on the
  # 2-core dev CPU (DESIGN.md section 4). An H100 SXM in dense bf16 is 989e12.
  c.peak_flops_per_device = 140e9
  # A step whose loss or gradients are not finite (NaN/inf) never updates params or optimizer
  # state. 'skip': count it (metric `nonfinite_steps`) and go on with the next batch. 'stop': end
  # the run with an error naming the step, before any checkpoint past the last good one.
  c.nonfinite = 'skip'
  # CPU-only host settings (bigvis/cpu_tuning.py), applied at the trainer's start-up: 'auto' = only
  # when JAX will compute on the CPU, 'on' = always, 'off' = never.
  c.host_tuning = 'auto'

  c.input = ml_collections.ConfigDict(dict(
      data_dir='runs/data/shapes',  # Folder of ArrayRecord shards.
      split='train',  # Shards are `{data_dir}/{split}-*.array_record`.
      pp='decode|random_resized_crop(224)|flip_lr|value_range(-1,1)',
      worker_count=0,  # Grain worker processes (0 = in the main process).
      shuffle=True,
      # Train on this fraction of the split's records: a fixed random subset (the same for every
      # seed and process count), for data-scale studies. One corpus only (not with sources).
      fraction=1.0,
      # Bad records (undecodable, off-schema, label out of range) are replaced by the next good
      # record and counted (metric `data/bad_examples`); past this fraction of the examples seen
      # (checked from min(1000, one epoch) examples on) the run stops, naming them.
      # 0 = the first bad record is an error.
      max_bad_fraction=0.01,
      # Several corpora at once: name -> source(...). Then data_dir and split must be '' (the
      # sources name them) and every evaluator names its data_dir.
      sources=ml_collections.ConfigDict(),
      # How the sources' weights mix them: 'weight' as given; 'records' times the records of
      # each source's split, so weights of 1 sample every record alike, as one pooled corpus.
      mix='weight',
  ))
  c.model = ml_collections.ConfigDict(dict(
      name='vit', variant='B/16', pool_type='tok', posemb='learn', dtype='float32', remat=False,
      dropout=0.0,
      # auto | flax | cpu (bigvis/models/vit.py): auto = the CPU-tuned layers on the CPU backend,
      # stock flax layers + jax.nn.dot_product_attention on GPU/TPU. Same params either way.
      impl='auto'))
  c.tasks = ml_collections.ConfigDict()  # name -> task(...)
  # Start from pretrained weights: a bigvis workdir (latest checkpoint) or checkpoints/<step> dir,
  # or a big_vision-layout .npz. Params whose names match `skip` keep their fresh init (by default
  # the task heads). Ignored when the workdir already holds a checkpoint (that run is resumed).
  c.init = ml_collections.ConfigDict(dict(path='', skip=r'^head_'))
  c.freeze_trunk_steps = 0  # Warm-up: the first N steps update only the heads.
  c.evals = ml_collections.ConfigDict()  # name -> evaluator(...)
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adamw',  # adamw | lamb | sgd
      lr=1e-3, b1=0.9, b2=0.999, momentum=0.9, weight_decay=1e-4,
      decay_mask='kernels',  # kernels | all | none: which params weight decay touches.
      schedule='cosine',  # cosine | linear | constant, after linear warmup.
      warmup_steps=10, end_lr_factor=0.0, clip_norm=1.0))  # clip_norm 0 = no clipping.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # -1: all remaining devices.
  c.sharding = ml_collections.ConfigDict(dict(
      fsdp_min_size=2**16,  # Params with fewer elements stay replicated.
      rules=DEFAULT_RULES))
  return c


# Ordered (param-path regex, mesh axes per dim) rules; the first match wins. Names follow the
# big_vision ViT tree. Params no rule names are sharded over `fsdp` on their largest divisible dim.
DEFAULT_RULES = (
    (r'MultiHeadDotProductAttention_\d+/(query|key|value)/kernel$', ('fsdp', 'model', None)),
    (r'MultiHeadDotProductAttention_\d+/(query|key|value)/bias$', ('model', None)),
    (r'MultiHeadDotProductAttention_\d+/out/kernel$', ('model', None, 'fsdp')),
    (r'MlpBlock_\d+/Dense_0/kernel$', ('fsdp', 'model')),
    (r'MlpBlock_\d+/Dense_0/bias$', ('model',)),
    (r'MlpBlock_\d+/Dense_1/kernel$', ('model', 'fsdp')),
)


def parse_arg(arg, **spec):
  """Parses 'variant=B/16,runlocal' into a ConfigDict typed after `spec`'s defaults.

  A bare name sets a boolean to True. Unknown names are rejected.
  """
  out = ml_collections.ConfigDict(spec)
  for item in filter(None, (arg or '').split(',')):
    key, has_value, value = item.partition('=')
    if key not in spec:
      raise ValueError(f'Unknown config arg {key!r}; known: {sorted(spec)}')
    default = spec[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f'Config arg {key!r} needs a value ({key}=...)')
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ('1', 'true', 'yes', '0', 'false', 'no'):
        raise ValueError(f'Config arg {key}={value!r} is not a boolean (true/false)')
      out[key] = value.lower() in ('1', 'true', 'yes')
    elif isinstance(default, (int, float)):
      parsed = ast.literal_eval(value)
      if not isinstance(parsed, (int, float)) or isinstance(default, int) and parsed != int(parsed):
        raise ValueError(f'Config arg {key}={value!r} is not a {type(default).__name__}')
      out[key] = type(default)(parsed)
    else:
      out[key] = value
  return out


class ConfigError(ValueError):
  pass


def _unknown(key, known, where):
  hint = difflib.get_close_matches(key, known, n=1)
  hint = f' (did you mean {hint[0]!r}?)' if hint else ''
  return ConfigError(f'Unknown config key {where}{key!r}{hint}; known keys: {sorted(known)}')


def _check_keys(config, schema, where=''):
  for key in config.keys():
    if key not in schema:
      raise _unknown(key, list(schema.keys()), where)
    value, default = config[key], schema[key]
    if isinstance(default, ml_collections.ConfigDict) and key not in ('tasks', 'evals',
                                                                        'sources'):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'Config key {where}{key} must be a dict, got {value!r}')
      _check_keys(value, default, f'{where}{key}.')


def validate(config):
  """Raises ConfigError naming the first unknown key or inconsistent value."""
  _check_keys(config, defaults())
  if not config.tasks:
    raise ConfigError('Config has no tasks: set config.tasks.NAME = bigvis.config.task(...)')
  task_schema = task('classifier', 'x', 1)
  for name, t in config.tasks.items():
    _check_keys(t, task_schema, f'tasks.{name}.')
    if t.head not in TASK_HEADS:
      raise ConfigError(f'tasks.{name}.head={t.head!r}; known heads: {sorted(TASK_HEADS)}')
    if t.num_classes < 0:
      raise ConfigError(f'tasks.{name}.num_classes={t.num_classes}; 0 means from the dataset card')
    if t.loss not in TASK_HEADS[t.head]:
      raise ConfigError(f'tasks.{name}.loss={t.loss!r} does not fit head {t.head!r}; '
                        f'choose from {TASK_HEADS[t.head]}')
  eval_schema = evaluator('knn', every_steps=1)
  for name, e in config.evals.items():
    _check_keys(e, eval_schema, f'evals.{name}.')
    _check_evaluator(name, e, config.tasks)
  _check_sources(config)
  if config.freeze_trunk_steps < 0:
    raise ConfigError(f'freeze_trunk_steps must be >= 0, got {config.freeze_trunk_steps}')
  for key in ('total_steps', 'log_every_steps', 'checkpoint_every_steps', 'batch_size',
              'grad_accum_steps', 'keep_checkpoints'):
    if config[key] <= 0:
      raise ConfigError(f'{key} must be positive, got {config[key]}')
  if config.batch_size % config.grad_accum_steps:
    raise ConfigError(f'batch_size={config.batch_size} is not divisible by '
                      f'grad_accum_steps={config.grad_accum_steps}')
  if config.host_tuning not in HOST_TUNING:
    raise ConfigError(f'host_tuning={config.host_tuning!r}; choose from {HOST_TUNING}')
  if config.nonfinite not in NONFINITE_POLICIES:
    raise ConfigError(f'nonfinite={config.nonfinite!r}; choose from {NONFINITE_POLICIES}')
  if not 0 < config.input.fraction <= 1:
    raise ConfigError(f'input.fraction must be in (0, 1], got {config.input.fraction}')
  if not 0 <= config.input.max_bad_fraction <= 1:
    raise ConfigError(f'input.max_bad_fraction must be in [0, 1], got '
                      f'{config.input.max_bad_fraction}')
  choices = dict(name=('adamw', 'lamb', 'sgd'), schedule=('cosine', 'linear', 'constant'),
                 decay_mask=('kernels', 'all', 'none'))
  for key, allowed in choices.items():
    if config.optimizer[key] not in allowed:
      raise ConfigError(f'optimizer.{key}={config.optimizer[key]!r}; choose from {allowed}')
  return config


def _check_sources(config):
  sources = config.input.sources
  if not sources:
    if not config.input.data_dir:
      raise ConfigError('input.data_dir is empty and input.sources names no corpora')
    return
  if config.input.mix not in MIX_MODES:
    raise ConfigError(f'input.mix={config.input.mix!r}: choose from {list(MIX_MODES)}')
  if config.input.fraction != 1:
    raise ConfigError(f'input.fraction={config.input.fraction} applies to one corpus; with '
                      f'input.sources, subset the corpora when preparing them')
  if config.input.data_dir or config.input.split:
    raise ConfigError(f'input.sources names the corpora ({sorted(sources)}): set input.data_dir '
                      f"and input.split to '' (now {config.input.data_dir!r}, "
                      f'{config.input.split!r}) so that no one reads the wrong one')
  schema = source('x')
  for name, src in sources.items():
    _check_keys(src, schema, f'input.sources.{name}.')
    if not src.data_dir:
      raise ConfigError(f'input.sources.{name}.data_dir is empty')
    if not src.weight > 0:
      raise ConfigError(f'input.sources.{name}.weight must be > 0, got {src.weight}')
  for name, e in config.evals.items():
    if not e.data_dir:
      raise ConfigError(f'evals.{name}.data_dir is empty: with several input.sources, each '
                        f'evaluator names the corpus it reads')


def _check_evaluator(name, e, tasks):
  where = f'evals.{name}'
  if e.kind not in EVAL_KINDS:
    raise ConfigError(f'{where}.kind={e.kind!r}; choose from {EVAL_KINDS}')
  if e.every_steps <= 0:
    raise ConfigError(f'{where}.every_steps must be positive, got {e.every_steps}')
  needed = {'classification': ('split', 'pp'),
            'retrieval': ('query_split', 'index_split', 'label_field', 'task', 'pp'),
            'knn': ('query_split', 'index_split', 'label_field', 'pp'),
            'linear_probe': ('query_split', 'index_split', 'label_field', 'pp')}[e.kind]
  for key in needed:
    if not e[key]:
      raise ConfigError(f'{where}: kind {e.kind!r} needs {key}')
  if e.kind == 'retrieval':
    if e.task not in tasks or tasks[e.task].head != 'embedding':
      embedding = sorted(n for n, t in tasks.items() if t.head == 'embedding')
      raise ConfigError(f'{where}.task={e.task!r} is not an embedding task; those are {embedding}')
    if not e.ks or min(e.ks) < 1:
      raise ConfigError(f'{where}.ks={e.ks!r} must be positive integers')
  if e.kind == 'classification' and e.task and (
      e.task not in tasks or tasks[e.task].head not in ('classifier', 'multilabel')):
    heads = sorted(n for n, t in tasks.items() if t.head in ('classifier', 'multilabel'))
    raise ConfigError(f'{where}.task={e.task!r} is not a classifier or multilabel task; those '
                      f'are {heads}')
  if e.kind == 'linear_probe' and e.query_split == e.index_split:
    raise ConfigError(f'{where}: a linear probe is scored on other rows than it is fitted on; '
                      f'query_split and index_split are both {e.query_split!r}')
  if e.kind == 'knn' and e.k < 1:
    raise ConfigError(f'{where}.k must be positive, got {e.k}')


def label_specs(config):
  """Record label field -> (target kind, num_classes) for the input pipeline."""
  kinds = {'multilabel': 'multi_hot', 'embedding': 'class', 'classifier': 'class'}
  specs = {}
  for name, t in config.tasks.items():
    spec = (kinds[t.head], t.num_classes)
    if specs.setdefault(t.label_field, spec) != spec:
      raise ConfigError(f'tasks.{name}: label field {t.label_field!r} is used with conflicting '
                        f'kinds {specs[t.label_field]} and {spec}')
  return specs
