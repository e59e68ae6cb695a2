"""``srcompress upscale``: a published student or a teacher folder, any image size in, the x4 PNG that
``DiffusionSR`` computes out (8-bit), written atomically; a corrupt input fails by name and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srcompress.cli import app
from srcompress.models.student.student import build_student, load_student, save_student
from srcompress.models.student.tiny_vae import SeparableAutoencoderTiny, tiny_vae_config
from srcompress.models.teachers.loader import load_teacher, save_teacher
from srcompress.models.teachers.tiny import tiny_sd3_teacher
from srcompress.models.upscalers import DiffusionSR

W, H = 37, 23  # odd, non-square: x4 → 148x92, latent 38x24 after padding → 3x2 tiles of 16 (overlap 4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscale")
    teacher = tiny_sd3_teacher(seed=0, num_layers=4, latent_channels=8, head_dim=8, heads=2, vae_channels=(16, 32, 32),
                               tile=16, tile_overlap=4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # diffusers zero-inits adaLN and proj_out: random weights so the backbone matters
        for p in teacher.backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_teacher(teacher.eval(), root / "teacher")
    student = build_student(teacher, [1, 0, 1, 0], streamline=True)
    torch.manual_seed(2)
    student.vae = SeparableAutoencoderTiny(**tiny_vae_config(8, teacher.latent_factor, width=16, blocks=1)).eval()
    save_student(student, root / "student")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return root


def _expected(model, path, **kw) -> np.ndarray:
    lr = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        sr = DiffusionSR(model, scale=4, **kw)(lr)
    return (sr[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_student_folder_upscales_an_odd_image_exactly_as_diffusionsr(folders, tmp_path):
    out = tmp_path / "sr.png"
    res = CliRunner().invoke(app, ["upscale", "--model", str(folders / "student"), "--input", str(folders / "a.png"),
                                   "--output", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(out))
    assert got.shape == (4 * H, 4 * W, 3)
    assert np.array_equal(got, _expected(load_student(folders / "student"), folders / "a.png", color_fix="wavelet"))
    assert "6/6" in res.stderr  # the progress bar counted every latent tile
    assert [p.name for p in tmp_path.iterdir()] == ["sr.png"]  # no temp file left behind


def test_teacher_folder_several_inputs_into_a_folder(folders, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["upscale", "-m", str(folders / "teacher"), "-i", str(folders / "a.png"),
                                   "-i", str(folders / "b.png"), "-o", str(out), "--tile", "16", "--tile-overlap", "2",
                                   "--color-fix", "none", "--no-progress"])
    assert res.exit_code == 0, res.output
    a, b = (np.asarray(Image.open(out / f"{name}.png")) for name in ("a", "b"))
    assert a.shape == b.shape == (4 * H, 4 * W, 3) and not np.array_equal(a, b)
    assert np.array_equal(a, _expected(load_teacher(folders / "teacher"), folders / "a.png", tile=16, tile_overlap=2))


def test_several_inputs_and_a_folder_as_arguments(folders, tmp_path):
    """``upscale -i a.png b.png`` and folders: every image once, each as its own single-input run writes it."""
    src = tmp_path / "lr"
    src.mkdir()
    for name in ("c.png", "d.png"):
        (src / name).write_bytes((folders / "a.png").read_bytes())
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["upscale", "-m", str(folders / "teacher"), "-o", str(out), "--tile", "16",
                                   "--tile-overlap", "2", "--color-fix", "none", "--no-progress",
                                   "-i", str(folders / "a.png"), str(folders / "b.png"), str(src)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    expect = _expected(load_teacher(folders / "teacher"), folders / "a.png", tile=16, tile_overlap=2)
    for name in ("a", "c", "d"):  # c and d are copies of a
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), expect), name
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(app, ["upscale", "-m", str(folders / "teacher"), "-o", str(out), str(empty)])
    assert res.exit_code == 2 and "no images in this folder" in res.output
    res = CliRunner().invoke(app, ["upscale", "-m", str(folders / "teacher"), "-o", str(out)])
    assert res.exit_code == 2 and "no input" in res.output


def test_corrupt_input_is_named_and_nothing_is_written(folders, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes((folders / "a.png").read_bytes()[:60])  # a truncated PNG
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["upscale", "--model", str(folders / "student"), "--input", str(folders / "a.png"),
                                   "--input", str(bad), "--output", str(out), "--no-progress"])
    assert res.exit_code == 2
    assert str(bad) in res.output and "cannot decode" in res.output
    assert not out.exists()


def test_bad_arguments_fail_before_any_work(folders, tmp_path):
    runner = CliRunner()
    a, b = str(folders / "a.png"), str(folders / "b.png")
    cases = [(["--model", str(tmp_path)], "neither a student"),
             (["--model", str(folders / "student"), "--color-fix", "sharpen"], "--color-fix"),
             (["--model", str(folders / "student"), "--input", b, "--output", str(tmp_path / "x.png")], "output folder"),
             (["--model", str(folders / "student"), "--output", str(tmp_path / "x.jpg")], "PNG"),
             (["--model", str(folders / "student"), "--output", a], "overwrite its input")]
    for extra, msg in cases:
        args = ["upscale", "--input", a, "--output", str(tmp_path / "o.png"), "--no-progress"]
        res = runner.invoke(app, args + extra)
        assert res.exit_code == 2 and msg in res.output, (extra, res.output)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "x.png").exists()
