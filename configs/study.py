"""The paper's findings in miniature: the grid `make study` runs (bigvis/study.py, tools/study.py).

  python tools/study.py --root runs/study --out study            # all questions, 3 seeds
  python tools/study.py --questions labels,loss --dry_run         # print the commands
  python tools/study.py --scale 10 --root gs://.../study          # every schedule 10x longer

Every run is the real command line: prepare and mine the emoji corpus, prepare OpenClipArt,
pretrain (configs/pretrain.py:runlocal, ViT-Ti/16 or ResNet-50 at 64 px), fine-tune on emoji
(configs/finetune.py:runlocal), embed the test splits, evaluate retrieval (exact and ScaNN, float
and binary), and probe the frozen pretrained trunk on OpenClipArt (k-NN and a linear probe whose
regularization is chosen on a validation slice of the training split). Scores are on held-out
splits only: emoji test_query -> test_index (emoji never seen in training), OpenClipArt test.
Nothing here was tuned on them: the recipes are the runlocal configs, shortened.

Questions:
  labels    pretraining on mined clusters vs the raw mined vocabulary vs no pretraining
  tail      the same pretrained trunks on the long tail of the mined vocabulary (k-NN label
            transfer per frequency band) and probed on Fashion-MNIST
  backbone  ViT-Ti/16 vs ResNet-50 pretrained and fine-tuned at matched training FLOPs
  scale     10%, 30%, 100% of the pretraining corpus
  binary    binary vs float embeddings, exact and ScaNN, for every fine-tuned model above
  loss      softmax over 1/k-normalized multi-hot targets vs per-class sigmoid BCE
"""
import functools

from bigvis.study import Cell, Job, Question, Score

# At scale 1 a pretraining job (train, embed, probe) took a median 2.8 minutes here, a fine-tuning
# job (train, embed, evaluate) 1.4 (study/study.json: job_seconds; more while other work ran).
PRETRAIN_STEPS, FINETUNE_STEPS = 300, 200
QUESTIONS = ('labels', 'tail', 'backbone', 'scale', 'binary', 'loss')  # As in the report.
# Jobs run question by question in this order; 'binary' scores the others' models, so it is last.
RUN_ORDER = ('labels', 'tail', 'loss', 'scale', 'backbone', 'binary')
EMOJI, MINED, CLIPART = '{root}/data/emoji', '{root}/data/emoji_mined', '{root}/data/openclipart'
FMNIST = '{root}/data/fashion_mnist'
JOINT = '{root}/data/emoji+openclipart_mined'  # Both corpora mined into one vocabulary.
PROBE_PP = 'decode|resize(64)|value_range(-1,1)'


def data_jobs():
  return [
      Job('data/emoji', (('{py}', 'tools/prepare.py', 'emoji', '--out', EMOJI),)),
      Job('data/emoji_mined', (('{py}', 'tools/mine_labels.py', '--corpus', EMOJI, '--out', MINED,
                                '--no_plots'),), deps=('data/emoji',)),
      Job('data/openclipart', (('{py}', 'tools/prepare.py', 'openclipart', '--out', CLIPART),)),
      Job('data/fashion_mnist', (('{py}', 'tools/prepare.py', 'fashion_mnist', '--out', FMNIST),)),
      Job('data/emoji+openclipart_mined', (('{py}', 'tools/mine_labels.py', '--corpus', EMOJI,
                                            CLIPART, '--out', JOINT, '--exclude_names_of',
                                            'folder', '--no_plots'),),
          deps=('data/emoji', 'data/openclipart')),
  ]


@functools.cache
def train_flops(variant):
  """Training FLOPs per example of the pretraining model at 64 px (3x the forward matmuls, as
  bigvis.train counts them with bigvis.metrics)."""
  import jax
  import jax.numpy as jnp

  from bigvis import heads, metrics
  from bigvis.configs import pretrain
  c = pretrain.get_config(f'variant={variant},runlocal=True')
  c.tasks.labels.num_classes = 256  # About the mined cluster count; the head is a rounding error.
  model = heads.build_model(c)
  image = jnp.zeros((1, 64, 64, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))['params']
  return 3 * metrics.matmul_flops(lambda p, x: model.apply({'params': p}, x, train=False),
                                  params, image)


