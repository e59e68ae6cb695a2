"""search.pgp's settings through the config: what each changes in the coarse plan and in a fine round
(tasks/search/progressive.py), on a UNet teacher built from config — no Ray, no DeepSpeed."""

from __future__ import annotations

import pytest
import torch

from srcompress.config import load_config
from srcompress.models.pruning.search import MaskSearch
from srcompress.models.teachers.tiny import tiny_unet_teacher
from srcompress.tasks.search.progressive import Rounds, coarse_plan


@pytest.fixture(scope="module")
def unet():
    return tiny_unet_teacher(seed=0).eval()  # 7 units: down pair, mid resnet-attention-resnet, 2 decoder attentions


def _report(names: list[str]) -> dict:
    """A report in which the mid attention is the most important unit and the first mid resnet the least."""
    imp = {n: 0.5 for n in names} | {"mid_block.attentions.0": 1.0, "mid_block.resnets.0": 0.1}
    return {"blocks": names, "sigmas": [0.5, 1.0],
            "scores": {"pgp_cos": {"mean": [imp[n] for n in names], "importance_sign": 1},
                       "pgp_kl": {"mean": [1.0 - imp[n] for n in names], "importance_sign": 1}}}


def _search(*sets: str):
    return load_config("tiny-unet", ["search.method=pgp_progressive", *sets]).search


def test_threshold_prune_per_round_and_score_change_the_plan(unet):
    names = [n for n, _ in unet.prunable_blocks()]
    base = coarse_plan(_report(names), _search("search.n=4"))
    assert base["coarse"]["pruned"] == ["mid_block.resnets.0", "mid_block.attentions.0"] and base["rounds"] == 1
    # the threshold keeps the mid attention too (its score is the highest): one more unit for the fine stage
    kept = coarse_plan(_report(names), _search("search.n=4", "search.pgp.coarse_threshold=1.0"))
    assert kept["coarse"]["pruned"] == ["mid_block.resnets.0"] and kept["rounds"] == 2
    assert coarse_plan(_report(names), _search("search.n=3"))["rounds"] == 2
    assert coarse_plan(_report(names), _search("search.n=3", "search.pgp.prune_per_round=2"))["rounds"] == 1
    kl = coarse_plan(_report(names), _search("search.n=4", "search.pgp.score=pgp_kl"))
    assert "mid_block.resnets.1" in kl["coarse"]["pruned"]  # Ψ_KL ranks the mid resnets the other way round
    with pytest.raises(ValueError, match="coarse stage alone keeps 3 outside the decoder"):
        coarse_plan(_report(names), _search("search.n=2"))
    with pytest.raises(Exception, match="search.pgp configures"):
        load_config("tiny", ["search.pgp.round_steps=5"])


def test_a_round_measures_on_rescore_size_pairs_and_prunes_prune_per_round_units(unet):
    names = [n for n, _ in unet.prunable_blocks()]
    g = torch.Generator().manual_seed(0)
    lq, hq = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    target = torch.randn(4, 4, 16, 16, generator=g)
    out = {}
    for size, per_round in ((2, 1), (4, 1), (4, 2)):
        cfg = _search("search.n=3", f"search.pgp.rescore_size={size}", f"search.pgp.prune_per_round={per_round}")
        plan = coarse_plan(_report(names), cfg)
        model = MaskSearch(unet, cfg.n, cfg.m, lora_rank=0, fixed_mask=torch.tensor(plan["mask"]))
        out[(size, per_round)] = Rounds(plan, cfg, names)._decide(model, lq, hq, target, torch.float32)
    assert out[(2, 1)]["recovered_l1"] != out[(4, 1)]["recovered_l1"]  # measured on 2 vs 4 pairs
    with torch.no_grad():  # the 2-pair figure is the first two pairs'
        model = MaskSearch(unet, 3, 7, lora_rank=0, fixed_mask=torch.tensor(plan["mask"]))
        l1 = float((model(lq[:2], mask=torch.tensor(plan["mask"])) - target[:2]).abs().mean())
    assert out[(2, 1)]["recovered_l1"] == pytest.approx(l1, rel=1e-6)
    assert len(out[(4, 1)]["pruned"]) == 1 and len(out[(4, 2)]["pruned"]) == 2
    assert all(n.startswith("up_blocks.") for r in out.values() for n in r["pruned"])
    with pytest.raises(ValueError, match="report's blocks are not the teacher's"):
        Rounds(plan, cfg, names[::-1])
