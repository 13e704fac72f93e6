"""Preprocessing ops, big_vision style: a chain of small dict->dict ops named in a string.

    fn = parse("decode|random_resized_crop(224)|flip_lr|value_range(-1, 1)")
    example = fn({"image": png_bytes}, np.random.default_rng(0))

Each op is `name` or `name(args)`; arguments are Python literals read with
ast.literal_eval (never eval). An op reads and writes `example["image"]` (other
keys pass through): bytes before `decode`, uint8 HxWx3 after it, float32 after
`value_range` / `normalize`. Random ops draw only from the `rng` they are given,
so the caller decides what makes a result reproducible.
"""

from __future__ import annotations

import ast
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

Example = dict[str, Any]
Op = Callable[[Example, np.random.Generator], Example]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REGISTRY: dict[str, Callable[..., Op]] = {}


def register(fn: Callable[..., Op]) -> Callable[..., Op]:
  """Registers an op factory under its function name."""
  _REGISTRY[fn.__name__] = fn
  return fn


def known_ops() -> list[str]:
  return sorted(_REGISTRY)


def _hw(size) -> tuple[int, int]:
  return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def _with_image(example: Example, image) -> Example:
  return {**example, "image": image}


def _resize(image: np.ndarray, hw: tuple[int, int], box=None) -> np.ndarray:
  # PIL's resize filters over the whole source footprint (antialiased when shrinking).
  pil = Image.fromarray(image)
  return np.asarray(pil.resize((hw[1], hw[0]), Image.Resampling.BILINEAR, box=box))


@register
def decode() -> Op:
  """PNG/JPEG bytes -> uint8 RGB [H, W, 3]; transparency is composited on white."""
  def op(example, rng):
    del rng
    pil = Image.open(io.BytesIO(example["image"]))
    has_alpha = pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info
    if has_alpha:
      white = Image.new("RGBA", pil.size, (255, 255, 255, 255))
      pil = Image.alpha_composite(white, pil.convert("RGBA"))
    return _with_image(example, np.asarray(pil.convert("RGB")))
  return op


@register
def resize(size) -> Op:
  """Resizes to exactly `size` (int or (h, w)), ignoring the aspect ratio."""
  hw = _hw(size)
  return lambda example, rng: _with_image(example, _resize(example["image"], hw))


@register
def resize_small(size: int) -> Op:
  """Resizes so the shorter side is `size`, keeping the aspect ratio."""
  def op(example, rng):
    h, w = example["image"].shape[:2]
    scale = size / min(h, w)
    return _with_image(example, _resize(example["image"], (round(h * scale), round(w * scale))))
  return op


@register
def center_crop(size) -> Op:
  """Crops the central `size` (int or (h, w)); the image must be at least that big."""
  ch, cw = _hw(size)
  def op(example, rng):
    h, w = example["image"].shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"center_crop({size}): image is only {h}x{w}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return _with_image(example, example["image"][top:top + ch, left:left + cw])
  return op


@register
def random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Op:
  """Inception-style crop: a random box of `scale` area and `ratio` aspect, resized to `size`."""
  hw = _hw(size)
  log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
  def op(example, rng):
    image = example["image"]
    h, w = image.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(*scale)
      aspect = np.exp(rng.uniform(*log_ratio))
      cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
      if 0 < cw <= w and 0 < ch <= h:
        top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        break
    else:  # rare: fall back to the largest central box within the ratio bounds
      aspect = np.clip(w / h, *ratio)
      cw, ch = (w, round(w / aspect)) if w / h <= aspect else (round(h * aspect), h)
      top, left = (h - ch) // 2, (w - cw) // 2
    return _with_image(example, _resize(image, hw, box=(left, top, left + cw, top + ch)))
  return op


@register
def flip_lr(p: float = 0.5) -> Op:
  """Mirrors left-right with probability `p`."""
  def op(example, rng):
    if rng.random() < p:
      return _with_image(example, np.ascontiguousarray(example["image"][:, ::-1]))
    return example
  return op


@register
def value_range(lo: float = -1.0, hi: float = 1.0) -> Op:
  """uint8 [0, 255] -> float32 [lo, hi]."""
  def op(example, rng):
    image = example["image"].astype(np.float32) / 255.0
    return _with_image(example, image * np.float32(hi - lo) + np.float32(lo))
  return op


@register
def normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Op:
  """uint8 -> float32 (x / 255 - mean) / std, per channel (ImageNet statistics by default)."""
  mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  def op(example, rng):
    image = example["image"].astype(np.float32) / 255.0
    return _with_image(example, (image - mean32) / std32)
  return op


def _parse_op(text: str) -> Op:
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"pp op {text!r} is not `name` or `name(args)`: {e}") from None
  call = node if isinstance(node, ast.Call) else None
  name_node = call.func if call else node
  if not isinstance(name_node, ast.Name):
    raise ValueError(f"pp op {text!r} is not `name` or `name(args)`")
  name = name_node.id
  if name not in _REGISTRY:
    raise ValueError(f"unknown pp op {name!r} in {text!r}; known ops: {', '.join(known_ops())}")
  try:
    args = [ast.literal_eval(a) for a in call.args] if call else []
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
  except ValueError as e:
    raise ValueError(f"pp op {text!r}: arguments must be literals ({e})") from None
  try:
    return _REGISTRY[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"pp op {text!r}: {e}") from None


def parse(pp_string: str) -> Op:
  """Parses 'op1|op2(args)|...' into one op that applies them in order."""
  ops = [_parse_op(part) for part in pp_string.split("|") if part.strip()]
  if not ops:
    raise ValueError(f"empty pp string {pp_string!r}")

  def chain(example: Example, rng: np.random.Generator) -> Example:
    for op in ops:
      example = op(example, rng)
    return example
  return chain
