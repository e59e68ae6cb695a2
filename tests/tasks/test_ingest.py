"""Bad and odd inputs: converted where safe, rejected with a reason otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from srcompress.tasks.common.ingest import BadImage, check_size, decode_image
from tests.tasks.odd_images import odd_files, photo

FILES = odd_files(96)


@pytest.mark.parametrize("name, conversions", [
    ("good.png", []), ("good.jpg", []), ("gray.png", ["gray → RGB"]), ("rgba.png", ["alpha composited on white"]),
    ("palette.gif", ["P → RGB"]), ("cmyk.jpg", ["CMYK → RGB"]), ("rgb16.png", ["16-bit → 8-bit"]),
    ("gray16.png", ["16-bit → 8-bit", "gray → RGB"]), ("rotated.jpg", ["EXIF orientation applied"]),
])
def test_safe_conversions(name, conversions):
    dec = decode_image(FILES[name], max_pixels=10**8)
    assert dec.rgb.dtype == np.uint8 and dec.rgb.ndim == 3 and dec.rgb.shape[2] == 3
    assert dec.conversions == conversions


def test_conversions_are_faithful():
    ref = photo(96, 128)
    assert np.array_equal(decode_image(FILES["good.png"], 10**8).rgb, ref)
    assert np.array_equal(decode_image(FILES["rgb16.png"], 10**8).rgb, ref)  # x257 then /257 is exact
    gray = decode_image(FILES["gray16.png"], 10**8).rgb
    assert np.array_equal(gray[..., 0], ref[..., 0]) and np.array_equal(gray[..., 0], gray[..., 2])
    rgba = decode_image(FILES["rgba.png"], 10**8).rgb.astype(int)
    expected = (ref.astype(int) * 128 + 255 * 127) / 255  # alpha 128 over white
    assert np.abs(rgba - expected).max() <= 1
    rot = decode_image(FILES["rotated.jpg"], 10**8).rgb
    assert rot.shape[:2] == (128, 96)  # orientation 6 → transposed


@pytest.mark.parametrize("name, reason", [
    ("truncated.jpg", "truncated or corrupt"), ("corrupt.png", "truncated or corrupt|not an image"),
    ("notes.txt", "not an image"), ("empty.png", "empty file"),
])
def test_broken_files_are_rejected_with_a_reason(name, reason):
    with pytest.raises(BadImage, match=reason):
        decode_image(FILES[name], max_pixels=10**8)


def test_enormous_and_small_images():
    with pytest.raises(BadImage, match="exceeds data.max_pixels"):
        decode_image(FILES["good.png"], max_pixels=1000)
    dec = decode_image(FILES["tiny.png"], 10**8)
    with pytest.raises(BadImage, match="smaller than the HQ crop"):
        check_size(dec, 32)
    check_size(decode_image(FILES["good.png"], 10**8), 96)


def test_max_pixels_is_the_one_limit(monkeypatch):
    """data.max_pixels wins over Pillow's own guard in both directions, and reasons quote the config's number."""
    import pytest
    from PIL import Image

    from srcompress.tasks.common.ingest import BadImage, decode_image
    from tests.tasks.odd_images import encode, photo

    data = encode(Image.fromarray(photo(96, 128)), "PNG")  # 12288 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would call this a bomb
    assert decode_image(data, max_pixels=1_000_000).rgb.shape == (96, 128, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored
    with pytest.raises(BadImage, match=r"12288 pixels exceeds data\.max_pixels=5000"):
        decode_image(data, max_pixels=5000)