def pretrain_job(variant, labels, loss, fraction, seed, steps, tail=False, mixed=False):
  """mixed: on emoji and OpenClipArt train, mined jointly and pooled (pretrain.py:data=...)."""
  name = (f'pretrain/{variant.replace("/", "")}-{labels}-{loss}-f{fraction:g}'
          f'{"-mixed" if mixed else ""}-s{seed}-n{steps}')
  data = (('data=emoji+openclipart',) if mixed else ())
  inputs = ((f'--config.input.sources.emoji.data_dir={JOINT}/emoji',
             f'--config.input.sources.openclipart.data_dir={JOINT}/openclipart') if mixed else
            (f'--config.input.data_dir={MINED}', f'--config.input.fraction={fraction}'))
  train = ('{py}', '-m', 'bigvis.train', '--config',
           ','.join((f'configs/pretrain.py:runlocal,variant={variant},labels={labels}',) + data),
           *inputs, f'--config.seed={seed}',
           f'--config.total_steps={steps}', f'--config.checkpoint_every_steps={steps}',
           f'--config.optimizer.warmup_steps={max(1, steps // 10)}',
           f'--config.tasks.labels.loss={loss}', '--workdir', '{job}')
  deps = ('data/emoji+openclipart_mined' if mixed else 'data/emoji_mined', 'data/openclipart')
  job = _with_probe(Job(name, (train,), deps=deps))
  return _with_tail(job) if tail else job


def random_init_job(variant, seed):
  """The trunk at its seed's init (one step at learning rate 0), for the probes of 'none'."""
  name = f'pretrain/{variant.replace("/", "")}-random-s{seed}'
  train = ('{py}', '-m', 'bigvis.train', '--config',
           f'configs/pretrain.py:runlocal,variant={variant}', f'--config.input.data_dir={MINED}',
           f'--config.seed={seed}', '--config.total_steps=1', '--config.optimizer.lr=0',
           '--config.checkpoint_every_steps=1', '--workdir', '{job}')
  return _with_tail(_with_probe(Job(name, (train,), deps=('data/emoji_mined', 'data/openclipart'))))


def _with_probe(job):
  """Adds: embed OpenClipArt train and test with the frozen trunk, k-NN + linear probe."""
  embeds = tuple(('{py}', 'tools/embed.py', '--workdir', '{job}', '--corpus', CLIPART,
                  '--split', split, '--features', 'pooled', '--pp', PROBE_PP,
                  '--out', f'{{job}}/clipart_{split}.npz') for split in ('train', 'test'))
  probe = ('{py}', 'tools/probe.py', '--train', '{job}/clipart_train.npz',
           '--test', '{job}/clipart_test.npz', '--label', 'category', '--out', '{job}/probe')
  return Job(job.name, job.commands + embeds + (probe,), job.deps)


def _with_tail(job):
  """Adds: the frozen trunk's k-NN label transfer per frequency band of the mined vocabulary
  (emoji train -> test_index), and k-NN + linear probe on Fashion-MNIST (fitted on its 5k
  validation split, a slice of the shipped training set, scored on its test split)."""
  emoji = tuple(('{py}', 'tools/embed.py', '--workdir', '{job}', '--corpus', MINED,
                 '--split', split, '--features', 'pooled', '--pp', PROBE_PP,
                 '--multi_hot', 'mined_labels', '--out', f'{{job}}/emoji_{split}.npz')
                for split in ('train', 'test_index'))
  tail = ('{py}', 'tools/probe.py', '--train', '{job}/emoji_train.npz',
          '--test', '{job}/emoji_test_index.npz', '--label', 'mined_labels', '--ks', '10',
          '--out', '{job}/tail')
  fmnist = tuple(('{py}', 'tools/embed.py', '--workdir', '{job}', '--corpus', FMNIST,
                  '--split', split, '--features', 'pooled', '--pp', PROBE_PP,
                  '--out', f'{{job}}/fmnist_{split}.npz') for split in ('validation', 'test'))
  probe = ('{py}', 'tools/probe.py', '--train', '{job}/fmnist_validation.npz',
           '--test', '{job}/fmnist_test.npz', '--label', 'class', '--out', '{job}/fmnist_probe')
  return Job(job.name, job.commands + emoji + (tail,) + fmnist + (probe,),
             job.deps + ('data/fashion_mnist',))


