"""A plain PyTorch eager ViT-Ti/16 training step, the baseline that `bench/train_step.py` times.

Runs in its own venv (`bench/.torch-venv`, made by the driver), never in the project's. The model
has bigvis's ViT-Ti/16 shape and numerics: 16x16 patch conv, learned position embedding on the
patches, a class token (no position embedding) prepended, 12 pre-LN blocks (LayerNorm eps 1e-6,
`F.scaled_dot_product_attention` with 3 heads, MLP 192->768->192 with tanh-GELU as flax's default),
final LayerNorm, class-token pooling, zero-init 1000-way linear head. The step is softmax
cross-entropy in float32, backward, global-norm clipping at 1.0 and AdamW with weight decay on
kernels only, matching bigvis's default optimizer config.

As a worker for the driver: `python torch_vit.py --worker --batch 32 --dtype bf16` builds the model,
runs warm-up steps, prints one `@@{json}` line, then for each `run N` line on stdin runs N timed
steps and prints one `@@{json}` line with the seconds of each; `quit` ends it.
Standalone: `python torch_vit.py --batch 32 --steps 5` prints images/s.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
  """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, width, mlp_dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.norm1 = nn.LayerNorm(width, eps=1e-6)
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)
    self.norm2 = nn.LayerNorm(width, eps=1e-6)
    self.fc1 = nn.Linear(width, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, width)

  def forward(self, x):
    b, n, d = x.shape
    h = self.num_heads
    q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v)  # [b, h, n, d/h]
    x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate='tanh'))


class ViT(nn.Module):

  def __init__(self, image_size=224, patch_size=16, width=192, depth=12, mlp_dim=768,
               num_heads=3, num_classes=1000):
    super().__init__()
    n = (image_size // patch_size) ** 2
    self.embedding = nn.Conv2d(3, width, patch_size, stride=patch_size)
    self.pos_embedding = nn.Parameter(torch.randn(1, n, width) * width ** -0.5)
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    self.blocks = nn.ModuleList(Block(width, mlp_dim, num_heads) for _ in range(depth))
    self.encoder_norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(m.bias, std=1e-6)
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)

  def forward(self, images):  # images: NCHW float
    x = self.embedding(images).flatten(2).transpose(1, 2) + self.pos_embedding
    x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
    for block in self.blocks:
      x = block(x)
    return self.head(self.encoder_norm(x)[:, 0])


def make_step(model, dtype, lr=1e-3, weight_decay=1e-4, clip_norm=1.0):
  """One training step; `dtype` 'fp32' (eager float32) or 'bf16' (CPU autocast to bfloat16)."""
  decay = [p for name, p in model.named_parameters() if name.endswith('weight') and p.dim() > 1]
  ids = {id(p) for p in decay}
  no_decay = [p for p in model.parameters() if id(p) not in ids]
  opt = torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay),
                           dict(params=no_decay, weight_decay=0.0)], lr=lr, betas=(0.9, 0.999))

  def step(images, labels):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bf16'):
      logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()
    return loss

  return step


def _emit(obj):
  sys.stdout.write('@@' + json.dumps(obj) + '\n')
  sys.stdout.flush()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--dtype', choices=('fp32', 'bf16'), default='fp32')
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps before timing')
  ap.add_argument('--steps', type=int, default=5, help='timed steps (standalone mode)')
  ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--worker', action='store_true', help='line protocol for the driver')
  args = ap.parse_args()

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  model = ViT().train()
  step = make_step(model, args.dtype)
  g = torch.Generator().manual_seed(args.seed)
  images = torch.rand(args.batch, 3, 224, 224, generator=g) * 2 - 1  # value_range(-1, 1)
  labels = torch.randint(0, 1000, (args.batch,), generator=g)

  t0 = time.perf_counter()
  warm_times = []
  for _ in range(args.warmup):
    t = time.perf_counter()
    loss = step(images, labels)
    warm_times.append(time.perf_counter() - t)
  setup = dict(
      side='torch', dtype=args.dtype, batch=args.batch, threads=torch.get_num_threads(),
      interop_threads=torch.get_num_interop_threads(), torch=torch.__version__,
      params=sum(p.numel() for p in model.parameters()), warmup_step_seconds=warm_times,
      loss=float(loss.detach()), mkldnn_bf16=bool(torch.backends.mkldnn.is_available()),
      warmup_seconds=time.perf_counter() - t0)

  def timed(n):
    times, losses = [], []
    for _ in range(n):
      t = time.perf_counter()
      loss = step(images, labels)
      times.append(time.perf_counter() - t)
      losses.append(float(loss.detach()))  # Eager CPU: the step is done when it returns.
    return dict(step_seconds=times, loss=losses[-1])

  if not args.worker:
    out = timed(args.steps)
    print(json.dumps(setup))
    print(f'{args.dtype}: {args.steps * args.batch / sum(out["step_seconds"]):.2f} images/s '
          f'(loss {out["loss"]:.4f})')
    return
  _emit(setup)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == 'quit':
      break
    out = timed(int(cmd[1]))
    if not all(math.isfinite(x) for x in [out['loss']]):
      out['warning'] = 'non-finite loss'
    _emit(out)


if __name__ == '__main__':
  main()
