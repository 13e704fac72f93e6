"""Preprocessing ops, big_vision style: a chain of small dict->dict ops named in a string.

    fn = parse("decode|random_resized_crop(224)|flip_lr|value_range(-1, 1)")
    example = fn({"image": png_bytes}, np.random.default_rng(0))

Each op is `name` or `name(args)`; arguments are Python literals read with
ast.literal_eval (never eval). An op reads and writes `example["image"]` (other
keys pass through): bytes before `decode`, uint8 HxWx3 after it, float32 after
`value_range` / `normalize`. Random ops draw only from the `rng` they are given,
so the caller decides what makes a result reproducible.

Ops (uint8 in, uint8 out unless said otherwise):
    decode                              PNG/JPEG bytes -> uint8 RGB, transparency on white
    resize(size)                        to exactly size (int or (h, w))
    resize_small(size)                  shorter side to size, aspect kept
    center_crop(size)                   the central size box
    random_resized_crop(size, scale, ratio)  Inception crop of random area and aspect, resized
    random_crop(size, padding=0, fill=0)     a random size box after padding each side
    flip_lr(p=0.5)                      mirror left-right
    color_jitter(brightness, contrast, saturation, hue, p=1.0)  random factors, random order
    grayscale(p=0.1)                    to gray, kept 3-channel
    gaussian_blur(p=0.5, sigma=(0.1, 2.0))   blur with a random sigma in pixels
    rand_augment(num_ops=2, magnitude=9)     num_ops random PIL ops at magnitude / 10 strength
    value_range(lo=-1, hi=1)            uint8 -> float32 [lo, hi]
    normalize(mean, std)                uint8 -> float32 (x / 255 - mean) / std
Mixup and cutmix mix examples, so they belong after batching, not in this
per-example chain.
"""

from __future__ import annotations

import ast
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

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
def random_crop(size, padding: int = 0, fill: int = 0) -> Op:
  """A random `size` box after padding each side by `padding` pixels of `fill` (CIFAR-style)."""
  ch, cw = _hw(size)
  def op(example, rng):
    image = example["image"]
    if padding:
      image = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    h, w = image.shape[:2]
    if h < ch or w < cw:
      raise ValueError(f"random_crop({size}, padding={padding}): image is only {h}x{w} padded")
    top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return _with_image(example, image[top:top + ch, left:left + cw])
  return op


def _jitter_hue(pil: Image.Image, shift: float) -> Image.Image:
  hsv = np.array(pil.convert("HSV"))
  hsv[..., 0] += np.uint8(round(shift * 255) % 256)  # uint8 wraps around: hue is circular
  return Image.fromarray(hsv, "HSV").convert("RGB")


@register
def color_jitter(brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 1.0) -> Op:
  """torchvision's ColorJitter: factors in [1 - x, 1 + x] (hue shift in [-hue, hue] turns), random order."""
  if not 0 <= hue <= 0.5:
    raise ValueError(f"color_jitter: hue must be in [0, 0.5], got {hue}")
  enhancers = [(brightness, ImageEnhance.Brightness), (contrast, ImageEnhance.Contrast),
               (saturation, ImageEnhance.Color)]
  def op(example, rng):
    if rng.random() >= p:
      return example
    pil = Image.fromarray(example["image"])
    for k in rng.permutation(4):
      if k == 3:
        pil = _jitter_hue(pil, rng.uniform(-hue, hue)) if hue else pil
      elif enhancers[k][0]:
        amount, enhancer = enhancers[k]
        pil = enhancer(pil).enhance(rng.uniform(max(0.0, 1 - amount), 1 + amount))
    return _with_image(example, np.asarray(pil))
  return op


@register
def grayscale(p: float = 0.1) -> Op:
  """Converts to gray (ITU-R 601 luma) with probability `p`; keeps 3 channels."""
  def op(example, rng):
    if rng.random() >= p:
      return example
    gray = np.asarray(Image.fromarray(example["image"]).convert("L"))
    return _with_image(example, np.repeat(gray[..., None], 3, axis=2))
  return op


@register
def gaussian_blur(p: float = 0.5, sigma=(0.1, 2.0)) -> Op:
  """Blurs with probability `p`, sigma (in pixels) uniform in `sigma` (SimCLR/BYOL)."""
  def op(example, rng):
    if rng.random() >= p:
      return example
    pil = Image.fromarray(example["image"])  # PIL's radius is the Gaussian's sigma
    return _with_image(example, np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(*sigma)))))
  return op


_GREY = (128, 128, 128)  # fill for pixels that geometric ops move in


def _affine(pil, coeffs):
  return pil.transform(pil.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR,
                       fillcolor=_GREY)


# RandAugment ops: (PIL image, strength in [0, 1], random sign +-1) -> PIL image. Strengths
# follow torchvision's RandAugment at magnitude m of 10 (its 31 bins at m * 3).
_RAND_AUGMENT_OPS = {
    "autocontrast": lambda im, s, sign: ImageOps.autocontrast(im),
    "equalize": lambda im, s, sign: ImageOps.equalize(im),
    "rotate": lambda im, s, sign: im.rotate(sign * 30 * s, Image.Resampling.BILINEAR, fillcolor=_GREY),
    "solarize": lambda im, s, sign: ImageOps.solarize(im, round(255 * (1 - s))),
    "posterize": lambda im, s, sign: ImageOps.posterize(im, 8 - int(4 * s)),
    "color": lambda im, s, sign: ImageEnhance.Color(im).enhance(1 + sign * 0.9 * s),
    "contrast": lambda im, s, sign: ImageEnhance.Contrast(im).enhance(1 + sign * 0.9 * s),
    "brightness": lambda im, s, sign: ImageEnhance.Brightness(im).enhance(1 + sign * 0.9 * s),
    "sharpness": lambda im, s, sign: ImageEnhance.Sharpness(im).enhance(1 + sign * 0.9 * s),
    "shear_x": lambda im, s, sign: _affine(im, (1, sign * 0.3 * s, 0, 0, 1, 0)),
    "shear_y": lambda im, s, sign: _affine(im, (1, 0, 0, sign * 0.3 * s, 1, 0)),
    "translate_x": lambda im, s, sign: _affine(im, (1, 0, sign * 0.45 * s * im.width, 0, 1, 0)),
    "translate_y": lambda im, s, sign: _affine(im, (1, 0, 0, 0, 1, sign * 0.45 * s * im.height)),
}


@register
def rand_augment(num_ops: int = 2, magnitude: float = 9) -> Op:
  """RandAugment (Cubuk et al. 2020): `num_ops` ops drawn from 13 PIL ops, strength magnitude / 10."""
  if not 0 <= magnitude <= 10:
    raise ValueError(f"rand_augment: magnitude must be in [0, 10], got {magnitude}")
  names = sorted(_RAND_AUGMENT_OPS)
  strength = magnitude / 10
  def op(example, rng):
    pil = Image.fromarray(example["image"])
    for k in rng.integers(len(names), size=num_ops):
      sign = 1 if rng.random() < 0.5 else -1
      pil = _RAND_AUGMENT_OPS[names[k]](pil, strength, sign)
    return _with_image(example, np.asarray(pil))
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
