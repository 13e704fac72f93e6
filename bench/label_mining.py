"""Label mining throughput (records/s): the local runner on >= 1M records, Beam's DirectRunner on fewer.

    .venv/bin/python bench/label_mining.py                     # ~10 min on the 2-core dev CPU
    .venv/bin/python bench/label_mining.py --records 100000 --beam_records 5000   # smoke run

Text corpus: text only (each record's image is the same 1x1 PNG with the record number in a
tEXt chunk, 80 bytes, so image work is nil and the corpus writer's de-duplication keeps it),
built by resampling the real corpora's text fields (runs/data/emoji and runs/data/openclipart,
train split; made with tools/prepare.py when missing). Half the records are emoji-like: name,
short_names, category, subcategory and the keywords of 1-3 random languages (of 10), every field
drawn from an independent random emoji record; half are OpenClipArt-like: title, description
(when the drawn record has one) and keywords, each from an independent random clip-art record.
Fields keep their real length, language and wording; records are new combinations of them.

Measures: the per-record function `text.candidates` on one core; `local.run` (3 passes + k-means,
all cores, default MinerConfig) on the big corpus with per-phase seconds; and on the small corpus
`local.run` next to `beam.run` on the DirectRunner (in-process, then multi_processing over all
cores), checking that their artifacts are byte-identical. Writes <out>.json and <out>.md.
"""
import argparse
import datetime
import filecmp
import importlib.metadata
import json
import logging
import os
import platform
import struct
import subprocess
import sys
import time
import zlib

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

from bigvis import fileio, records  # noqa: E402
from bigvis.corpora import write_corpus  # noqa: E402
from bigvis.labels import MinerConfig, local, text  # noqa: E402  (beam: lazily, so spawned
#   local workers, which re-import this module, do not pay for importing apache_beam)

LANGS = ("en", "de", "fr", "es", "it", "pt", "ru", "ja", "zh", "ko")


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_HEAD = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)))
_PNG_TAIL = _chunk(b"IDAT", zlib.compress(b"\x00\x00")) + _chunk(b"IEND", b"")


def tiny_png(n: int) -> bytes:
  return _PNG_HEAD + _chunk(b"tEXt", b"n\x00" + str(n).encode()) + _PNG_TAIL


def pools(data_dir: str) -> tuple[list[dict], list[dict]]:
  out = []
  for name in ("emoji", "openclipart"):
    path = os.path.join(data_dir, name)
    if not os.path.isdir(path):  # a fresh checkout (make bench): prepare it, as the demo does
      cmd = [sys.executable, os.path.join(ROOT, "tools", "prepare.py"), name, "--out", path]
      print(f"{path} missing; making it: {' '.join(cmd[1:])}", flush=True)
      if subprocess.run(cmd, cwd=ROOT).returncode:
        raise SystemExit(f"{path}: tools/prepare.py {name} failed (see above)")
    out.append([dict(records.decode(raw, p).texts) for p in records.shard_paths(path, "train")
                for raw in records.read_shard(p)])
  return out[0], out[1]


def text_records(n: int, emoji: list[dict], clip: list[dict], seed: int = 0):
  rng = np.random.default_rng(seed)
  for i in range(n):
    r = rng.integers(0, 1 << 30, size=8)
    if r[0] % 2:
      texts = {f: emoji[r[k] % len(emoji)][f]
               for k, f in enumerate(("name", "short_names", "category", "subcategory"), 1)}
      for lang in rng.choice(LANGS, 1 + r[5] % 3, replace=False):
        texts[f"keywords_{lang}"] = emoji[rng.integers(len(emoji))][f"keywords_{lang}"]
    else:
      texts = {f: clip[r[k] % len(clip)].get(f, "") for k, f in
               enumerate(("title", "description", "keywords"), 1)}
      texts = {k: v for k, v in texts.items() if v}
    yield records.Record(id=f"text-{i:08d}", image=tiny_png(i), texts=texts, labels={})


def build(out: str, n: int, shards: int, emoji, clip) -> float:
  card_path = os.path.join(out, "dataset_card.json")
  if os.path.exists(card_path):
    with open(card_path) as f:
      if json.load(f).get("num_records") == n:
        return 0.0  # reuse
  start = time.perf_counter()
  write_corpus(text_records(n, emoji, clip), out, name="label_text", split_of=lambda r: "train",
               num_shards=shards, progress_total=n,
               card={"description": "bench: resampled emoji + OpenClipArt texts, no images"})
  return time.perf_counter() - start


def per_record(emoji, clip, n=20000) -> float:
  recs = [r.texts for r in text_records(n, emoji, clip, seed=1)]
  cfg = MinerConfig()
  start = time.perf_counter()
  for t in recs:
    text.candidates(t, cfg)
  return n / (time.perf_counter() - start)


