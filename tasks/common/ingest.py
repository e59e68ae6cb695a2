"""Decode and validate one source image: convert what is safe to convert, reject the rest with a reason.

Safe conversions (each recorded on the pair): gray → RGB, palette → RGB, CMYK → RGB, alpha dropped by
compositing over white, 16-bit → 8-bit (÷257, rounded), EXIF orientation applied, first frame of an
animation. Rejections (quarantine): empty, not an image, truncated/corrupt, float images (unknown range),
more pixels than ``max_pixels``, smaller than the HQ crop.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_PNG_SIG = b"\x89PNG\r\n\x1a\n"


class BadImage(ValueError):
    """The file cannot be used; ``str(exc)`` is the quarantine reason."""


@dataclass
class Decoded:
    rgb: np.ndarray  # (H, W, 3) uint8
    conversions: list[str] = field(default_factory=list)
    source_format: str = ""


def _png_16bit(data: bytes) -> bool:
    # IHDR starts at byte 8: length(4) "IHDR"(4) width(4) height(4) bit depth(1) → byte 24
    return data[:8] == _PNG_SIG and len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 16


def _decode_png16(data: bytes) -> Decoded:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise BadImage("truncated or corrupt 16-bit PNG")
    conv = ["16-bit → 8-bit"]
    arr = arr.astype(np.float64)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
        conv.append("gray → RGB")
    else:
        if arr.shape[2] == 4:
            alpha = arr[..., 3:4] / 65535.0
            arr = arr[..., :3] * alpha + 65535.0 * (1 - alpha)
            conv.append("alpha composited on white")
        arr = arr[..., ::-1]  # cv2 decodes BGR
    rgb = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
    return Decoded(np.ascontiguousarray(rgb), conv, "PNG")


_OPEN_LOCK = threading.Lock()


def _open_header(data: bytes) -> Image.Image:
    """``Image.open`` (header only) with Pillow's own pixel guard lifted: ``max_pixels`` — checked by the caller
    before anything is decoded — is the one limit in force, and reasons quote it, not Pillow's number."""
    with _OPEN_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def decode_image(data: bytes, max_pixels: int) -> Decoded:
    """Bytes → RGB uint8 array, or ``BadImage`` with a human-readable reason."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open_header(data)
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(f"{w}x{h} = {w * h} pixels exceeds data.max_pixels={max_pixels}")
            if _png_16bit(data):
                return _decode_png16(data)
            fmt = img.format or ""
            conv: list[str] = []
            if getattr(img, "n_frames", 1) > 1:
                conv.append(f"first frame of {img.n_frames}")
            img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression-bomb guard: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"truncated or corrupt image data: {exc}") from None

    if img.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation tag says "rotate/flip me"
        img = ImageOps.exif_transpose(img)
        conv.append("EXIF orientation applied")
    mode = img.mode
    if mode == "F":
        raise BadImage("32-bit float image: intensity range unknown")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        arr = np.clip(np.round(arr / (peak / 255.0)), 0, 255).astype(np.uint8)
        conv += (["16-bit → 8-bit"] if peak > 255 else []) + ["gray → RGB"]
        return Decoded(np.repeat(arr[..., None], 3, axis=2), conv, fmt)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba).convert("RGB")
        conv.append("alpha composited on white")
    elif mode in ("L", "1"):
        img = img.convert("RGB")
        conv.append("gray → RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
        conv.append(f"{mode} → RGB")
    rgb = np.asarray(img, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise BadImage(f"unexpected decoded shape {rgb.shape}")
    return Decoded(np.ascontiguousarray(rgb), conv, fmt)


def check_size(dec: Decoded, crop_size: int) -> None:
    h, w = dec.rgb.shape[:2]
    if min(h, w) < crop_size:
        raise BadImage(f"{w}x{h} is smaller than the HQ crop {crop_size}x{crop_size}")
