"""The study tool (bigvis/study.py, configs/study.py) on a tiny grid of two conditions x two seeds:
each cell's job runs the real tools/eval_retrieval.py on embeddings of a known quality."""
import json
import os
import types

import numpy as np
import pytest

from bigvis import retrieval, study
from bigvis.configs import study as grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = {'sharp': 0.2, 'blurred': 1.2}  # Query noise per condition: 'sharp' retrieves better.
COUNT = ('{py}', '-c', 'import sys; open(sys.argv[1], "a").write("x")', '{job}/runs')
FAIL_IF = '{py}', '-c', 'import os, sys; sys.exit(3 if os.path.exists(sys.argv[1]) else 0)'


def _write_embeddings(folder, noise, seed, split='test_query'):
  rng = np.random.default_rng(seed)
  n, dim = 40, 16
  database = rng.normal(size=(n, dim)).astype(np.float32)
  queries = database + noise * rng.normal(size=(n, dim)).astype(np.float32)
  paths = {}
  for name, x, s in (('q', queries, split), ('db', database, 'test_index')):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    paths[name] = os.path.join(folder, f'{name}.npz')
    retrieval.save_embeddings(paths[name], {
        'id': np.array([f'{name}{i}' for i in range(n)]), 'index': np.arange(n, dtype=np.int64),
        'embedding': x, 'codes': retrieval.binary_codes(x),
        'label/identity': np.arange(n, dtype=np.int32)},
        {'corpus': '/data/tiny', 'split': s, 'checkpoint': '/ck', 'step': 1, 'task': 'identity'})
  # What R@1 must be: the database row nearest each query is its own.
  expected = float(np.mean(np.argmax(
      retrieval.load_embeddings(paths['q'])['embedding']
      @ retrieval.load_embeddings(paths['db'])['embedding'].T, axis=1) == np.arange(n)))
  return paths, expected


def _grid(tmp_path, fail_flag):
  jobs, cells, expected = [], [], {}
  for condition, noise in NOISE.items():
    for seed in (0, 1):
      name = f'eval/{condition}-s{seed}'
      folder = tmp_path / 'inputs' / name
      folder.mkdir(parents=True)
      paths, expected[condition, seed] = _write_embeddings(str(folder), noise, seed)
      commands = [COUNT]
      if (condition, seed) == ('blurred', 1):
        commands.append(FAIL_IF + (str(fail_flag),))  # Interrupts the grid while the flag exists.
      commands.append(('{py}', 'tools/eval_retrieval.py', '--queries', paths['q'], '--database',
                       paths['db'], '--label', 'identity', '--ks', '1,5', '--examples', '0',
                       '--repeats', '1', '--out', '{job}/retrieval'))
      jobs.append(study.Job(name, tuple(commands)))
      cells.append(study.Cell(condition, seed, (name,),
                              (study.Score('retrieval', 'tiny', f'{name}/retrieval'),)))
  question = study.Question('q', 'A tiny question', tuple(cells),
                            ('tiny float R@1', 'tiny binary R@1'), reference='sharp',
                            paired=(('tiny binary R@1', 'tiny float R@1'),))
  return [question], jobs, expected


