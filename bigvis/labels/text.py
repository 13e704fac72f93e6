"""Per-record candidate labels from heterogeneous, multilingual text fields.

    candidates(texts, cfg) -> ({label: confidence_permille}, Counter of text issues)

Each field is NFKC-normalized (full-width forms, ligatures and compatibility
digits fold to one spelling), case-folded, and '_' read as a space
(`north_america`). Then, by field kind:

- keyword lists (cfg.list_fields, e.g. `keywords`, `keywords_de`, `short_names`):
  split on , ; : | and their CJK forms; an item of <= cfg.max_phrase_words words
  is one whole label ("grinning face with big eyes", "à deux doigts": curated
  phrases keep their stop words), unless it is a lone stop word; a longer item
  is free text.
- free text (title, description, name, ...): 1..cfg.max_ngram word n-grams inside
  runs of words that punctuation does not break ("Baby-Tux" -> baby, tux, baby tux);
  a phrase may hold a stop word inside ("tears of joy") but not at either end.

Words are Unicode letters/digits plus combining marks (which Python's `\\w`
misses, breaking Thai and Devanagari words). Scripts written without spaces
(Han, kana, Thai, Lao, Khmer, Myanmar) cannot be split into words without a
dictionary, so a run of them of <= CJK_WHOLE characters is kept whole (short
keywords: "手", "少しだけ") and a longer run yields its character bigrams (the Lucene
CJK fallback; a character keeps its combining marks, so Thai vowels stay attached).
Emoji sequences (incl. ZWJ, skin tones, flags) are labels of their own.

Stop words come from the field's language (`keywords_de` -> German; others use
cfg.default_langs). Pure numbers, `0x..` ids and single Latin letters never
stand alone or at a phrase's ends. Confidence of a label = 1 - prod(1 - w_s)
over the distinct sources s that produced it (cfg.weight), in permille so that
sums are exact integers on every runner. Empty fields and text that is not valid
UTF-8 (bytes that fail to decode, lone surrogates, non-strings) are skipped and
counted, never fatal.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping

from bigvis.labels.config import MinerConfig
from bigvis.labels.stopwords import field_langs, stop_set

CJK_WHOLE = 4  # no-space runs up to this length stay whole; longer ones become bigrams
LIST_FIELDS = ("keywords", "keywords_*", "tags", "tags_*", "short_names")
# Tool/boilerplate words from OpenClipArt metadata ("Created with Inkscape", "Clipart by ...").
STOP_LABELS = frozenset(
    "clipart cliparts clip art svg png inkscape sodipodi openclipart created made".split()
    + ["clip art", "public domain"])

_BOILERPLATE_WORDS = frozenset(l for l in STOP_LABELS if " " not in l)  # no phrase ends on them

_NOSPACE = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
            "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f")


def _ranges(codes: list[int]) -> str:
  out, start = [], None
  for i, c in enumerate(codes):
    if start is None:
      start = c
    if i + 1 == len(codes) or codes[i + 1] != c + 1:
      out.append(re.escape(chr(start)) + ("" if c == start else "-" + re.escape(chr(c))))
      start = None
  return "".join(out)


# Combining marks (Mn/Mc/Me) are word characters here; Python's \w leaves them out.
_MARKS = _ranges([c for c in range(0x30000)
                  if unicodedata.category(chr(c)) in ("Mn", "Mc", "Me") and c != 0xFE0F])
_EMOJI_CHAR = "\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001f1e5\U0001f200-\U0001faff"
_EMOJI = (rf"[\U0001f1e6-\U0001f1ff]{{2}}|[{_EMOJI_CHAR}][\ufe0f\u20e3\U0001f3fb-\U0001f3ff]*"
          rf"(?:\u200d[{_EMOJI_CHAR}][\ufe0f\U0001f3fb-\U0001f3ff]*)*")
_WORD = rf"(?:[^\W_{_NOSPACE}]|[{_MARKS}\u200c])+"
_TOKEN = re.compile(rf"(?P<emoji>{_EMOJI})|(?P<cjk>[{_NOSPACE}]+)"
                    rf"|(?P<word>{_WORD})")
_PLAIN = re.compile(rf"{_WORD}(?: {_WORD})*")
_CJK_ONLY = re.compile(rf"[{_NOSPACE}]+")
_UNIT = re.compile(rf".[{_MARKS}]*", re.S)
_JOINER = re.compile(r"[\s\-'’_]*")  # what may sit between two words of one phrase
_LIST_SPLIT = re.compile(r"[,;:|、，；：｜\n]")
_JUNK = re.compile(r"^(?:\d+|0x[0-9a-f]+|[a-z])$")


def normalize(text: str) -> str:
  return unicodedata.normalize("NFKC", text).casefold().replace("_", " ")


def _cjk_labels(run: str) -> list[str]:
  units = _UNIT.findall(run)  # a base character with its marks (Thai vowels/tones) is one unit
  if len(units) <= CJK_WHOLE:
    return [run]
  return [units[i] + units[i + 1] for i in range(len(units) - 1)]


def phrases(text: str, stop: frozenset[str], max_n: int) -> list[str]:
  """Labels from free text (already normalized): n-grams, CJK runs, emoji."""
  out: list[str] = []
  segment: list[str] = []
  last_end = 0

  def flush():
    n_words = len(segment)
    for i in range(n_words):
      if segment[i] in stop or _JUNK.match(segment[i]):
        continue
      for j in range(i, min(i + max_n, n_words)):
        w = segment[j]
        if w not in stop and not _JUNK.match(w):
          out.append(" ".join(segment[i:j + 1]))
    segment.clear()

  for m in _TOKEN.finditer(text):
    if segment and not _JOINER.fullmatch(text, last_end, m.start()):
      flush()
    last_end = m.end()
    if m.lastgroup == "word":
      segment.append(m.group())
    else:
      flush()
      out.extend(_cjk_labels(m.group()) if m.lastgroup == "cjk" else [m.group().replace("\ufe0f", "")])
  flush()
  return out


def keyword_labels(text: str, stop: frozenset[str], cfg: MinerConfig) -> list[str]:
  """Labels from a comma-separated keyword list (already normalized)."""
  out = []
  for item in _LIST_SPLIT.split(text):
    item = item.strip()
    if not item:
      continue
    if _PLAIN.fullmatch(item):  # fast path: words separated by single spaces
      words = item.split(" ")
      if len(words) <= cfg.max_phrase_words:
        if len(words) > 1 or not (item in stop or _JUNK.match(item)):
          out.append(item)
        continue
    elif _CJK_ONLY.fullmatch(item):
      out.extend(_cjk_labels(item))
      continue
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(item)]
    if tokens and all(kind == "word" for kind, _ in tokens) and len(tokens) <= cfg.max_phrase_words:
      words = [w for _, w in tokens]
      if len(words) > 1 or not (words[0] in stop or _JUNK.match(words[0])):
        out.append(" ".join(words))
    else:
      out.extend(phrases(item, stop, cfg.max_ngram))
  return out


def as_text(value) -> str | None:
  """The field as valid Unicode, or None when it is not decodable text."""
  if isinstance(value, (bytes, bytearray)):
    try:
      return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
      return None
  if not isinstance(value, str):
    return None
  try:
    value.encode("utf-8")  # lone surrogates (e.g. from surrogateescape) fail here
  except UnicodeEncodeError:
    return None
  return value


def is_list_field(source: str) -> bool:
  return any(fnmatch.fnmatchcase(source, p) for p in LIST_FIELDS)


@functools.lru_cache(maxsize=4096)
def _field_rules(source: str, cfg: MinerConfig) -> tuple[frozenset[str], bool, float]:
  """(stop words, is a keyword list, weight) of a field name: computed once per name."""
  stop = stop_set(field_langs(source, cfg.default_langs)) | _BOILERPLATE_WORDS
  return stop, is_list_field(source), cfg.weight(source)


@functools.lru_cache(maxsize=16)
def _excluded(cfg: MinerConfig) -> frozenset[str]:
  return STOP_LABELS.union(normalize(x) for x in cfg.exclude)


def candidates(texts: Mapping[str, object], cfg: MinerConfig) -> tuple[dict[str, int], Counter]:
  """{label: confidence in permille} over all fields, and counts of skipped fields."""
  issues: Counter = Counter()
  miss: dict[str, float] = {}  # label -> prod(1 - w) over the sources that produced it
  excluded = _excluded(cfg)
  for source in sorted(texts):  # sorted: the float products multiply in one fixed order
    text = as_text(texts[source])
    if text is None:
      issues["fields_invalid_text"] += 1
      continue
    if not text.strip():
      issues["fields_empty"] += 1
      continue
    stop, is_list, w = _field_rules(source, cfg)
    norm = normalize(text)
    labels = keyword_labels(norm, stop, cfg) if is_list else phrases(norm, stop, cfg.max_ngram)
    for label in set(labels):
      if label not in excluded:
        miss[label] = miss.get(label, 1.0) * (1.0 - w)
  floor = cfg.min_confidence * 1000
  out = {}
  for label, m in miss.items():
    conf = min(1000, max(0, round((1.0 - m) * 1000)))
    if conf >= floor and conf > 0:
      out[label] = conf
  if not out:
    issues["records_without_candidates"] += 1
  return out, issues
