"""What the trainer reads: one corpus (`config.input.data_dir`) or several mixed
(`config.input.sources`, each a `bigvis.config.source`).

With sources, each task reads its label field from the sources that give it (`source.labels`, or
every task field its card lists); the batches carry `label_mask` {field: bool [B]}, and a task's
loss averages over the examples whose mask is True (bigvis/losses.py). A field that several
sources give must have one class list in all their cards: the same id must mean the same class.
"""
from __future__ import annotations

import dataclasses

import grain

from bigvis import config as config_lib, corpora, data, fileio, records


@dataclasses.dataclass(frozen=True)
class Source:
  name: str  # '' for the single corpus of input.data_dir
  data_dir: str
  split: str
  weight: float
  pp: str
  paths: tuple[str, ...]
  card: dict | None
  fields: tuple[str, ...]  # the task label fields it gives


def read_card(data_dir: str) -> dict | None:
  """The corpus card, None for a corpus without one; a card of a failed prepare is refused."""
  if not fileio.path(fileio.join(data_dir, corpora.writer.CARD_JSON)).exists():
    return None
  card = corpora.read_card(data_dir)
  if card.get('status') != 'ok':  # Its counts and classes describe a run that was discarded.
    raise config_lib.ConfigError(
        f'{data_dir}: the last prepare failed (card status {card.get("status")!r}: '
        f'{card.get("error", "")}); prepare it again')
  return card


def _num_records(paths) -> int:
  return len(grain.sources.ArrayRecordDataSource(list(paths)))


def resolve(config) -> list[Source]:
  """The sources the config names, their shards and cards read, and the fields each gives."""
  task_fields = sorted({t.label_field for t in config.tasks.values()})
  if not config.input.sources:
    data_dir = config.input.data_dir
    return [Source('', data_dir, config.input.split, 1.0, config.input.pp,
                   tuple(records.shard_paths(data_dir, config.input.split)), read_card(data_dir),
                   tuple(task_fields))]
  out = []
  for name, src in config.input.sources.items():
    where = f'input.sources.{name}'
    card = read_card(src.data_dir)
    listed = sorted((card or {}).get('fields', {}).get('labels', {}))
    if src.labels:
      fields = tuple(src.labels)
      if unused := sorted(set(fields) - set(task_fields)):
        raise config_lib.ConfigError(f'{where}.labels names {unused}, which no task trains on; '
                                     f'the tasks use {task_fields}')
      if card is not None and (absent := sorted(set(fields) - set(listed))):
        raise config_lib.ConfigError(f'{where}.labels names {absent}, but the card of '
                                     f'{src.data_dir} lists the label fields {listed}')
    elif card is None:
      raise config_lib.ConfigError(f'{where}: {src.data_dir} has no dataset card; name the '
                                   f'fields it gives in {where}.labels')
    else:
      fields = tuple(f for f in task_fields if f in listed)
    paths = tuple(records.shard_paths(src.data_dir, src.split))
    weight = src.weight * (_num_records(paths) if config.input.mix == 'records' else 1)
    out.append(Source(name, src.data_dir, src.split, weight, src.pp or config.input.pp, paths,
                      card, fields))
  for name, t in config.tasks.items():
    if not any(t.label_field in s.fields for s in out):
      raise config_lib.ConfigError(
          f'tasks.{name}: no input source gives its label field {t.label_field!r} '
          f'(the sources give {({s.name: list(s.fields) for s in out})})')
  return out


def label_names(sources: list[Source]) -> dict[str, list[str]]:
  """Field -> class names, from the cards of the sources that give the field.

  Raises ConfigError when two sources give one field with different class lists.
  """
  names, origin = {}, {}
  for s in sources:
    card_names = (s.card or {}).get('label_names', {})
    for field in s.fields if s.name else card_names:  # one corpus: its card, whole
      if field not in card_names:
        continue
      if field in names and names[field] != card_names[field]:
        raise config_lib.ConfigError(
            f'label field {field!r}: the cards of {origin[field]} and {s.data_dir} name '
            f'different classes ({len(names[field])} vs {len(card_names[field])}); give the field '
            'from one of them (input.sources.NAME.labels) or prepare them with one class list '
            '(tools/prepare.py user --label_classes_from)')
      names[field], origin[field] = card_names[field], s.data_dir
  return names


def resolve_num_classes(config, sources: list[Source]):
  """Fills each task's num_classes=0 from the class names of its field (in place)."""
  names = label_names(sources)
  for name, t in config.tasks.items():
    if t.num_classes == 0:
      if t.label_field not in names:
        dirs = [s.data_dir for s in sources if t.label_field in s.fields]
        raise config_lib.ConfigError(
            f'tasks.{name}.num_classes is 0 (from the dataset card), but the card of '
            f'{" / ".join(map(repr, dirs))} names no classes for {t.label_field!r}; it has '
            f'{sorted(names)}')
      t.num_classes = len(names[t.label_field])
  return config


def _labels(config, source: Source) -> dict:
  specs = config_lib.label_specs(config)
  return {f: specs[f] for f in source.fields}


def make_train_iter(config, sources: list[Source], *, batch_size: int, worker_count: int,
                    process_index: int, process_count: int):
  """Endless training batches; with several sources, mixed by weight (data.make_mixture)."""
  bad_records = 'replace' if config.input.max_bad_fraction > 0 else 'raise'
  if len(sources) == 1 and not sources[0].name:
    s = sources[0]
    return data.make_dataset(list(s.paths), pp=s.pp, labels=_labels(config, s),
                             batch_size=batch_size, seed=config.seed, shuffle=config.input.shuffle,
                             process_index=process_index, process_count=process_count,
                             worker_count=worker_count, bad_records=bad_records,
                             fraction=config.input.fraction)
  return data.make_mixture(
      [dict(paths=list(s.paths), weight=s.weight, pp=s.pp, labels=_labels(config, s))
       for s in sources],
      batch_size=batch_size, seed=config.seed, process_index=process_index,
      process_count=process_count, worker_count=worker_count, bad_records=bad_records)


def checkers(config, sources: list[Source]) -> list[data.RecordChecker]:
  """One per source: what is wrong with a record the pipeline replaced (its 'source', index)."""
  return [data.RecordChecker(list(s.paths), pp=s.pp, labels=_labels(config, s), seed=config.seed)
          for s in sources]