def test_grid_runs_resumes_and_aggregates_what_the_runs_wrote(tmp_path):
  root = str(tmp_path / 'root')
  flag = tmp_path / 'interrupt'
  flag.write_text('')
  questions, jobs, expected = _grid(tmp_path, flag)
  ordered = study.collect_jobs(questions, jobs)
  with pytest.raises(study.StudyError, match=r"job 'eval/blurred-s1': exit 3 .*resume here"):
    study.run_jobs(root, ordered, cwd=REPO, log=lambda *_: None)
  # Interrupted: three cells done, the fourth missing, and the report says so.
  partial = study.aggregate(root, questions)['q']
  assert partial['missing'] == ['blurred seed 1']
  assert [r['seeds'] for r in partial['conditions']] == [[0, 1], [0]]

  flag.unlink()
  seconds = study.run_jobs(root, ordered, cwd=REPO, log=lambda *_: None)
  assert list(seconds) == ['eval/blurred-s1']  # Finished jobs were not run again.
  runs = {j.name: (tmp_path / 'root' / j.name / 'runs').read_text() for j in jobs}
  assert runs == {'eval/sharp-s0': 'x', 'eval/sharp-s1': 'x', 'eval/blurred-s0': 'x',
                  'eval/blurred-s1': 'xx'}
  assert study.run_jobs(root, ordered, cwd=REPO, log=lambda *_: None) == {}

  r = study.aggregate(root, questions)['q']
  assert r['missing'] == [] and r['evaluated_on'] == {
      'tiny retrieval': 'tiny:test_query -> tiny:test_index, relevant = same identity'}
  rows = {row['condition']: row for row in r['conditions']}
  for condition in NOISE:
    want = [expected[condition, s] for s in (0, 1)]
    got = rows[condition]['metrics']['tiny float R@1']
    np.testing.assert_allclose(got['values'], want)
    np.testing.assert_allclose([got['mean'], got['std']], [np.mean(want), np.std(want)])
    diffs = rows[condition]['paired']['tiny binary R@1 - tiny float R@1']['values']
    np.testing.assert_allclose(np.array(diffs) + want,
                               rows[condition]['metrics']['tiny binary R@1']['values'])
  (float_cmp,) = [c for c in r['comparisons'] if c['metric'] == 'tiny float R@1']
  sharp, blurred = (rows[c]['metrics']['tiny float R@1'] for c in ('sharp', 'blurred'))
  assert float_cmp['condition'] == 'blurred' and float_cmp['delta'] < 0
  assert float_cmp['finding'] == (abs(blurred['mean'] - sharp['mean'])
                                  > blurred['std'] + sharp['std'])
  report = study.render(study.aggregate(root, questions), header='# T', readings={'q': 'Said.'})
  assert '| blurred | 2 | ' in report and '**Reading.** Said.' in report
  study.plot(study.aggregate(root, questions), str(tmp_path))
  assert (tmp_path / 'study_q.png').read_bytes()[:4] == b'\x89PNG'

  # A cell evaluated on another split than the others: refused, naming both.
  q_file = json.loads((tmp_path / 'root' / 'eval/sharp-s1/retrieval/retrieval.json').read_text())
  _write_embeddings(os.path.dirname(q_file['queries_file']), NOISE['sharp'], 1, split='val_query')
  with pytest.raises(study.StudyError, match=r"'tiny retrieval' of sharp seed 1 was scored on 'tiny:val_query.*"
                                             r"but sharp seed 0 on 'tiny:test_query"):
    study.aggregate(root, questions)

  # A finished job whose declared commands changed is refused, not silently kept.
  changed = study.Job(jobs[0].name, jobs[0].commands[:1])
  with pytest.raises(study.StudyError, match='other commands than the grid now declares'):
    study.run_jobs(root, [changed], cwd=REPO, log=lambda *_: None)


def test_collect_jobs_orders_deps_and_refuses_bad_grids():
  a, b = study.Job('a', (('true',),)), study.Job('b', (('true',),), deps=('a',))
  cell = study.Cell('c', 0, ('b',), ())
  q = study.Question('q', 'Q', (cell,), ())
  assert [j.name for j in study.collect_jobs([q], [b, a])] == ['a', 'b']
  with pytest.raises(study.StudyError, match="'a' is declared twice"):
    study.collect_jobs([q], [a, b, study.Job('a', (('false',),))])
  with pytest.raises(study.StudyError, match="job 'a' .* is not declared"):
    study.collect_jobs([q], [b])
  loop = study.Job('a', (('true',),), deps=('b',))
  with pytest.raises(study.StudyError, match='cycle: b -> a -> b'):
    study.collect_jobs([q], [loop, b])


