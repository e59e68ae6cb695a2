"""PEAM inside the pruned UNet decoder (models/student/peam.py): exact identity at start, the LQ phase reaches
the features, it sits where the mask pruned, it learns, and it round-trips through the student folder."""

from __future__ import annotations

import json

import pytest
import torch

from srcompress.models.student.peam import DecoderPEAM, StagePEAM, TokenPEAM, peam_blocks, peam_stages, phase_exchange
from srcompress.models.student.student import build_student, load_student, save_student
from srcompress.models.teachers.tiny import tiny_unet_teacher

DECODER = {"up_blocks.1.attentions.0", "up_blocks.1.attentions.1"}


def test_phase_exchange_keeps_amplitude_and_takes_the_guides_phase():
    """Pinned to numpy's FFT: |FFT(out)| = |FFT(h)| and angle(FFT(out)) = angle(FFT(guide)) (where the
    spectrum is Hermitian: a real guide's phase keeps the output real)."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    h, guide = torch.randn(1, 2, 8, 8, generator=g), torch.randn(1, 2, 8, 8, generator=g)
    out = phase_exchange(h, guide).double().numpy()
    fh, fg, fo = (np.fft.fft2(a, norm="ortho") for a in (h.double().numpy(), guide.double().numpy(), out))
    np.testing.assert_allclose(np.abs(fo), np.abs(fh), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(1j * np.angle(fo)), np.exp(1j * np.angle(fg)), atol=1e-3)


def test_stage_peam_is_exactly_the_identity_until_trained_and_then_uses_the_lq_phase():
    a = StagePEAM(8, 4)
    h, z_lq = torch.randn(2, 8, 8, 8), torch.randn(2, 4, 4, 4)  # the LQ latent at another resolution
    assert torch.equal(a(h, z_lq), h)
    ref = StagePEAM(8, 4)  # a reachable target: the same adapter with other (non-zero) weights
    with torch.no_grad():
        ref.fuse.weight.normal_(0, 0.1)
        target = ref(h, z_lq)
    opt = torch.optim.Adam(a.parameters(), 1e-2)
    losses = []
    for _ in range(100):
        loss = (a(h, z_lq) - target).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0] and a.lq_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():  # trained, the output now depends on the LQ input
        assert not torch.allclose(a(h, z_lq), a(h, torch.randn_like(z_lq)))


def test_peam_sits_at_the_pruned_decoder_stages_and_starts_as_the_student_without_it(tmp_path):
    t = tiny_unet_teacher(seed=0).eval()
    names = [n for n, _ in t.prunable_blocks()]
    mask = [0.0 if n in DECODER else 1.0 for n in names]
    assert peam_stages(names, DECODER, 2) == [1]
    assert peam_stages(names, {"mid_block.attentions.0"}, 2) == [1]  # decoder whole: its last stage
    assert peam_stages(["up_blocks.0.resnets.0", "up_blocks.2.attentions.1"], {"up_blocks.0.resnets.0"}, 3) == [0]
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    plain, peam = build_student(t, mask), build_student(t, mask, phase_adapter="peam")
    assert isinstance(peam.phase, DecoderPEAM) and peam.phase.stages == [1] and peam.phase_mode == "peam"
    with torch.no_grad():
        assert torch.equal(peam.restore_tile(z), plain.restore_tile(z))
        for p in peam.phase.parameters():  # trained weights: a different output, and the LQ latent matters
            p.copy_(torch.randn_like(p) * 0.1)
        moved = peam.restore_tile(z)
    assert not torch.allclose(moved, plain.restore_tile(z), atol=1e-4)
    save_student(peam, tmp_path / "s")
    back = load_student(tmp_path / "s")
    assert back.phase_mode == "peam" and back.phase.stages == [1] and back.describe()["phase_adapter"] == "peam"
    with torch.no_grad():
        assert torch.allclose(back.restore_tile(z), moved, atol=1e-6)
    meta = json.loads((tmp_path / "s" / "student.json").read_text())
    (tmp_path / "s" / "student.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "peam"}))
    with pytest.raises(ValueError, match="phase_adapter peam but no peam record"):
        load_student(tmp_path / "s")


def test_peam_blocks_follow_each_run_of_pruned_blocks():
    assert peam_blocks([0, 3], 4) == [0]            # blocks 1-2 pruned: after teacher block 0 (student 0)
    assert peam_blocks([1, 2], 4) == [0, 1]         # 0 pruned (at the start: the first kept), 3 pruned: after 2
    assert peam_blocks([0, 2, 4], 6) == [0, 1, 2]   # three runs
    assert peam_blocks([0, 1, 2], 3) == [2]         # nothing pruned: the last block


@pytest.mark.parametrize("form", ["image_only", "streamlined", "plain"])
def test_dit_peam_starts_as_the_student_without_it_and_round_trips(tmp_path, form):
    """SD3 students in each form: PEAM after the kept block before the pruned run, folded to the patch grid;
    exactly the identity before training; trained weights change the output and survive save / load."""
    from srcompress.models.teachers.tiny import tiny_sd3_teacher

    t = tiny_sd3_teacher(seed=0, num_layers=4, latent_channels=4, head_dim=8, heads=2, patch_size=2,
                         vae_channels=(16,), vae_norm_groups=1, vae_identity=True, tile=8).eval()
    kw = {"image_only": form == "image_only", "streamline": form != "plain"}
    plain, peam = build_student(t, [1, 0, 0, 1], **kw), build_student(t, [1, 0, 0, 1], phase_adapter="peam", **kw)
    assert isinstance(peam.phase, TokenPEAM) and peam.phase.stages == [0]
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(peam.restore_tile(z), plain.restore_tile(z))
        for p in peam.phase.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        moved = peam.restore_tile(z)
    assert not torch.allclose(moved, plain.restore_tile(z), atol=1e-4)
    save_student(peam, tmp_path / "s")
    back = load_student(tmp_path / "s")
    assert back.phase_mode == "peam" and back.phase.describe() == {"kind": "dit", "stages": [0], "lq_channels": 4}
    with torch.no_grad():
        assert torch.allclose(back.restore_tile(z), moved, atol=1e-5)


def test_peam_refuses_unknown_settings_and_stages():
    with pytest.raises(ValueError, match="one of"):
        build_student(tiny_unet_teacher(seed=0), [1] * 7, phase_adapter="pre")
    unet = tiny_unet_teacher(seed=0).backbone
    with pytest.raises(ValueError, match="decoder stages"):
        DecoderPEAM(unet, [5], 4)
