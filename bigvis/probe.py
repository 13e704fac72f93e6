"""A linear probe of frozen features: logistic regression with a small L2 sweep.

With k-NN accuracy (`evaluators.knn_accuracy`), the two numbers people quote for a pretrained
trunk. The L2 strength is chosen on a seeded validation slice of the training rows (never on the
test split), then the probe is refitted on all training rows and scored on the test rows.
"""
import warnings

import numpy as np

# Inverse L2 strengths (scikit-learn's C) tried, weakest regularization last.
DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _fit(x, y, c, seed):
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=import-outside-toplevel
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
  with warnings.catch_warnings():  # A capped fit is still a fair probe; the sweep reports it.
    warnings.simplefilter('ignore', ConvergenceWarning)
    return model.fit(x, y)


def linear_probe(train_x, train_y, test_x, test_y, *, cs=DEFAULT_CS, val_fraction=0.2, seed=0):
  """Accuracy on (test_x, test_y) of logistic regression fitted on (train_x, train_y).

  Features are standardized with the training rows' mean and spread. Rows with a negative label
  (unknown) are left out. Returns {'accuracy', 'c', 'val_accuracy': {c: accuracy}, 'train_rows',
  'test_rows', 'classes'}.
  """
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  keep, keep_test = train_y >= 0, test_y >= 0
  train_x, train_y, test_x, test_y = train_x[keep], train_y[keep], test_x[keep_test], test_y[keep_test]
  if len(np.unique(train_y)) < 2:
    raise ValueError(f'linear probe: the training rows hold {len(np.unique(train_y))} class(es); '
                     'it needs at least 2')
  if not len(test_y):
    raise ValueError('linear probe: no test rows with a known label')
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std

  order = np.random.default_rng(seed).permutation(len(train_y))
  n_val = max(1, int(round(val_fraction * len(order))))
  val, fit = order[:n_val], order[n_val:]
  val_accuracy = {float(c): float(np.mean(_fit(train_x[fit], train_y[fit], c, seed)
                                          .predict(train_x[val]) == train_y[val]))
                  for c in cs}
  best = max(val_accuracy, key=lambda c: (val_accuracy[c], -c))  # ties: the stronger L2
  model = _fit(train_x, train_y, best, seed)
  return {'accuracy': float(np.mean(model.predict(test_x) == test_y)), 'c': best,
          'val_accuracy': val_accuracy, 'train_rows': int(len(train_y)),
          'test_rows': int(len(test_y)), 'classes': int(len(np.unique(train_y)))}