def test_default_grid():
  questions, jobs = grid.get_study(scale=1.0, seeds=3)
  by_key = {q.key: q for q in questions}
  assert list(by_key) == list(grid.QUESTIONS)
  ordered = study.collect_jobs(questions, jobs)  # Every cell's job is declared, deps first.
  position = {j.name: i for i, j in enumerate(ordered)}
  assert all(position[d] < position[j.name] for j in ordered for d in j.deps)
  for q in questions:
    conditions = {}
    for c in q.cells:
      conditions.setdefault(c.condition, set()).add(c.seed)
    assert all(seeds == {0, 1, 2} for seeds in conditions.values()), q.key
  # Matched FLOPs: the ResNet's steps x its FLOPs = the ViT's.
  ratio = grid.train_flops('Ti/16') / grid.train_flops('resnet50')
  assert 0.1 < ratio < 0.5
  resnet = [j for j in ordered if j.name.startswith('pretrain/resnet50')]
  assert len(resnet) == 3
  assert all(f'-n{round(grid.PRETRAIN_STEPS * ratio)}' in j.name for j in resnet)
  # Binary vs float covers every fine-tuned model of the other questions, each once.
  finetuned = {c.jobs for q in questions if q.key != 'binary' for c in q.cells
               if any(score.kind == 'retrieval' for score in c.scores)}
  binary = [c.jobs for c in by_key['binary'].cells]
  assert len(binary) == len(set(binary)) and set(binary) == finetuned
  assert {c.condition for c in by_key['binary'].cells} >= {'labels: clusters', 'loss: sigmoid'}
  assert 'loss: softmax' not in {c.condition for c in by_key['binary'].cells}  # = labels: clusters
  # The tail question scores question 1's pretrained trunks; only those run its extra commands.
  labels_pretrain = {c.jobs[0] for c in by_key['labels'].cells}
  assert {c.jobs for c in by_key['tail'].cells} == {(j,) for j in labels_pretrain}
  with_tail = {j.name for j in ordered
               if any('--multi_hot' in cmd for cmd in j.commands)}
  assert with_tail == labels_pretrain
  assert all('data/fashion_mnist' in j.deps for j in ordered if j.name in with_tail)
  with pytest.raises(ValueError, match="unknown questions \\['lables'\\]"):
    grid.get_study(questions=('lables',))


def test_previous_report_stands_in_for_cells_not_run_here(tmp_path):
  questions, jobs, expected = _grid(tmp_path, tmp_path / 'no-flag')
  first = str(tmp_path / 'first')
  seconds = study.run_jobs(first, study.collect_jobs(questions, jobs), cwd=REPO,
                           log=lambda *_: None)
  old = study.aggregate(first, questions)
  # The earlier report did not finish blurred seed 1: only the other three cells are carried.
  previous = {'results': old, 'commits': ['abc'], 'machine': 'elsewhere',
              'job_seconds': {k: v for k, v in seconds.items() if k != 'eval/blurred-s1'}}
  root = str(tmp_path / 'grown')
  own = study.without_carried(root, questions, previous)
  assert [(c.condition, c.seed) for c in own[0].cells] == [('blurred', 1)]
  assert study.carried_jobs(root, questions, previous) == previous['job_seconds']
  r = study.aggregate(root, questions, previous)['q']
  assert r['missing'] == ['blurred seed 1']
  assert [(row['seeds'], row['carried']) for row in r['conditions']] == [([0, 1], [0, 1]),
                                                                          ([0], [0])]
  sharp = r['conditions'][0]['metrics']['tiny float R@1']['values']
  np.testing.assert_allclose(sharp, [expected['sharp', s] for s in (0, 1)])

  study.run_jobs(root, study.collect_jobs(own, jobs), cwd=REPO, log=lambda *_: None)
  assert not (tmp_path / 'grown' / 'eval/sharp-s0').exists()  # Carried cells' jobs: not run.
  grown = study.aggregate(root, questions, previous)
  for new_row, old_row in zip(grown['q']['conditions'], old['q']['conditions']):
    assert new_row['metrics'] == old_row['metrics'] and new_row['seeds'] == old_row['seeds']
  assert grown['q']['comparisons'] == old['q']['comparisons']
  assert '| blurred | 2 (1 carried) | ' in study.render(grown, header='# T')
  # The written report: the carried jobs' seconds beside this root's own, both reports' commits.
  from bigvis.tools import study as study_tool
  out = tmp_path / 'report'
  args = types.SimpleNamespace(previous=previous, previous_path='old/study.json', jobs=jobs,
                               report_only=False, command='python tools/study.py', seeds=2,
                               scale=1.0)
  study_tool.write_report(root, str(out), questions, args)
  written = json.loads((out / 'study.json').read_text())
  own_seconds = json.loads((tmp_path / 'grown' / 'eval/blurred-s1/job.json').read_text())
  assert written['job_seconds'] == {**previous['job_seconds'],
                                    'eval/blurred-s1': own_seconds['seconds']}
  assert written['commits'] == sorted({'abc', own_seconds['commit']})
  header = (out / 'STUDY.md').read_text()
  assert 'jobs finished: 1 of 1' in header and 'the cells of 3 jobs' in header
  assert '`--previous old/study.json`, git HEAD abc' in header
  # A cell done here is this study's own even where the earlier report has it too.
  everything = dict(previous, job_seconds=seconds)
  assert study.without_carried(root, questions, everything) == own
  assert 'eval/blurred-s1' not in study.carried_jobs(root, questions, everything)

  # A metric the earlier report recorded as a mean only is not taken as a seed's figure.
  partial = json.loads(json.dumps(previous))
  partial['results']['q']['conditions'][0]['metrics']['tiny float R@1']['values'] = [0.5]
  assert 'tiny float R@1' not in study.previous_cell(partial, questions[0],
                                                     questions[0].cells[0])[0]

  # The fresh cell scored on another split than the carried ones: refused, naming the report.
  q_file = json.loads((tmp_path / 'grown' / 'eval/blurred-s1/retrieval/retrieval.json')
                      .read_text())['queries_file']
  _write_embeddings(os.path.dirname(q_file), NOISE['blurred'], 1, split='val_query')
  with pytest.raises(study.StudyError, match=r"of blurred seed 1 was scored on 'tiny:val_query"
                                             r".*but sharp seed 0 \(previous report\) on"):
    study.aggregate(root, questions, previous)


