"""Evaluators run during training (big_vision style), built from `config.evals`.

Each entry names a kind (see `bigvis.config.evaluator`): 'classification' (accuracy of each
classifier head, precision@1 of each multilabel head, or of the one named by `task`),
'retrieval' (recall@k of an embedding head, float by cosine and binary by Hamming distance, exact
search) or 'knn' (k-NN accuracy on the
trunk's pooled features) or 'linear_probe' (logistic regression on the frozen pooled features,
bigvis/probe.py). `Evaluators.run(params, step)` returns {'eval/<name>/<metric>': value}
for the entries due at `step`.
"""
import numpy as np

from bigvis import config as config_lib
from bigvis import inference, probe, records, retrieval, train_input


def accuracy(logits, labels):
  return float(np.mean(np.argmax(logits, -1) == labels))


def precision_at_1(logits, multi_hot):
  """Share of examples (with any positive) whose top-scored class is a positive."""
  has_label = multi_hot.sum(-1) > 0
  top = np.argmax(logits, -1)
  return float(multi_hot[np.arange(len(top)), top][has_label].mean())


def search_without_self(queries, database, k, metric, same_split):
  """Exact top-k ids; with queries == database, each query's own row is removed first."""
  if not same_split:
    return retrieval.exact_search(queries, database, k, metric=metric)[0]
  ids = retrieval.exact_search(queries, database, k + 1, metric=metric)[0]
  own = np.arange(len(ids))[:, None]
  # Keep the first k columns that are not the query itself (a tie can put it anywhere).
  order = np.argsort(ids == own, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(ids, order, axis=1)


def _unit(x):
  return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def knn_accuracy(query_features, query_labels, index_features, index_labels, k, same_split=False):
  """k-NN by cosine similarity, majority vote; a tie goes to the class of the nearest among them."""
  ids = search_without_self(_unit(query_features), _unit(index_features), k, 'dot', same_split)
  neighbours = index_labels[ids]  # [Q, k], nearest first
  num_classes = int(max(index_labels.max(), query_labels.max())) + 1
  votes = np.zeros((len(ids), num_classes))
  rank_bonus = (k - np.arange(ids.shape[1])) / (k * (k + 1))  # < 1 in total: breaks ties only
  np.add.at(votes, (np.arange(len(ids))[:, None], neighbours), 1 + rank_bonus)
  return float(np.mean(votes.argmax(-1) == query_labels))


# Classes ranked by training frequency: head holds the first half of the label assignments, tail
# the last fifth (the long tail the paper clusters), torso what is between.
BAND_SHARES = (('head', 0.5), ('torso', 0.8), ('tail', 1.0))


def frequency_bands(multi_hot):
  """{band: class ids} of the classes `multi_hot` [N, C] assigns at least once, by how many of
  all assignments the classes more frequent than each hold (BAND_SHARES)."""
  counts = multi_hot.sum(0, dtype=np.int64)
  order = np.argsort(-counts, kind='stable')
  order = order[counts[order] > 0]
  before = (np.cumsum(counts[order]) - counts[order]) / max(int(counts.sum()), 1)
  bands, start = {}, 0.0
  for name, end in BAND_SHARES:
    bands[name] = order[(before >= start) & (before < end)]
    start = end
  return bands


def knn_band_precision(query_features, query_multi_hot, index_features, index_multi_hot, k,
                       bands, chunk=256):
  """Multi-label k-NN label transfer, per frequency band: each query's best guess among a band's
  classes (the class most of its k cosine neighbours carry; ties to the nearer neighbour) is
  right when the query carries it. precision@1 is over the queries that carry a class of the band,
  so every model is scored on the same queries; a query whose neighbours carry none guesses wrong.
  Returns {band: {'precision@1', 'queries', 'classes'}}."""
  ids = search_without_self(_unit(query_features), _unit(index_features), k, 'dot', False)
  weight = 1 + (k - np.arange(ids.shape[1])) / (k * (k + 1))  # < 1 in total: breaks ties only
  bands = {name: np.asarray(classes, np.int64) for name, classes in bands.items()}
  hits = {name: [] for name in bands}
  for lo in range(0, len(ids), chunk):
    votes = np.einsum('qkc,k->qc', index_multi_hot[ids[lo:lo + chunk]].astype(np.float32), weight)
    truth = query_multi_hot[lo:lo + chunk].astype(bool)
    rows = np.arange(len(truth))
    for name, classes in bands.items():
      if len(classes):
        band_votes = votes[:, classes]
        guess = classes[band_votes.argmax(1)]
        right = (band_votes.max(1) > 0) & truth[rows, guess]
        hits[name].append(right[truth[:, classes].any(1)])
  out = {}
  for name, classes in bands.items():
    right = np.concatenate(hits[name]) if hits[name] else np.zeros(0, bool)
    out[name] = {'precision@1': float(right.mean()) if len(right) else float('nan'),
                 'queries': int(len(right)), 'classes': int(len(classes))}
  return out


class Evaluators:
  """The config's evaluators over one model; predictions per split are shared within a run."""

  def __init__(self, config, model, mesh, param_shardings, label_names=None):
    """label_names: field -> class names the run trained with (bigvis.train_input.label_names)."""
    self.config = config
    self.predictor = inference.Predictor(model, mesh, param_shardings)
    self.label_names = label_names or {}
    self._cards = {}
    for name, e in config.evals.items():
      self._check_classes(name, e)

  def _card_names(self, data_dir):
    if data_dir not in self._cards:
      self._cards[data_dir] = (train_input.read_card(data_dir) or {}).get('label_names', {})
    return self._cards[data_dir]

  def _check_classes(self, name, e):
    """A classification evaluator scores a head's class ids against the corpus's: the corpus
    must mean by them what the training corpus did."""
    if e.kind != 'classification':  # The others compare the corpus's labels with themselves.
      return
    data_dir = e.data_dir or self.config.input.data_dir
    card_names = self._card_names(data_dir)
    scored = {t.label_field for n, t in self.config.tasks.items()
              if t.head in ('classifier', 'multilabel') and (not e.task or n == e.task)}
    for field in sorted(scored & set(card_names) & set(self.label_names)):
      if card_names[field] != self.label_names[field]:
        raise config_lib.ConfigError(
            f'evals.{name}: the card of {data_dir} names other classes for {field!r} '
            f'({len(card_names[field])}) than the run trains with ({len(self.label_names[field])}); '
            'prepare it with tools/prepare.py user --label_classes_from, or evaluate another '
            'field')

  def due(self, step):
    return [name for name, e in self.config.evals.items()
            if step % e.every_steps == 0 or step == self.config.total_steps]

  def _label_spec(self, field, data_dir):
    for t in self.config.tasks.values():
      if t.label_field == field:
        return config_lib.label_specs(self.config)[field]
    names = self._card_names(data_dir)
    if field not in names:
      raise config_lib.ConfigError(f'evals: no class count for label field {field!r}: no task '
                                   f'uses it and the card of {data_dir} does not name its classes')
    return ('class', len(names[field]))

  def _predict(self, params, e, split, fields, cache):
    data_dir = e.data_dir or self.config.input.data_dir
    key = (data_dir, split, e.pp, tuple(sorted(fields)))
    if key not in cache:
      cache[key] = self.predictor.predict_split(
          params, records.shard_paths(data_dir, split), pp=e.pp,
          labels={f: self._label_spec(f, data_dir) for f in fields},
          batch_size=e.batch_size or self.config.batch_size, desc=f'eval {split}')
    return cache[key]

  def run(self, params, step):
    scalars, cache = {}, {}
    for name in self.due(step):
      e = self.config.evals[name]
      for metric, value in getattr(self, f'_{e.kind}')(params, e, cache).items():
        scalars[f'eval/{name}/{metric}'] = value
    return scalars

  def _classification(self, params, e, cache):
    tasks = {n: t for n, t in self.config.tasks.items() if t.head in ('classifier', 'multilabel')
             and (not e.task or n == e.task)}
    out = self._predict(params, e, e.split, {t.label_field for t in tasks.values()}, cache)
    metrics = {}
    for name, t in tasks.items():
      logits, labels = out[f'logits/{name}'], out[f'label/{t.label_field}']
      if t.head == 'classifier':
        metrics[f'{name}/accuracy'] = accuracy(logits, labels)
      else:
        metrics[f'{name}/precision@1'] = precision_at_1(logits, labels)
    return metrics

  def _pair(self, params, e, cache):
    query = self._predict(params, e, e.query_split, {e.label_field}, cache)
    index = self._predict(params, e, e.index_split, {e.label_field}, cache)
    return query, index, e.query_split == e.index_split

  def _retrieval(self, params, e, cache):
    query, index, same = self._pair(params, e, cache)
    key, label = f'embedding/{e.task}', f'label/{e.label_field}'
    k = max(e.ks)
    found = {
        'float': search_without_self(query[key], index[key], k, 'dot', same),
        'binary': search_without_self(retrieval.binary_codes(query[key]),
                                      retrieval.binary_codes(index[key]), k, 'hamming', same)}
    # Across splits, queries whose label is absent from the index are left out (as the eval tool
    # does); within one split, a query whose only match is itself counts as a miss.
    database_labels = None if same else index[label]
    metrics = {}
    for kind, ids in found.items():
      for k in e.ks:
        metrics[f'{kind}/recall@{k}'] = retrieval.recall_at_k(
            index[label][ids], query[label], k, database_labels)
    return metrics

  def _knn(self, params, e, cache):
    query, index, same = self._pair(params, e, cache)
    label = f'label/{e.label_field}'
    return {f'{e.k}nn_accuracy': knn_accuracy(query['pooled'], query[label], index['pooled'],
                                              index[label], e.k, same)}

  def _linear_probe(self, params, e, cache):
    test, train, _ = self._pair(params, e, cache)
    label = f'label/{e.label_field}'
    result = probe.linear_probe(train['pooled'], train[label], test['pooled'], test[label],
                                seed=self.config.seed)
    return {'linear_probe_accuracy': result['accuracy'], 'linear_probe_c': result['c']}
