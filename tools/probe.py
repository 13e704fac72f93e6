"""Scores a representation on frozen features: k-NN accuracy and a linear probe (logistic
regression, L2 chosen on a slice of the training rows), from two embeddings files.

  python tools/embed.py --workdir runs/pretrain --corpus runs/data/openclipart --split train \\
      --features pooled --out runs/pretrain/oc_train.npz
  python tools/embed.py --workdir runs/pretrain --corpus runs/data/openclipart --split validation \\
      --features pooled --out runs/pretrain/oc_val.npz
  python tools/probe.py --train runs/pretrain/oc_train.npz --test runs/pretrain/oc_val.npz \\
      --label category --out runs/pretrain/probe

Features: the files' `pooled` trunk features (default), or `--features embedding`. Writes
OUT/probe.json and OUT/probe.md (local or a bucket) and prints the table.

A multi-label field (embedded with `tools/embed.py --multi_hot FIELD`, e.g. mined_labels) is
scored per frequency band instead: the training file's classes ranked by count into head (the
first half of the label assignments), torso and tail (the last fifth), and for each band the
precision@1 of k-NN label transfer (bigvis.evaluators.knn_band_precision) over the test rows that
carry one of its classes:
  python tools/probe.py --train runs/pretrain/emoji_train.npz --test runs/pretrain/emoji_test.npz \
      --label mined_labels --ks 10 --out runs/pretrain/tail
"""
import argparse
import json
import sys


from bigvis import evaluators, fileio, probe, retrieval


def score(train, test, label, *, features='pooled', ks=(1, 10), seed=0):
  """{'knn': {k: accuracy}, 'linear_probe': probe.linear_probe(...)} for two embeddings dicts."""
  field = f'label/{label}'
  for name, emb in (('--train', train), ('--test', test)):
    if field not in emb:
      have = sorted(k[len('label/'):] for k in emb if k.startswith('label/'))
      raise ValueError(f'{name}: no label field {label!r}; the file has {have}')
    if features not in emb:
      raise ValueError(f'{name}: no {features!r} features in the file (embed with --features '
                       'pooled, or pass --features embedding)')
  train_y, test_y = train[field], test[field]
  if train_y.ndim == 2:
    if test_y.shape[1] != train_y.shape[1]:
      raise ValueError(f'label {label!r}: --train has {train_y.shape[1]} classes, --test '
                       f'{test_y.shape[1]}: embed both from one corpus')
    bands = evaluators.frequency_bands(train_y)
    return {'features': features, 'label': label, 'band_shares': dict(evaluators.BAND_SHARES),
            'band_precision': {int(k): evaluators.knn_band_precision(
                test[features], test_y, train[features], train_y, k, bands) for k in ks}}
  known_train, known_test = train_y >= 0, test_y >= 0
  knn = {int(k): evaluators.knn_accuracy(test[features][known_test], test_y[known_test],
                                         train[features][known_train], train_y[known_train], k)
         for k in ks}
  return {'features': features, 'label': label, 'knn_accuracy': knn,
          'linear_probe': probe.linear_probe(train[features], train_y, test[features], test_y,
                                             seed=seed)}


def markdown(report):
  if 'band_precision' in report:
    return _bands_markdown(report)
  lp = report['linear_probe']
  rows = [f'| {k}-NN accuracy | {v:.4f} |' for k, v in report['knn_accuracy'].items()]
  rows.append(f'| linear probe accuracy (C={lp["c"]:g}, chosen on a slice of the {lp["train_rows"]} '
              f'training rows) | {lp["accuracy"]:.4f} |')
  return '\n'.join([f'# Frozen {report["features"]} features, label `{report["label"]}`', '',
                    f'train {report["train_file"]} ({lp["train_rows"]} rows), test '
                    f'{report["test_file"]} ({lp["test_rows"]} rows), {lp["classes"]} classes.',
                    '', '| metric | value |', '|---|---:|', *rows, '']) + '\n'


def _bands_markdown(report):
  rows = [f'| {band} | {r["classes"]} | {r["queries"]} | {k} | {r["precision@1"]:.4f} |'
          for k, per_band in report['band_precision'].items() for band, r in per_band.items()]
  return '\n'.join([f'# Frozen {report["features"]} features, multi-label `{report["label"]}` by '
                    'frequency band', '', f'train {report["train_file"]}, test '
                    f'{report["test_file"]}; k-NN label transfer, precision@1 over the test rows '
                    "that carry one of the band's classes.", '',
                    '| band | classes | test rows | k | precision@1 |', '|---|---:|---:|---:|---:|',
                    *rows, '']) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--train', required=True, help='embeddings .npz of the training split')
  p.add_argument('--test', required=True, help='embeddings .npz of the held-out split')
  p.add_argument('--label', required=True,
                 help='ground-truth class field, or a multi-hot one (scored per frequency band)')
  p.add_argument('--features', choices=('pooled', 'embedding'), default='pooled')
  p.add_argument('--ks', default='1,10', help='comma-separated k of k-NN')
  p.add_argument('--seed', type=int, default=0, help='seed of the validation slice')
  p.add_argument('--out', required=True, help='output folder')
  a = p.parse_args(argv)
  try:
    ks = [int(k) for k in a.ks.split(',') if k.strip()]
    if not ks or min(ks) < 1:
      raise ValueError(f'--ks {a.ks!r}: positive integers, e.g. 1,10')
    train, test = retrieval.load_embeddings(a.train), retrieval.load_embeddings(a.test)
    if set(map(str, train['id'])) & set(map(str, test['id'])):
      raise ValueError('--train and --test share record ids: a probe is scored on held-out rows')
    report = {'train_file': fileio.absolute(a.train), 'test_file': fileio.absolute(a.test),
              **score(train, test, a.label, features=a.features, ks=ks, seed=a.seed)}
    fileio.path(a.out).mkdir(parents=True, exist_ok=True)
    fileio.write_text_atomic(fileio.join(a.out, 'probe.json'), json.dumps(report, indent=1) + '\n')
    fileio.write_text_atomic(fileio.join(a.out, 'probe.md'), markdown(report))
  except (OSError, ValueError) as e:
    sys.exit(f'probe.py: error: {e}')
  print(markdown(report))
  return report


if __name__ == '__main__':
  main()
