"""Prepares a real corpus as record shards + dataset card.

    python tools/prepare.py emoji --out runs/data/emoji [--vendors google,twitter] [--cache DIR]
    python tools/prepare.py CORPUS --help        # that corpus's flags

A corpus is a function `prepare(out_dir, *, flag=default, ...) -> card`; its keyword
parameters become flags (tuple defaults take comma-separated values), documented
by the module's optional FLAG_HELP {param: text}, or the module may define
`add_arguments(parser)` itself. Modules are imported only when chosen.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
import typing

from bigvis import fileio
from bigvis.corpora.writer import CARD_JSON


# name -> ("module:function", one-line description). Adding a corpus is one line here.
CORPORA = {
    "emoji": ("bigvis.corpora.emoji:prepare",
              "the same emoji drawn by several vendors, keywords in 28 languages (npm)"),
    "openclipart": ("bigvis.corpora.openclipart:prepare",
                    "public-domain clip art, SVG titles/keywords, folder labels (Debian)"),
    "fashion_mnist": ("bigvis.corpora.fashion_mnist:prepare",
                      "70k Zalando product images, 10 classes (Debian)"),
    "user": ("bigvis.corpora.user:prepare",
             "your own data: image folder + JSONL, WebDataset tars, parquet"),
}
_RENAMED = {"cache_dir": "cache"}  # flag names that read better than the parameter


def _load(name: str):
  module_name, fn = CORPORA[name][0].split(":")
  module = importlib.import_module(module_name)
  return module, getattr(module, fn)


def _add_flags(parser: argparse.ArgumentParser, module, fn) -> None:
  """One flag per keyword parameter of `fn`, typed by its default."""
  helps = getattr(module, "FLAG_HELP", {})
  try:
    hints = typing.get_type_hints(fn)
  except Exception:  # unresolvable annotations: fall back to str flags
    hints = {}
  for p in inspect.signature(fn).parameters.values():
    if p.kind != p.KEYWORD_ONLY:
      continue
    flag, default = "--" + _RENAMED.get(p.name, p.name), p.default
    kw = {"dest": p.name, "help": helps.get(p.name, "")}
    if default is p.empty:
      kw["required"] = True
    elif isinstance(default, bool):
      kw["action"] = argparse.BooleanOptionalAction
    elif isinstance(default, (tuple, list)):
      item = type(default[0]) if default else str
      kw["type"] = lambda s, item=item: tuple(item(x) for x in s.split(",") if x)
    elif isinstance(default, dict):  # e.g. num_shards {split: n}: the flag sets all splits
      kw["type"] = int
    elif default is not None:
      kw["type"] = type(default)
    else:  # None: int or float if the annotation allows it, else str
      allowed = typing.get_args(hints.get(p.name)) or (hints.get(p.name),)
      kw["type"] = next((t for t in (int, float) if t in allowed), str)
    if default is not p.empty:
      kw["default"] = default
      shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
      if "default" not in kw["help"]:
        kw["help"] += f" (default: {shown})"
    parser.add_argument(flag, **kw)


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  listing = "\n".join(f"  {n:14s} {d}" for n, (_, d) in CORPORA.items())
  if not argv or argv[0] not in CORPORA:
    top = argparse.ArgumentParser(description=__doc__ + "\ncorpora:\n" + listing,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("corpus", choices=sorted(CORPORA))
    top.parse_args(argv[:1])  # prints help or the error naming the choices
  name = argv[0]
  module, fn = _load(name)
  parser = argparse.ArgumentParser(prog=f"prepare.py {name}", description=inspect.getdoc(module),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory (created if missing)")
  if hasattr(module, "add_arguments"):
    module.add_arguments(parser)
  else:
    _add_flags(parser, module, fn)
  args = vars(parser.parse_args(argv[1:]))
  out = args.pop("out")
  start = time.time()
  try:
    # A bucket --out is written in a local scratch folder, then uploaded, the card last.
    with fileio.output_dir(out, last=CARD_JSON) as local_out:
      card = fn(local_out, **args)
  except (OSError, ValueError, RuntimeError) as e:  # Bad input or fetch: the message, no traceback.
    sys.exit(f"prepare.py {name}: error: {e}")
  for split, s in card["splits"].items():
    print(f"{split:12s} {s['records']:8d} records  {s['shards']} shards  {s['bytes'] / 2**20:7.1f} MiB")
  print(f"{'total':12s} {card['num_records']:8d} records; skipped {card['skipped']['count']}, "
        f"duplicates {card['duplicates']['count']}; card {fileio.join(out, 'DATASET_CARD.md')}")
  print(f"prepared {name} in {time.time() - start:.1f} s")


if __name__ == "__main__":
  main()