def finetune_job(variant, init_job, seed, steps):
  tag = (init_job.name.removeprefix('pretrain/') if init_job
         else f'{variant.replace("/", "")}-scratch-s{seed}')
  name = f'finetune/{tag}-n{steps}'
  init = f',init={{root}}/{init_job.name}' if init_job else ''
  train = ('{py}', '-m', 'bigvis.train', '--config',
           f'configs/finetune.py:runlocal,variant={variant}{init}',
           f'--config.input.data_dir={EMOJI}', f'--config.seed={seed}',
           f'--config.total_steps={steps}', f'--config.checkpoint_every_steps={steps}',
           f'--config.optimizer.warmup_steps={max(1, steps // 10)}', '--config.evals={}',
           '--workdir', '{job}')
  embeds = tuple(('{py}', 'tools/embed.py', '--workdir', '{job}', '--split', split,
                  '--out', f'{{job}}/{split}.npz') for split in ('test_query', 'test_index'))
  evaluate = ('{py}', 'tools/eval_retrieval.py', '--queries', '{job}/test_query.npz',
              '--database', '{job}/test_index.npz', '--label', 'identity', '--ks', '1,10',
              '--param', 'algorithm=tree_ah', '--examples', '0', '--out', '{job}/retrieval')
  deps = ('data/emoji',) + ((init_job.name,) if init_job else ())
  return Job(name, (train,) + embeds + (evaluate,), deps)


def _cell(condition, seed, pre, fine):
  """A cell scored downstream (emoji retrieval + heads of `fine`) and, with `pre`, on the
  OpenClipArt probes of the frozen pretrained (or random) trunk."""
  scores = [Score('retrieval', 'emoji', f'{fine.name}/retrieval'),
            Score('heads', 'emoji', f'{fine.name}/test_query.npz,{fine.name}/test_index.npz')]
  if pre:
    scores.append(Score('probe', 'clipart', f'{pre.name}/probe'))
  return Cell(condition, seed, tuple(j.name for j in (pre, fine) if j), tuple(scores))