def same_files(a: str, b: str) -> bool:
  names = sorted(os.listdir(a))
  if names != sorted(os.listdir(b)):
    return False
  _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
  return not mismatch and not errors


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--records", type=int, default=1_000_000)
  p.add_argument("--beam_records", type=int, default=20_000)
  p.add_argument("--shards", type=int, default=16)
  p.add_argument("--data_dir", default=os.path.join(ROOT, "runs", "data"))
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_labels"))
  p.add_argument("--out", default=os.path.join(BENCH, "results", "label_mining"))
  a = p.parse_args()
  logging.getLogger().setLevel(logging.ERROR)
  emoji, clip = pools(a.data_dir)
  cfg = MinerConfig()
  cores = os.cpu_count()
  res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "machine": {"cpu_cores": cores, "python": platform.python_version(),
                     "processor": platform.processor() or platform.machine(),
                     "apache_beam": importlib.metadata.version("apache-beam")},
         "config": cfg.to_json(), "rows": []}

  rate = per_record(emoji, clip)
  res["rows"].append({"what": "text.candidates (per-record function)", "runner": "-",
                      "workers": 1, "records": 20000, "records_per_s": round(rate)})
  print(f"candidates: {rate:.0f} rec/s on one core", flush=True)

  big = os.path.join(a.workdir, f"text_{a.records}")
  built = build(big, a.records, a.shards, emoji, clip)
  res["build_seconds"] = round(built, 1)
  timings: dict = {}
  start = time.perf_counter()
  stats = local.run(big, big + "_mined", cfg, timings=timings, progress=sys.stderr.isatty())
  sec = time.perf_counter() - start
  res["rows"].append({"what": "mine (3 passes + k-means + write)", "runner": "local",
                      "workers": cores, "records": a.records, "seconds": round(sec, 1),
                      "records_per_s": round(a.records / sec), "phases_s": timings,
                      "vocab": stats["vocabulary"], "uncovered": stats["labels"]["uncovered"]})
  print(json.dumps(res["rows"][-1]), flush=True)

  from bigvis.labels import beam
  small = os.path.join(a.workdir, f"text_{a.beam_records}")
  build(small, a.beam_records, max(2, a.shards // 4), emoji, clip)
  outs, failed = {}, set()
  for name, fn in (
      ("local", lambda o: local.run(small, o, cfg, progress=False)),
      ("beam DirectRunner in-process", lambda o: beam.run(small, o, cfg)),
      ("beam DirectRunner multi_processing", lambda o: beam.run(
          small, o, cfg, pipeline_args=["--runner=DirectRunner", "--direct_running_mode="
                                        "multi_processing", f"--direct_num_workers={cores}"]))):
    outs[name] = os.path.join(a.workdir, f"small_{len(outs)}")
    start = time.perf_counter()
    try:
      fn(outs[name])
      sec = time.perf_counter() - start
      row = {"seconds": round(sec, 1), "records_per_s": round(a.beam_records / sec)}
    except Exception as e:  # report, keep the other rows
      row = {"error": f"{type(e).__name__}: {e}"[:300]}
      failed.add(name)
    res["rows"].append({"what": "mine (3 passes + k-means + write)", "runner": name,
                        "workers": 1 if "in-process" in name else cores,
                        "records": a.beam_records, **row})
    print(json.dumps(res["rows"][-1]), flush=True)
  res["identical_artifacts_local_vs_beam"] = {
      n: same_files(outs["local"], outs[n]) for n in outs if n != "local" and n not in failed}

  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  fileio.write_text_atomic(a.out + ".json", json.dumps(res, indent=1))
  lines = [f"# Label mining throughput ({res['date']}, {cores} cores, Python "
           f"{res['machine']['python']}, apache-beam {res['machine']['apache_beam']})", "",
           "Text-only corpus resampled from the emoji + OpenClipArt text fields (see "
           "bench/label_mining.py); default MinerConfig.", "",
           "| what | runner | workers | records | seconds | records/s |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
  for r in res["rows"]:
    lines.append(f"| {r['what']} | {r['runner']} | {r['workers']} | {r['records']:,} | "
                 f"{r.get('seconds', '')} | {r.get('records_per_s', r.get('error', ''))} |")
  big_row = res["rows"][1]
  lines += ["", f"Local phases (s): {json.dumps(big_row['phases_s'])}",
            f"Vocabulary: {json.dumps(big_row['vocab'])}",
            f"Artifacts byte-identical to the local runner's: "
            f"{json.dumps(res['identical_artifacts_local_vs_beam'])}", ""]
  fileio.write_text_atomic(a.out + ".md", "\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