def test_a_multi_label_probe_is_read_per_band(tmp_path):
  """tools/probe.py on multi-hot labels (as embed.py --multi_hot writes them) -> the study's
  per-band metrics, with the splits they were scored on."""
  from bigvis.tools import probe as probe_tool
  rng = np.random.default_rng(0)
  files = {}
  for split, n in (('train', 60), ('test_index', 20)):
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tags = (rng.random((n, 12)) < np.linspace(0.6, 0.05, 12)).astype(np.uint8)
    files[split] = str(tmp_path / f'{split}.npz')
    arrays = {'id': np.array([f'{split}{i}' for i in range(n)]),
              'index': np.arange(n, dtype=np.int64), 'embedding': x,
              'codes': retrieval.binary_codes(x), 'pooled': x, 'label/tags': tags}
    meta = {'corpus': '/data/emoji_mined', 'split': split, 'checkpoint': '/ck', 'step': 1,
            'task': '', 'features': 'pooled'}
    retrieval.save_embeddings(files[split], arrays, meta)
  with pytest.raises(ValueError, match='multi-hot rows must be 0/1'):
    retrieval.save_embeddings(str(tmp_path / 'bad.npz'), {**arrays, 'label/tags': 2 * tags}, meta)
  report = probe_tool.main(['--train', files['train'], '--test', files['test_index'],
                            '--label', 'tags', '--ks', '3', '--out', str(tmp_path / 'tail')])
  metrics, on = study.read_score(str(tmp_path), study.Score('probe', 'emoji', 'tail'))
  assert metrics == {f'emoji {band} 3-NN P@1': v['precision@1']
                     for band, v in report['band_precision'][3].items()}
  assert set(metrics) == {'emoji head 3-NN P@1', 'emoji torso 3-NN P@1', 'emoji tail 3-NN P@1'}
  assert on == 'train emoji_mined:train, test emoji_mined:test_index, pooled features, label tags'


def test_the_commit_a_job_records_ignores_the_reports_own_edits(tmp_path):
  import subprocess
  git = lambda *a: subprocess.run(['git', '-C', str(tmp_path), *a], check=True,
                                  capture_output=True)
  git('init', '-q')
  (tmp_path / 'report').mkdir()
  (tmp_path / 'report' / 'STUDY.md').write_text('old')
  (tmp_path / 'code.py').write_text('x = 1')
  git('add', '.')
  git('-c', 'user.email=a@b', '-c', 'user.name=a', 'commit', '-qm', 'c')
  head = study.git_commit(str(tmp_path))
  assert not head.endswith('+changes')
  (tmp_path / 'report' / 'STUDY.md').write_text('rewritten after a job')
  assert study.git_commit(str(tmp_path)) == head + '+changes'
  assert study.git_commit(str(tmp_path), ignore=str(tmp_path / 'report')) == head
  (tmp_path / 'code.py').write_text('x = 2')
  assert study.git_commit(str(tmp_path), ignore=str(tmp_path / 'report')) == head + '+changes'