def get_study(scale=1.0, seeds=3, questions=QUESTIONS):
  """(questions, jobs) of the grid; schedules are `scale` times the miniature's."""
  unknown = sorted(set(questions) - set(QUESTIONS))
  if unknown:
    raise ValueError(f'unknown questions {unknown}; choose from {list(QUESTIONS)}')
  p_steps, f_steps = max(1, round(PRETRAIN_STEPS * scale)), max(1, round(FINETUNE_STEPS * scale))
  jobs = data_jobs()
  downstream = ('emoji float R@1', 'emoji float R@10', 'emoji skin_tone acc', 'clipart 10-NN',
                'clipart linear')

  def pretrained(condition, seed, variant='Ti/16', labels='clusters', loss='softmax_xent',
                 fraction=1.0, p=p_steps, f=f_steps, tail=False, mixed=False):
    pre = pretrain_job(variant, labels, loss, fraction, seed, p, tail, mixed)
    fine = finetune_job(variant, pre, seed, f)
    jobs.extend([pre, fine])
    return _cell(condition, seed, pre, fine)

  def scratch(condition, seed, variant='Ti/16', f=f_steps):
    pre, fine = random_init_job(variant, seed), finetune_job(variant, None, seed, f)
    jobs.extend([pre, fine])
    return _cell(condition, seed, pre, fine)

  seed_list = range(seeds)
  out = []
  labels_cells = ([pretrained('clusters', s, tail=True) for s in seed_list]
                  + [pretrained('vocab', s, labels='vocab', tail=True) for s in seed_list]
                  + [scratch('none', s) for s in seed_list])
  if 'labels' in questions:
    out.append(Question(
        'labels', '1. Labels: mined clusters vs raw mined vocabulary vs no pretraining',
        tuple(labels_cells), downstream, reference='clusters',
        notes=(f'ViT-Ti/16 at 64 px; pretraining {p_steps} steps of batch 64 on the emoji train '
               f'split\'s mined labels, then {f_steps} steps of multi-task fine-tuning on emoji '
               '(identity embedding, skin tone, category). `none` fine-tunes from a random init; '
               'its OpenClipArt probe is of the random trunk.')))
  if 'tail' in questions:
    cells = []
    for c in labels_cells:
      pre = c.jobs[0]
      cells.append(Cell(c.condition, c.seed, (pre,),
                        (Score('probe', 'emoji', f'{pre}/tail'),
                         Score('probe', 'fmnist', f'{pre}/fmnist_probe'))))
    out.append(Question(
        'tail', '1b. Labels on the long tail, and transfer to Fashion-MNIST', tuple(cells),
        ('emoji tail 10-NN P@1', 'emoji torso 10-NN P@1', 'emoji head 10-NN P@1', 'fmnist 10-NN',
         'fmnist linear'), reference='clusters',
        notes=('The pretrained trunks of question 1 (`none`: the random init), frozen. Tail: the '
               'mined vocabulary\'s classes ranked by emoji-train frequency into head (the first '
               'half of the label assignments), torso and tail (the last fifth); for each emoji '
               'test_index image that carries a class of a band, its 10 nearest emoji-train '
               'images (pooled features, cosine) vote, and precision@1 is whether the band\'s '
               'most voted class is one of its labels. Fashion-MNIST: k-NN and linear probe '
               'fitted on its 5k validation split, scored on the 10k test split.')))
  if 'backbone' in questions:
    ratio = train_flops('Ti/16') / train_flops('resnet50')
    rp, rf = max(1, round(p_steps * ratio)), max(1, round(f_steps * ratio))
    cells = ([c for c in labels_cells if c.condition == 'clusters']
             + [pretrained('resnet50', s, variant='resnet50', p=rp, f=rf) for s in seed_list])
    out.append(Question(
        'backbone', '2. Backbone: ViT-Ti/16 vs ResNet-50 at matched training FLOPs',
        tuple(c if c.condition != 'clusters' else Cell('ViT-Ti/16', c.seed, c.jobs, c.scores)
              for c in cells), downstream, reference='ViT-Ti/16',
        notes=(f'Training FLOPs per example at 64 px (bigvis.metrics, 3x forward matmuls): '
               f'ViT-Ti/16 {train_flops("Ti/16") / 1e9:.3f} G, ResNet-50 '
               f'{train_flops("resnet50") / 1e9:.3f} G; ResNet-50 gets {rp} pretraining and {rf} '
               f'fine-tuning steps for the ViT\'s {p_steps} and {f_steps}, so both spend the same '
               'FLOPs. Same optimizer and learning rates.')))
  if 'scale' in questions:
    cells = [pretrained(f'{int(fr * 100)}%', s, fraction=fr) for fr in (0.1, 0.3)
             for s in seed_list]
    cells += [Cell('100%', c.seed, c.jobs, c.scores) for c in labels_cells
              if c.condition == 'clusters']
    cells += [pretrained('100% + OpenClipArt', s, mixed=True) for s in seed_list]
    out.append(Question(
        'scale', '3. Data scale: 10%, 30%, 100% of the pretraining corpus, and the corpora mixed',
        tuple(cells), downstream, reference='100%',
        notes=('The same pretraining schedule on a fixed random subset of the emoji train split '
               '(`input.fraction`, the same records for every seed); the labels were mined from '
               'the whole split. `100% + OpenClipArt`: the emoji and OpenClipArt train splits '
               '(5,958 + 3,339 records) mined jointly into one vocabulary (OpenClipArt\'s folder '
               'names excluded) and pooled, every record sampled alike (`input.mix=records`); its '
               'OpenClipArt probe scores a trunk that saw the probe\'s training images (not its '
               'test split or folder labels) in pretraining.')))
  if 'loss' in questions:
    cells = [Cell('softmax', c.seed, c.jobs, c.scores) for c in labels_cells
             if c.condition == 'clusters']
    cells += [pretrained('sigmoid', s, loss='sigmoid_bce') for s in seed_list]
    out.append(Question(
        'loss', '5. Pretraining loss: softmax over 1/k multi-hot targets vs sigmoid BCE',
        tuple(cells), downstream, reference='softmax',
        notes='Mined clusters, the same schedule and learning rate for both losses.'))
  if 'binary' in questions:
    # Each fine-tuned model once, named after the first question that trains it.
    models = {}
    for q in out or [Question('labels', '', tuple(labels_cells), ())]:
      for c in q.cells:
        if any(s.kind == 'retrieval' for s in c.scores):  # A fine-tuned model.
          models.setdefault(c.jobs, (f'{q.key}: {c.condition}', c))
    cells = tuple(Cell(name, c.seed, c.jobs, tuple(s for s in c.scores if s.kind == 'retrieval'))
                  for name, c in models.values())
    metrics = ('emoji float R@1', 'emoji binary R@1', 'emoji float ScaNN R@1',
               'emoji binary ScaNN R@1')
    out.append(Question(
        'binary', '4. Binary vs float embeddings, exact and ScaNN, per fine-tuned model', cells,
        metrics, paired=(('emoji binary R@1', 'emoji float R@1'),
                         ('emoji float ScaNN R@1', 'emoji float R@1'),
                         ('emoji binary ScaNN R@1', 'emoji binary R@1')),
        notes=('256-d identity embeddings; binary = sign bits, Hamming distance. ScaNN: tree + '
               'asymmetric hashing (`algorithm=tree_ah`), float and binary (as +-1) vectors.')))
  order = {k: i for i, k in enumerate(QUESTIONS)}
  return sorted(out, key=lambda q: order[q.key]), jobs
