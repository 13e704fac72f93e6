"""Safe decoding of untrusted images, texts and archive member names, shared by all readers.

Every check raises `BadItem(reason)`; readers turn it into a `Skipped(id, reason)` so one bad
item never stops a corpus. Reasons are short and start with a stable kind (e.g. "decompression
bomb:", "corrupt image:") so cards and tests can group them.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import re
import tarfile
import unicodedata
import warnings

from PIL import Image, ImageFile, UnidentifiedImageError

MAX_PIXELS = 40_000_000
# Stored as-is (the record schema allows only these two).
_KEEP_FORMATS = frozenset({"PNG", "JPEG"})
# Decoded and re-encoded as PNG: common web formats img2dataset and users hand us.
_CONVERT_FORMATS = frozenset({"WEBP", "GIF", "BMP"})
# Modes a PNG can hold; anything else is converted first.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


class BadItem(ValueError):
  """One input item cannot become a record; `reason` says why (no path, the caller adds the id)."""

  def __init__(self, reason: str, where: str = ""):
    super().__init__(f"{where}: {reason}" if where else reason)
    self.reason = reason


@contextlib.contextmanager
def _pixel_guard(max_pixels: int):
  # PIL checks width*height from the header inside Image.open, before any pixel is decoded, against
  # the process-wide MAX_IMAGE_PIXELS (warning above it, error above twice it). Point it at our
  # limit, make the warning an error, and never accept truncated data. Not thread-safe (a global):
  # readers decode in one thread.
  old_limit, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
  Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      yield
  finally:
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_limit, old_trunc


def load_image(data: bytes, where: str, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """Opens `data`, refuses bombs from the header, decodes every pixel; returns the loaded image."""
  if not data:
    raise BadItem("empty image file", where)
  try:
    with _pixel_guard(max_pixels):
      img = Image.open(io.BytesIO(data))
      w, h = img.size
      if w * h > max_pixels:  # also covers formats whose plugin skips PIL's own check
        raise BadItem(f"decompression bomb: {w * h} pixels ({w}x{h}) > {max_pixels}", where)
      if img.format not in _KEEP_FORMATS | _CONVERT_FORMATS:
        raise BadItem(f"unsupported image format {img.format}", where)
      img.load()  # first frame only for GIF/WebP animations; that is what we store
  except BadItem:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    # PIL raises from the header alone (errors at twice its limit, so quote ours, not its).
    n = re.search(r"\((\d+) pixels\)", str(e))
    raise BadItem(f"decompression bomb: {n[1] if n else 'more than'} pixels > {max_pixels}", where) from e
  except UnidentifiedImageError as e:
    raise BadItem("corrupt image: not a recognized image format", where) from e
  except Exception as e:  # noqa: BLE001  PIL raises OSError, SyntaxError, ValueError, struct.error, ...
    raise BadItem(f"corrupt image: {type(e).__name__}: {e}", where) from e
  if w == 0 or h == 0:
    raise BadItem(f"corrupt image: size {w}x{h}", where)
  return img


def check_image(data: bytes, where: str, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
  """Raises BadItem unless `data` is a fully decodable image within `max_pixels`; returns (w, h)."""
  return load_image(data, where, max_pixels=max_pixels).size


def _encode(img: Image.Image, fmt: str) -> bytes:
  if fmt == "JPEG":
    img = img if img.mode in ("L", "RGB", "CMYK") else img.convert("RGB")
  elif img.mode not in _PNG_MODES:
    img = img.convert("RGBA")
  buf = io.BytesIO()
  img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buf.getvalue()


def record_image(data: bytes, where: str, *, max_pixels: int = MAX_PIXELS,
                 max_side: int | None = None) -> tuple[bytes, tuple[int, int]]:
  """Checked image bytes for a record (PNG or JPEG) and their size.

  PNG/JPEG within `max_side` are stored byte-for-byte; WebP/GIF/BMP become PNG; larger images are
  downscaled (Lanczos, aspect kept) to `max_side` on the long side, keeping JPEG as JPEG.
  """
  img = load_image(data, where, max_pixels=max_pixels)
  fmt = img.format
  if max_side and max(img.size) > max_side:
    if img.mode == "P" or img.mode == "1":  # palette/bilevel resize is nearest-neighbour in PIL
      img = img.convert("RGBA" if "transparency" in img.info else ("L" if img.mode == "1" else "RGB"))
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
  elif fmt in _KEEP_FORMATS:
    return bytes(data), img.size
  return _encode(img, "JPEG" if fmt == "JPEG" else "PNG"), img.size


# C0/C1 control characters and other non-printing code points, minus ordinary whitespace.
_KEEP_WS = frozenset("\t\n")


def clean_text(raw: bytes | str, field: str, *, required: bool = False) -> str | None:
  """UTF-8 strict, NFC, control characters removed, whitespace trimmed.

  Returns None for a text that is empty after cleaning (the caller drops the field), unless
  `required`, when that is BadItem('empty text in <field>').
  """
  if isinstance(raw, (bytes, bytearray)):
    try:
      raw = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadItem(f"text not UTF-8 in {field} (byte {e.start})") from e
  elif not isinstance(raw, str):
    raise BadItem(f"text in {field} is {type(raw).__name__}, not str")
  text = unicodedata.normalize("NFC", raw.removeprefix("\ufeff"))
  # Category C* = control, format, surrogate, private use, unassigned: none belongs in a caption.
  # \r is dropped (CRLF -> LF); tabs and newlines turn into spaces below.
  text = "".join(ch for ch in text if ch in _KEEP_WS or not unicodedata.category(ch).startswith("C"))
  text = " ".join(text.split())
  if not text:
    if required:
      raise BadItem(f"empty text in {field}")
    return None
  return text


def safe_member_name(name: str) -> bool:
  """False for archive member names that could escape an extraction directory."""
  if not name or "\x00" in name or name.startswith(("/", "\\")) or "\\" in name:
    return False
  if len(name) > 1 and name[1] == ":":  # Windows drive letter
    return False
  parts = posixpath.normpath(name).split("/")
  return ".." not in name.split("/") and ".." not in parts


def safe_member(member: tarfile.TarInfo) -> str | None:
  """Why a tar member must not be read, or None when it is a regular file with a safe name."""
  if not safe_member_name(member.name):
    return f"unsafe member name {member.name!r}"
  if member.issym() or member.islnk():
    return f"link member {member.name!r} -> {member.linkname!r}"
  if not member.isfile():
    return f"special member {member.name!r} (type {member.type!r})"
  return None
