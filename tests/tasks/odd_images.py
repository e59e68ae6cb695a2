"""Builders of odd and broken image files, shared by the ingest and flow tests."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def photo(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth random RGB 'photo' (uint8)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def odd_files(size: int = 96) -> dict[str, bytes]:
    """name → bytes: every case the ingest must convert or quarantine."""
    rgb = photo(size, size + 32)
    good = Image.fromarray(rgb)
    jpg = encode(good, "JPEG", quality=95)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    ok16, png16 = cv2.imencode(".png", (rgb[..., ::-1].astype(np.uint16) * 257))
    okg16, gray16 = cv2.imencode(".png", (rgb[..., 0].astype(np.uint16) * 257))
    exif = good.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    return {
        "good.png": encode(good, "PNG"),
        "good.jpg": jpg,
        "gray.png": encode(good.convert("L"), "PNG"),
        "rgba.png": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "palette.gif": encode(good.convert("P"), "GIF"),
        "cmyk.jpg": encode(good.convert("CMYK"), "JPEG"),
        "rgb16.png": png16.tobytes(),
        "gray16.png": gray16.tobytes(),
        "rotated.jpg": encode(good, "JPEG", exif=exif.tobytes()),
        "truncated.jpg": jpg[: len(jpg) // 2],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "notes.txt": b"this is not an image\n",
        "empty.png": b"",
        "tiny.png": encode(Image.fromarray(photo(16, 16)), "PNG"),
    }


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root
