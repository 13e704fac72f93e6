"""bigvis's BiT-style ResNet v1.5 in plain PyTorch, for `bench/torch_vit.py` (the torch worker).

Mirrors `bigvis/models/resnet.py` layer for layer: bias-free convs whose kernels are standardized
per output channel (mean 0, biased variance 1, eps 1e-8 inside the rsqrt, in float32 before any
autocast), GroupNorm with 32 groups and eps 1e-6 (flax's default) after every conv, v1.5 units
(1x1 -> 3x3 strided -> 1x1, the last GroupNorm's scale zero-init, a 1x1 strided projection +
GroupNorm where the shape changes), a 7x7/2 stem conv + GroupNorm + ReLU + 3x3/2 max pool, and
TF-style 'SAME' padding everywhere (on a stride-2 layer the odd pixel of padding goes after, as
in XLA, not before as torch's symmetric `padding` would). Global average pool in float32, then a
zero-init 1000-way linear head. ResNet-50 has 25,557,032 params, as bigvis's and torchvision's.
Channels-last layout (NHWC in memory, as bigvis's), PyTorch's recommended layout for CPU convnets.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def same_padding(size, kernel, stride):
  """(before, after) padding of XLA's 'SAME' for one spatial dim."""
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def pad_same(x, kernel, stride, value=0.0):
  """Pads NCHW `x` for 'SAME'; returns (x, symmetric padding left for the op itself)."""
  (top, bottom), (left, right) = (same_padding(n, kernel, stride) for n in x.shape[2:])
  if top == bottom and left == right:
    return x, (top, left)
  return F.pad(x, (left, right, top, bottom), value=value), (0, 0)


class StdConv2d(nn.Conv2d):
  """Bias-free conv with a weight-standardized kernel and 'SAME' padding."""

  def __init__(self, cin, cout, kernel, stride=1, groups=1):
    super().__init__(cin, cout, kernel, stride, bias=False, groups=groups)
    std = math.sqrt(2.0 / (cin // groups * kernel * kernel)) / .87962566103423978  # he_normal
    nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

  def forward(self, x):
    w = self.weight.float()
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    w = w * torch.rsqrt(w.var(dim=(1, 2, 3), keepdim=True, correction=0) + 1e-8)
    x, padding = pad_same(x, self.kernel_size[0], self.stride[0])
    return F.conv2d(x, w, None, self.stride, padding, 1, self.groups)


def group_norm(channels, zero_scale=False):
  gn = nn.GroupNorm(32, channels, eps=1e-6)
  if zero_scale:
    nn.init.zeros_(gn.weight)
  return gn


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1, each conv followed by GroupNorm; ReLU(x + y)."""

  def __init__(self, cin, mid, out, stride=1, groups=1):
    super().__init__()
    self.conv1, self.gn1 = StdConv2d(cin, mid, 1), group_norm(mid)
    self.conv2, self.gn2 = StdConv2d(mid, mid, 3, stride, groups), group_norm(mid)
    self.conv3, self.gn3 = StdConv2d(mid, out, 1), group_norm(out, zero_scale=True)
    self.proj = None
    if cin != out or stride != 1:
      self.proj = nn.Sequential(StdConv2d(cin, out, 1, stride), group_norm(out))

  def forward(self, x):
    y = F.relu(self.gn1(self.conv1(x)))
    y = F.relu(self.gn2(self.conv2(y)))
    y = self.gn3(self.conv3(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet(nn.Module):
  """ResNet v1.5 trunk + 1000-way head; forward(images NCHW) -> logits float32."""

  def __init__(self, depth=50, groups=1, group_width=64, num_classes=1000):
    super().__init__()
    self.conv_root, self.gn_root = StdConv2d(3, 64, 7, 2), group_norm(64)
    units, cin = [], 64
    for s, size in enumerate(STAGES[depth]):
      mid, out = groups * group_width * 2**s, 256 * 2**s
      for u in range(size):
        units.append(Bottleneck(cin, mid, out, 2 if s > 0 and u == 0 else 1, groups))
        cin = out
    self.units = nn.Sequential(*units)
    self.head = nn.Linear(cin, num_classes)
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)

  def features(self, images):
    x = F.relu(self.gn_root(self.conv_root(images)))
    x, padding = pad_same(x, 3, 2, value=-math.inf)
    x = F.max_pool2d(x, 3, 2, padding)
    return self.units(x).float().mean(dim=(2, 3))

  def forward(self, images):
    x = self.features(images)
    with torch.autocast('cpu', enabled=False):  # Head in float32, as bigvis's.
      return self.head(x.float())
