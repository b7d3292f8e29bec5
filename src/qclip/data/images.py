"""Image decoding with the checks a web-scale pipeline needs: truncation, bombs, odd modes, tiny images."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# PIL's own bomb check only warns below 2x its limit; we enforce our limit explicitly before decoding.
Image.MAX_IMAGE_PIXELS = None


class BadImage(ValueError):
    """An image that cannot be used; `reason` is the short name counted in summaries."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_KEEP_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def open_image(data: bytes, max_pixels: int = 64_000_000, min_side: int = 8) -> Image.Image:
    """Decode `data` fully into an RGB image or raise BadImage with a reason."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage("image too large", f"{w}x{h} > {max_pixels:,} pixels (decompression-bomb limit)")
            if min(w, h) < min_side:
                raise BadImage("image too small", f"{w}x{h}, minimum side {min_side}")
            img.load()  # forces a full decode: truncated files fail here, not later in a training worker
    except BadImage:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage("unreadable image", str(e)[:120]) from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode, scaling 16-bit and float images down instead of clipping them."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = (arr / (hi if hi > 0 else 1.0) * 255.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


def normalise_image_bytes(data: bytes, max_pixels: int = 64_000_000, min_side: int = 8) -> tuple[bytes, str, Image.Image]:
    """Validate an encoded image and return (bytes, extension, decoded RGB).

    8-bit RGB/greyscale JPEG, PNG and WebP keep their original bytes (no re-encoding loss); anything else
    (CMYK, 16-bit, palette with alpha, other formats) is re-encoded as RGB PNG so every reader decodes it alike.
    """
    rgb = open_image(data, max_pixels=max_pixels, min_side=min_side)
    with Image.open(io.BytesIO(data)) as probe:
        fmt, mode = probe.format, probe.mode
    if fmt in _KEEP_FORMATS and mode in ("RGB", "L"):
        return data, _KEEP_FORMATS[fmt], rgb
    return encode_png(rgb), "png", rgb


def encode_image(img: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    """An image (PIL or HxW[xC] uint8 array) as PNG / JPEG bytes."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def encode_png(img: Image.Image | np.ndarray, compress_level: int = 1) -> bytes:
    return encode_image(img, "PNG", compress_level=compress_level)


def encode_jpg(img: Image.Image | np.ndarray, quality: int = 92) -> bytes:
    return encode_image(img, "JPEG", quality=quality)
