"""Device settings and the inference knobs evaluation relies on: model-own tiling, seeded sample mode."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from srcompress.models.device import DeviceError, module_device, resolve_device
from srcompress.models.teachers.base import LatentConvention
from srcompress.models.teachers.tiny import tiny_sd3_teacher, tiny_unet_teacher
from srcompress.models.upscalers import DiffusionSR

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA = not torch.cuda.is_available()


def _lr(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match=r"evaluate\.device='gpu'"):
        resolve_device("gpu", "evaluate.device")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_device_is_an_error_naming_the_key():
    with pytest.raises(DeviceError, match=r"encode\.device='cuda:1': no CUDA device"):
        resolve_device("cuda:1", "encode.device")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cli_rejects_cuda_before_any_work(tmp_path):
    from srcompress.cli import app

    work = tmp_path / "w"
    res = CliRunner().invoke(app, ["run", "--config", "tiny", "--workdir", str(work), "--set", "run.device=cuda"])
    assert res.exit_code == 2 and "run.device='cuda': no CUDA device" in res.output
    assert not work.exists()  # no Prefect home, no MLflow db, no store


def test_model_code_is_device_generic():
    """No `.cuda()` literals or hard-coded device strings in models/ tasks/ flows/ (placement is a setting)."""
    bad = []
    for folder in ("models", "tasks", "flows"):
        for path in (ROOT / folder).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\.cuda\(|device=['\"]cuda", line):
                    bad.append(f"{path.relative_to(ROOT)}:{i}")
    assert not bad, bad


def test_teacher_and_upscaler_follow_the_model_device():
    t = tiny_sd3_teacher(tile=16).eval()
    up = DiffusionSR(t.to("cpu"), scale=4)
    assert module_device(t) == torch.device("cpu")
    with torch.no_grad():
        sr = up(_lr(12, 12))
    assert sr.device == torch.device("cpu") and sr.shape == (1, 3, 48, 48)


def test_evaluation_tiles_as_the_model_does():
    t = tiny_sd3_teacher(tile=16, tile_overlap=4, patch_size=2)
    own = DiffusionSR(t)  # default: "model"
    assert (own.tile, own.tile_overlap) == (16, 4)
    explicit = DiffusionSR(t, tile=64, tile_overlap=8)
    assert (explicit.tile, explicit.tile_overlap) == (16, 8)  # capped at the positional embedding
    x = torch.rand(1, 16, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the upscaler's latent step is exactly the teacher's own restore_latent
        from srcompress.models.teachers.tiling import tiled

        assert torch.equal(tiled(t.restore_tile, x, own.tile, own.tile_overlap), t.restore_latent(x))
    unet = tiny_unet_teacher()
    assert DiffusionSR(unet).tile is None and DiffusionSR(unet, tile="none").tile is None


def test_sample_mode_teachers_are_evaluable_and_seeded():
    t = tiny_sd3_teacher(tile=16).eval()
    t.convention = LatentConvention(t.convention.scaling_factor, 0.0, "sample")
    with pytest.raises(ValueError, match="seeded generator"):
        t(_lr(48, 48))
    with torch.no_grad():
        a = DiffusionSR(t, seed=0)(_lr(12, 12))
        b = DiffusionSR(t, seed=0)(_lr(12, 12))
        c = DiffusionSR(t, seed=1)(_lr(12, 12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert DiffusionSR(t, seed=3).describe()["latent_sampling"] == "posterior sample, seed 3"
