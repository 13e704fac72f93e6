"""Plain PyTorch training steps of bigvis's models, the baselines that `bench/train_step.py` times.

Runs in its own venv (`bench/.torch-venv`, made by the driver), never in the project's. `--model`:

  vit-ti16, vit-s16  bigvis's ViT-Ti/16 (width 192, 3 heads, MLP 768) and ViT-S/16 (384, 6 heads,
                     MLP 1536) at 224 px, same shapes and numerics: 16x16 patch conv, learned
                     position embedding on the patches, a class token (no position embedding)
                     prepended, 12 pre-LN blocks (LayerNorm eps 1e-6, `F.scaled_dot_product_attention`,
                     MLP with tanh-GELU as flax's default), final LayerNorm, class-token pooling.
  resnet50           bigvis's BiT ResNet-50 v1.5 (GroupNorm + weight-standardized convs), from
                     `torch_resnet.py`; channels-last.

Each ends in a zero-init 1000-way linear head run in float32 (as bigvis's heads). The step is
softmax cross-entropy in float32, backward, global-norm clipping at 1.0 and AdamW (lr 1e-3, weight
decay 1e-4 on weight matrices and conv kernels only), matching bigvis's default optimizer config.
`--dtype fp32` runs float32; `bf16` runs the model under `torch.autocast('cpu', torch.bfloat16)`.
`--compile` wraps forward + loss in `torch.compile` (inductor; AOTAutograd compiles the backward
too); clipping and AdamW stay eager.

As a worker for the driver: `python torch_vit.py --worker --model vit-s16 --batch 16 --dtype bf16`
builds the model, runs warm-up steps (the first compiles under --compile), prints one `@@{json}`
line (params, forward FLOPs counted by `torch.utils.flop_counter`, warm-up times), then for each
`run N` line on stdin runs N timed steps and prints one `@@{json}` line with the seconds of each;
`quit` ends it. Standalone: `python torch_vit.py --model resnet50 --batch 8 --steps 3` prints
images/s; `--params` only prints the parameter count.
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

import torch_resnet


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

  def __init__(self, width, depth, mlp_dim, num_heads, image_size=224, patch_size=16,
               num_classes=1000):
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

  def features(self, images):  # images: NCHW float -> class token [B, width]
    x = self.embedding(images).flatten(2).transpose(1, 2)
    x = x + self.pos_embedding.to(x.dtype)  # In the compute dtype, as bigvis: bf16 under autocast.
    x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
    for block in self.blocks:
      x = block(x)
    return self.encoder_norm(x)[:, 0]

  def forward(self, images):
    x = self.features(images)
    with torch.autocast('cpu', enabled=False):  # Head in float32, as bigvis's.
      return self.head(x.float())


MODELS = {  # --model -> (builder, channels_last)
    'vit-ti16': (lambda: ViT(width=192, depth=12, mlp_dim=768, num_heads=3), False),
    'vit-s16': (lambda: ViT(width=384, depth=12, mlp_dim=1536, num_heads=6), False),
    'resnet50': (lambda: torch_resnet.ResNet(50), True),
}


def make_step(model, dtype, compile=False, lr=1e-3, weight_decay=1e-4, clip_norm=1.0):
  """One training step; `dtype` 'fp32' (float32) or 'bf16' (CPU autocast to bfloat16)."""
  decay = [p for name, p in model.named_parameters() if name.endswith('weight') and p.dim() > 1]
  ids = {id(p) for p in decay}
  no_decay = [p for p in model.parameters() if id(p) not in ids]
  opt = torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay),
                           dict(params=no_decay, weight_decay=0.0)], lr=lr, betas=(0.9, 0.999))

  def forward_loss(images, labels):
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bf16'):
      logits = model(images)
    return F.cross_entropy(logits.float(), labels)

  if compile:
    forward_loss = torch.compile(forward_loss)

  def step(images, labels):
    loss = forward_loss(images, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()
    return loss

  return step


def forward_flops(model, images):
  """Forward FLOPs of the whole batch (matmuls, convs, attention), counted on one image."""
  from torch.utils.flop_counter import FlopCounterMode
  with torch.no_grad(), FlopCounterMode(display=False) as counter:
    model(images[:1])
  return counter.get_total_flops() * images.shape[0]


def compile_stats():
  from torch._dynamo.utils import counters
  return dict(graphs=counters['stats'].get('unique_graphs', 0),
              graph_breaks=sum(counters['graph_break'].values()))


def _emit(obj):
  sys.stdout.write('@@' + json.dumps(obj) + '\n')
  sys.stdout.flush()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--model', choices=list(MODELS), default='vit-ti16')
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--dtype', choices=('fp32', 'bf16'), default='fp32')
  ap.add_argument('--compile', action='store_true', help='torch.compile forward + loss')
  ap.add_argument('--warmup', type=int, default=2, help='untimed steps before timing')
  ap.add_argument('--steps', type=int, default=5, help='timed steps (standalone mode)')
  ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--params', action='store_true', help='print the param count and exit')
  ap.add_argument('--worker', action='store_true', help='line protocol for the driver')
  args = ap.parse_args()

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  build, channels_last = MODELS[args.model]
  model = build().train()
  params = sum(p.numel() for p in model.parameters())
  if args.params:
    print(params)
    return
  g = torch.Generator().manual_seed(args.seed)
  images = torch.rand(args.batch, 3, 224, 224, generator=g) * 2 - 1  # value_range(-1, 1)
  labels = torch.randint(0, 1000, (args.batch,), generator=g)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  fwd_flops = forward_flops(model, images)
  step = make_step(model, args.dtype, args.compile)

  t0 = time.perf_counter()
  warm_times = []
  for _ in range(args.warmup):
    t = time.perf_counter()
    loss = step(images, labels)
    warm_times.append(time.perf_counter() - t)
  setup = dict(
      side='torch', model=args.model, dtype=args.dtype, compile=args.compile, batch=args.batch,
      threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
      torch=torch.__version__, params=params, fwd_flops=int(fwd_flops),
      channels_last=channels_last, warmup_step_seconds=warm_times,
      loss=float(loss.detach()) if warm_times else None,
      mkldnn_bf16=bool(torch.backends.mkldnn.is_available()),
      warmup_seconds=time.perf_counter() - t0)
  if args.compile:
    setup['compile_stats'] = compile_stats()

  def timed(n):
    times, losses = [], []
    for _ in range(n):
      t = time.perf_counter()
      loss = step(images, labels)
      times.append(time.perf_counter() - t)
      losses.append(float(loss.detach()))  # CPU: the step is done when it returns.
    return dict(step_seconds=times, loss=losses[-1])

  if not args.worker:
    out = timed(args.steps)
    print(json.dumps(setup))
    print(f'{args.model} {args.dtype}{" compiled" if args.compile else ""}: '
          f'{args.steps * args.batch / sum(out["step_seconds"]):.2f} images/s '
          f'(loss {out["loss"]:.4f})')
    return
  _emit(setup)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == 'quit':
      break
    out = timed(int(cmd[1]))
    if not math.isfinite(out['loss']):
      out['warning'] = 'non-finite loss'
    _emit(out)


if __name__ == '__main__':
  main()
