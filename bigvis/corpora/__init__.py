"""Real corpora as record shards: one module per source, one shared writer.

Each source module (emoji, openclipart, fashion_mnist, user, ...) exposes
`prepare(out_dir, **options) -> card` and feeds `writer.write_corpus` a stream
of `Record`s and `Skipped`s; `tools/prepare.py` is the command line over them.
"""

from bigvis.corpora.writer import Skipped, TooManyBadItems, read_card, write_corpus

__all__ = ["Skipped", "TooManyBadItems", "read_card", "write_corpus"]
