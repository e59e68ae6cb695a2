"""PGP-DiffSR's progressive pruning rules (models/pruning/progressive.py) on a UNet and a DiT built from config."""

from __future__ import annotations

import pytest
import torch

from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.pruning.progressive import (block_stages, coarse_mask, fine_choice, fine_units,
                                                   masked_importance)
from srcompress.models.pruning.redundancy import block_scores
from srcompress.models.student.unet_surgery import prune_unet
from srcompress.models.teachers.tiny import tiny_sd3_teacher, tiny_unet_teacher


@pytest.fixture(scope="module")
def unet_teacher():
    """SD's layout, three stages, two layers per block: encoder stages with 2, 2 and 2 blocks (the second one's
    first resnet changes width, so its first block is the attention alone), a resnet-attention-resnet
    bottleneck, six decoder attentions."""
    return tiny_unet_teacher(seed=3, block_out_channels=(16, 32, 32), norm_groups=8, layers_per_block=2).eval()


def test_unet_stages_follow_the_unet(unet_teacher):
    names = [n for n, _ in unet_teacher.prunable_blocks()]
    st = block_stages(names, m=1)
    assert {n for n in names if st[n].part == "encoder"} == {n for n in names if n.startswith("down_blocks")}
    assert {n for n in names if st[n].part == "bottleneck"} == {n for n in names if n.startswith("mid_block")}
    assert {n for n in names if st[n].part == "decoder"} == {n for n in names if n.startswith("up_blocks")}
    # a down block's resnet and attention of one layer are one block
    assert st["down_blocks.0.resnets.1"].block == st["down_blocks.0.attentions.1"].block
    assert st["down_blocks.0.resnets.0"].block != st["down_blocks.0.resnets.1"].block
    # down_blocks.1's first resnet widens 16 → 32 channels: not a unit, and its block (the attention) anchored
    assert "down_blocks.1.resnets.0" not in names and st["down_blocks.1.attentions.0"].anchored
    assert not st["down_blocks.1.attentions.1"].anchored and not st["down_blocks.0.attentions.0"].anchored


@pytest.mark.parametrize("seed", range(5))
def test_coarse_stage_keeps_one_block_per_encoder_stage_and_bottleneck(unet_teacher, seed):
    """Whatever the scores: each encoder stage keeps exactly one block (its most important), the bottleneck one
    resnet and no attention, the decoder everything — and the student surgery realises that mask exactly."""
    names = [n for n, _ in unet_teacher.prunable_blocks()]
    st = block_stages(names, m=1)
    imp = torch.rand(len(names), generator=torch.Generator().manual_seed(seed))
    mask = coarse_mask(names, imp, st)
    kept = [n for n, v in zip(names, mask.tolist()) if v > 0.5]
    for stage in {st[n].key for n in names if st[n].coarse}:
        blocks = {st[n].block for n in kept if st[n].key == stage}
        assert len(blocks) == 1, (stage, kept)
        best = max((st[n].anchored, float(imp[i]), st[n].block) for i, n in enumerate(names)
                   if st[n].key == stage and st[n].block != "mid_block.attention")[2]
        assert blocks == {best}
    assert "mid_block.attentions.0" not in kept
    assert all(n in kept for n in names if st[n].part == "decoder")
    _, report = prune_unet(unet_teacher.backbone, {n for n in names if n not in kept})
    assert report["unrealised"] == []


def test_coarse_threshold_keeps_more_and_fine_rounds_only_touch_the_decoder(unet_teacher):
    names = [n for n, _ in unet_teacher.prunable_blocks()]
    st = block_stages(names, m=1)
    imp = torch.linspace(0.1, 1.0, len(names))
    one = coarse_mask(names, imp, st)
    assert coarse_mask(names, imp, st, threshold=1e-6).sum() == len(names)  # everything clears a tiny bar
    assert torch.equal(coarse_mask(names, imp, st, threshold=1.0), one)  # nothing but the top clears 1.0
    imp_dec = imp.clone()
    dec = [i for i, n in enumerate(names) if st[n].part == "decoder"]
    imp_dec[dec[3]], imp_dec[dec[1]] = -2.0, -1.0  # the two least important decoder units
    enc = next(i for i, n in enumerate(names) if st[n].part == "encoder" and one[i] > 0.5)
    mid = next(i for i, n in enumerate(names) if st[n].part == "bottleneck" and one[i] > 0.5)
    imp_dec[enc], imp_dec[mid] = -5.0, -4.0  # kept coarse-stage units less important still: never fine-pruned
    assert fine_choice(names, imp_dec, one, st, 2) == [names[dec[3]], names[dec[1]]]
    dropped = one.clone()
    dropped[dec[3]] = 0.0
    assert fine_choice(names, imp_dec, dropped, st, 1) == [names[dec[1]]]  # a pruned unit is not chosen again
    assert fine_units(names, dropped, st) == len(dec) - 1


def test_dit_stages_by_groups():
    st = block_stages([f"transformer_blocks.{i}" for i in range(24)], m=4)  # 6 groups, middle group 2
    parts = [st[f"transformer_blocks.{i}"].part for i in range(0, 24, 4)]
    assert parts == ["encoder", "encoder", "bottleneck", "decoder", "decoder", "decoder"]
    with pytest.raises(ValueError, match="must divide"):
        block_stages([f"transformer_blocks.{i}" for i in range(6)], m=4)
    with pytest.raises(ValueError, match="cannot place"):
        block_stages(["blocks.0"], m=1)


def test_masked_importance_is_the_reports_score_unmasked_and_zero_where_masked():
    """Unmasked, the re-score is the redundancy report's own Φ_cos / Ψ_KL (the function the analyse_redundancy
    step calls); a masked block scores 0 and the other blocks are scored on the pruned model."""
    teacher = tiny_sd3_teacher(seed=1, num_layers=4, latent_channels=4, patch_size=2).eval()
    g = torch.Generator().manual_seed(0)
    z_lq, z_hq = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    masker, sigmas = DepthMasker(teacher), [0.25, 0.5, 1.0]
    ref = block_scores(teacher, z_lq, z_hq, sigmas, masker)
    for score in ("pgp_cos", "pgp_kl"):
        got = masked_importance(teacher, masker, torch.ones(4), z_lq, z_hq, sigmas, score)
        torch.testing.assert_close(got, ref[score].mean(-1), rtol=1e-5, atol=1e-7)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    pruned = masked_importance(teacher, masker, mask, z_lq, z_hq, sigmas, "pgp_cos")
    assert pruned[1] == 0 and (pruned[[0, 2, 3]] > 0).all()
    assert pruned[0] == pytest.approx(float(ref["pgp_cos"][0].mean()), rel=1e-5)  # before the masked block
    assert abs(float(pruned[2]) - float(ref["pgp_cos"][2].mean())) > 1e-6  # after it: a different input
