"""A synthetic "shapes" corpus: a stand-in for real corpora with the same record schema.

Each image is one PIL-drawn shape in a named colour on a noisy light background.
Labels give a single-label task (shape, colour), a fine-grained identity
(shape x colour, for retrieval) and a multi-label task (tags).
Record i depends only on (seed, split name, i), so a corpus is reproducible and
any prefix of a larger corpus equals the smaller one.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from bigvis import records

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "arrow")
COLORS = {
    "red": (220, 30, 30), "orange": (245, 130, 20), "yellow": (230, 200, 0),
    "green": (30, 160, 50), "teal": (0, 150, 150), "blue": (30, 70, 220),
    "purple": (130, 40, 180), "brown": (120, 70, 30),
}
COLOR_NAMES = tuple(COLORS)
SIZE_WORDS = ("small", "large")
STYLE_WORDS = ("filled", "outlined")
# Multi-label vocabulary: tag id = position in this tuple.
TAG_WORDS = SHAPES + COLOR_NAMES + SIZE_WORDS + STYLE_WORDS

NUM_SHAPES = len(SHAPES)
NUM_COLORS = len(COLOR_NAMES)
NUM_IDENTITIES = NUM_SHAPES * NUM_COLORS
NUM_TAGS = len(TAG_WORDS)

# Rotation stays small so that a square and a diamond remain different classes.
_MAX_ROTATION_DEG = 15
_SUPERSAMPLE = 4  # draw large, then downsample: cheap anti-aliasing


def _outline(shape: str) -> list[tuple[float, float]] | None:
  """Polygon for `shape` inside the unit circle, so any rotation stays in frame (None: circle)."""
  points = _raw_outline(shape)
  if points is None:
    return None
  scale = max(math.hypot(x, y) for x, y in points)
  return [(x / scale, y / scale) for x, y in points]


def _raw_outline(shape: str) -> list[tuple[float, float]] | None:
  def ring(n, r=1.0, phase=-math.pi / 2):
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]
  if shape == "circle":
    return None
  if shape == "square":
    return ring(4, 1.0, -math.pi / 4)
  if shape == "triangle":
    return ring(3)
  if shape == "diamond":
    return ring(4)
  if shape == "hexagon":
    return ring(6)
  if shape == "star":
    outer, inner = ring(5), ring(5, 0.45, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner) for p in pair]
  if shape == "cross":
    a, b = 0.33, 1.0
    return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
            (-a, a), (-b, a), (-b, -a), (-a, -a)]
  if shape == "arrow":
    return [(-1, -0.3), (0.2, -0.3), (0.2, -0.75), (1, 0), (0.2, 0.75), (0.2, 0.3), (-1, 0.3)]
  raise ValueError(f"unknown shape {shape!r}")


def _draw(rng: np.random.Generator, image_size: int, shape: str, color: tuple[int, int, int],
          radius: float, outlined: bool) -> bytes:
  big = image_size * _SUPERSAMPLE
  background = tuple(int(c) for c in rng.integers(200, 256, size=3))
  canvas = Image.new("RGB", (big, big), background)
  draw = ImageDraw.Draw(canvas)
  r = radius * big
  cx, cy = rng.uniform(r, big - r, size=2)  # keep the whole shape inside
  angle = math.radians(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
  jitter = rng.integers(-15, 16, size=3)
  fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(color, jitter))
  width = max(1, int(0.12 * r))
  points = _outline(shape)
  if points is None:
    box = (cx - r, cy - r, cx + r, cy + r)
    draw.ellipse(box, outline=fill, width=width) if outlined else draw.ellipse(box, fill=fill)
  else:
    cos, sin = math.cos(angle), math.sin(angle)
    xy = [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]
    if outlined:
      draw.polygon(xy, outline=fill, width=width)
    else:
      draw.polygon(xy, fill=fill)
  small = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
  pixels = np.asarray(small, np.float32) + rng.normal(0, 6, size=(image_size, image_size, 3))
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="PNG")
  return out.getvalue()


def make_record(index: int, *, image_size: int = 64, seed: int = 0, name: str = "train") -> records.Record:
  """Record `index` of the corpus (seed, name); independent of every other record."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index])
  shape_id = int(rng.integers(NUM_SHAPES))
  color_id = int(rng.integers(NUM_COLORS))
  radius = float(rng.uniform(0.15, 0.45))  # fraction of the image side
  outlined = bool(rng.random() < 0.3)
  shape, color = SHAPES[shape_id], COLOR_NAMES[color_id]
  size_word = "small" if radius < 0.3 else "large"
  style_word = "outlined" if outlined else "filled"
  image = _draw(rng, image_size, shape, COLORS[color], radius, outlined)
  tags = [TAG_WORDS.index(w) for w in (shape, color, size_word, style_word)]
  return records.Record(
      id=f"shapes-{name}-{seed}-{index:07d}",
      image=image,
      texts={"title": f"{color} {shape}",
             "description": f"A {size_word} {style_word} {color} {shape} on a light background."},
      labels={"shape": shape_id, "color": color_id,
              "identity": shape_id * NUM_COLORS + color_id, "tags": tags})


def shapes_records(num_records: int, *, image_size: int = 64, seed: int = 0,
                   name: str = "train") -> Iterator[records.Record]:
  for i in range(num_records):
    yield make_record(i, image_size=image_size, seed=seed, name=name)


def make_shapes_corpus(out_dir: str, *, num_records: int, image_size: int = 64, num_shards: int = 2,
                       seed: int = 0, name: str = "train") -> list[str]:
  """Writes the corpus as ArrayRecord shards `out_dir/name-*`; returns their paths."""
  return records.write_shards(
      shapes_records(num_records, image_size=image_size, seed=seed, name=name),
      out_dir, name, num_shards)
