"""Writes the synthetic shapes corpus (train + validation) as ArrayRecord shards.

    python tools/make_synthetic.py --out data/shapes --num_records 2000 --image_size 64 --seed 0

Produces DIR/train-0000i-of-0000n.array_record and DIR/validation-*.array_record
in the record schema of bigvis/records.py. Validation images come from the same
generator under another split name, so they differ from every training image.
"""

from __future__ import annotations

import argparse


from bigvis import synthetic


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory (created if missing)")
  parser.add_argument("--num_records", type=int, default=2000, help="training records (default 2000)")
  parser.add_argument("--num_val_records", type=int, default=None,
                      help="validation records (default: num_records // 10, at least 1)")
  parser.add_argument("--image_size", type=int, default=64, help="image side in pixels (default 64)")
  parser.add_argument("--num_shards", type=int, default=2, help="shards per split (default 2)")
  parser.add_argument("--seed", type=int, default=0, help="corpus seed; same seed, same bytes (default 0)")
  args = parser.parse_args(argv)

  num_val = args.num_val_records if args.num_val_records is not None else max(1, args.num_records // 10)
  for split, count in (("train", args.num_records), ("validation", num_val)):
    paths = synthetic.make_shapes_corpus(args.out, num_records=count, image_size=args.image_size,
                                         num_shards=args.num_shards, seed=args.seed, name=split)
    print(f"{split}: {count} records in {len(paths)} shards under {args.out}")
  print(f"classes: shape={synthetic.NUM_SHAPES} color={synthetic.NUM_COLORS} "
        f"identity={synthetic.NUM_IDENTITIES} tags={synthetic.NUM_TAGS}")


if __name__ == "__main__":
  main()
