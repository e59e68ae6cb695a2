"""The bad-input corpus: every kind of odd or broken input gets its expected outcome and reason, in the degrade
step's quarantine report and in the evaluation's skipped list; nothing is lost, nothing crashes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.flows.evaluate import run_evaluation
from tests.tasks.odd_images import encode, odd_files, photo, write_folder

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_harness")]

# name → expected quarantine reason (substring); every other file is used, converted where noted below
QUARANTINED = {
    "truncated.jpg": "truncated or corrupt",
    "corrupt.png": "not an image",
    "notes.txt": "not an image",
    "empty.png": "empty file",
    "tiny.png": "smaller than the HQ crop",
    "page.png": "not an image",  # HTML saved with an image name
    "soi-only.jpg": "not an image",
    "float.tif": "32-bit float image",
    "strip.png": "smaller than the HQ crop",  # 400x40: one side too short
    "bomb.png": "exceeds data.max_pixels=100000",
    "huge.bin": "data.max_file_mb",
    "dangling.png": "broken symbolic link",
    "loop-a.png": "symbolic link loop",
    "fifo.png": "not a regular file (FIFO)",
    "folder.png": "symbolic link to a folder",
}
CONVERTED = {"gray.png": "gray → RGB", "rgba.png": "alpha composited", "palette.gif": "P → RGB",
             "cmyk.jpg": "CMYK → RGB", "rgb16.png": "16-bit → 8-bit", "gray16.png": "16-bit → 8-bit",
             "rotated.jpg": "EXIF orientation", "anim.gif": "first frame of 2"}


def corpus(root: Path) -> Path:
    files = odd_files(96)
    files["page.png"] = b"<!doctype html><html><body>not a picture</body></html>"
    files["soi-only.jpg"] = b"\xff\xd8"
    files["float.tif"] = encode(Image.fromarray(np.random.default_rng(0).random((96, 128), np.float32), "F"), "TIFF")
    files["strip.png"] = encode(Image.fromarray(photo(40, 400)), "PNG")
    files["bomb.png"] = encode(Image.fromarray(photo(400, 400, seed=3)), "PNG")  # 160000 px > max_pixels
    files["huge.bin"] = os.urandom(700_000)  # > max_file_mb
    frames = [Image.fromarray(photo(96, 128, seed=s)) for s in (4, 5)]
    buf = __import__("io").BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    files["anim.gif"] = buf.getvalue()
    write_folder(root, files)
    (root / "copy.png").write_bytes(files["good.png"])  # duplicate content
    (root / "dangling.png").symlink_to(root / "does-not-exist.png")
    (root / "loop-a.png").symlink_to(root / "loop-b.png")
    (root / "loop-b.png").symlink_to(root / "loop-a.png")
    os.mkfifo(root / "fifo.png")
    (root / "real-folder").mkdir()
    (root / "folder.png").symlink_to(root / "real-folder", target_is_directory=True)
    (root / ".hidden.png").write_bytes(b"ignored by convention")
    return root


def test_degrade_quarantines_every_bad_kind_with_its_reason(tmp_path):
    folder = corpus(tmp_path / "hr")
    assert len(QUARANTINED) + len(CONVERTED) >= 20
    cfg = load_config("tiny", [f"data.source={folder}", "data.held_out=[]", "degrade.crop_size=64",
                               "degrade.crops_per_image=1", "data.max_pixels=100000", "data.max_file_mb=0.5"])
    m = run_pipeline(cfg, tmp_path / "w", until="degrade")["steps"]["degrade"]
    report = json.loads(Path(m["extra"]["quarantine_report"].removeprefix("file://")).read_text())
    reasons = {q["name"]: q["reason"] for q in report["quarantined"]}
    loops = {k for k in reasons if k.startswith("loop-")}
    assert set(reasons) - loops == set(QUARANTINED) - {"loop-a.png"} and loops  # both ends of the loop
    for name, why in QUARANTINED.items():
        got = reasons.get(name) or reasons[next(iter(loops))]
        assert why in got, (name, got)
    conversions = {c["name"]: " ".join(c["conversions"]) for c in report["converted"]}
    for name, what in CONVERTED.items():
        assert what in conversions[name], (name, conversions.get(name))
    assert report["duplicates"] == [["good.png", "copy.png"]] or report["duplicates"] == [["copy.png", "good.png"]]
    assert m["counts"]["sources"] == 2 + len(CONVERTED)  # good.png, good.jpg + the converted ones
    assert (folder / "fifo.png").exists() and (folder / "truncated.jpg").exists()  # nothing touched


def test_evaluate_skips_every_bad_kind_with_its_reason(tmp_path, monkeypatch):
    folder = corpus(tmp_path / "photos")
    for seed, name in enumerate(("tiny.png", "strip.png")):  # evaluation takes any size ≥ 8·scale: truly tiny
        (folder / name).write_bytes(encode(Image.fromarray(photo(16, 16, seed=seed + 7)), "PNG"))
    cfg = load_config("tiny", ["teacher.source=bootstrap", "evaluate.models=[bicubic]",
                               "evaluate.metrics=[psnr]", "evaluate.data.center_crop=64",
                               "evaluate.data.max_pixels=100000", "evaluate.data.max_file_mb=0.5",
                               "evaluate.efficiency.enabled=false"])
    res = run_evaluation(cfg, tmp_path / "w", str(folder))
    index = json.loads(Path(res["steps"]["eval_data"]["uri"].removeprefix("file://")).read_text())
    skipped = index["skipped"]
    expect = {"truncated.jpg": "truncated or corrupt", "corrupt.png": "not an image",
              "empty.png": "empty file", "page.png": "not an image", "soi-only.jpg": "not an image",
              "float.tif": "32-bit float", "bomb.png": "exceeds data.max_pixels=100000",
              "tiny.png": "too small", "dangling.png": "broken symbolic link", "fifo.png": "FIFO",
              "folder.png": "symbolic link to a folder"}
    for name, why in expect.items():
        assert why in skipped.get(name, ""), (name, skipped.get(name))
    assert any(k.startswith("loop-") and "loop" in v for k, v in skipped.items())
    dup = {k: v for k, v in skipped.items() if "duplicate of" in v}  # the same photo twice is scored once
    assert dup in ({"good.png": "duplicate of copy.png (same content)"}, {"copy.png": "duplicate of good.png (same content)"})
    table = Path(res["table"]).read_text()
    assert f"## Skipped inputs ({len(skipped)})" in table
