"""AdaDiffSR adaptive inference: the sampler against the fixed-step DDIM teacher, DTSS's rules, early exit,
per-region steps and their map, the MMLE gain and its regressor's cost."""

from __future__ import annotations

import math

import pytest
import torch

from srcompress.models.adaptive.dtss import DTSSConfig, decide
from srcompress.models.adaptive.mmle import GainRegressor, MetricWeights, gain, quality
from srcompress.models.adaptive.sampler import adaptive_restore, regions_of
from srcompress.models.efficiency import count_macs
from srcompress.models.teachers.tiny import tiny_multistep_teacher

CODEBOOK = DTSSConfig((50, 100, 150, 200))  # the seed's 5/10/15/20 scaled to a 20-step DDIM teacher


@pytest.fixture(scope="module")
def teacher():
    return tiny_multistep_teacher(seed=0, steps=20).eval()


def _z(teacher, b=2, size=32, seed=0):
    x = torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return teacher.encode(x)


def test_smallest_interval_everywhere_is_the_fixed_step_ddim_teacher(teacher):
    """No gains → every region takes the smallest interval, which is the fixed schedule's spacing: the adaptive
    sampler must then be diffusers' 20-step DDIM exactly (same noise, start, jumps and last step)."""
    z = _z(teacher)
    with torch.no_grad():
        fixed = teacher.restore_latent(z)
        ada, info = adaptive_restore(teacher, z, None, CODEBOOK)
    assert torch.allclose(ada, fixed, atol=1e-4 * fixed.abs().max())
    assert info.steps.tolist() == [[20], [20]] and info.unet_calls == 40


def test_dtss_rules():
    c = DTSSConfig()
    assert decide(0.1, 0.1, 400, c) == ("growth", 5)        # late, FR and NR rise
    assert decide(0.1, 0.1, 800, c) == ("stable", 10)       # early: NR not trusted yet
    assert decide(0.1, 0.0, 400, c) == ("stable", 10)       # FR moves strongly, NR flat
    assert decide(0.01, 0.0, 400, c) == ("stable", 15)
    assert decide(0.001, 0.0, 400, c) == ("stable", 20)
    assert decide(0.1, -0.01, 400, c) == ("saturated", None)  # NR drops past τ
    assert decide(0.1, -0.01, 600, c)[0] == "stable"        # … but only in the second half
    with pytest.raises(ValueError, match="increasing"):
        DTSSConfig((20, 15, 10, 5))
    short = DTSSConfig(t_max=200)  # a shorter trajectory: NR counts below t_max / 2
    assert decide(0.1, 0.1, 150, short)[0] == "stable" and decide(0.1, 0.1, 90, short)[0] == "growth"


def test_saturated_regions_exit_early_with_the_previous_estimate(teacher):
    """An oracle that reports an NR drop in the late half: the region stops at once and keeps the estimate of
    the step before; a region reported as growing takes the smallest steps all the way."""
    z = _z(teacher, b=1, size=64)
    seen = {}

    def oracle(idx, x0, x0_prev, t):
        g = torch.zeros(len(idx), 2)
        for k, r in enumerate(idx.tolist()):
            g[k] = torch.tensor([0.1, -0.1]) if r == 0 else torch.tensor([0.1, 0.1])
            seen.setdefault(r, []).append((int(t[k]), x0_prev[k].clone()))
        return g

    with torch.no_grad():
        out, info = adaptive_restore(teacher, z, None, CODEBOOK, region=8, overlap=4, oracle=oracle)
    steps = info.steps[0].tolist()
    assert len(steps) == len(regions_of(16, 16, 8, 4)) == 9
    # region 0: 951 → 901 (first step: smallest) → 801 … 501 (early: stable, FR moves > 4τ) → 401 saturated
    assert [t for t, _ in seen[0]] == [901, 801, 701, 601, 501, 401] and steps[0] == 7
    assert info.labels[0][0][-1] == "saturated" and all(lab != "saturated" for lab in info.labels[0][1])
    # region 1: the same until 401, then growth: 50-steps down to 1 (15 UNet calls against the fixed 20)
    assert steps[1] == 15 and info.labels[0][1][-2:] == ["growth", "growth"]
    # latent cells [0:4, 0:4] belong to region 0 only: its output there is the estimate before the exit
    kept = seen[0][-1][1]
    assert torch.allclose(out[0, :, :4, :4], kept[:, :4, :4], atol=1e-5)


def test_step_map_paints_each_regions_steps():
    from srcompress.models.adaptive.sampler import AdaptiveInfo

    info = AdaptiveInfo([(0, 0), (0, 4)], 4, torch.tensor([[2, 6]]))
    m = info.step_map(4, 8)
    assert m[0, 0, 0] == 2 and m[0, 0, 7] == 6 and m.shape == (1, 4, 8)


def test_gain_and_quality_orientation():
    """I = tanh(R_i − R_{i−1}) as the seed; a closer estimate scores a higher R_FR; a noisier one a lower R_NR."""
    assert torch.allclose(gain(torch.tensor([1.0]), torch.tensor([0.5])), torch.tensor([math.tanh(0.5)]))
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(1, 3, 64, 64, generator=g).clamp(0, 1)
    hq = torch.nn.functional.avg_pool2d(hq, 5, 1, 2)  # smooth content, so noise is what PIQE sees
    near = (hq + 0.02 * torch.randn(hq.shape, generator=g)).clamp(0, 1)
    far = (hq + 0.2 * torch.randn(hq.shape, generator=g)).clamp(0, 1)
    w = MetricWeights(fr={"psnr": 1.0, "ssim": 1.0}, nr={"piqe": 1.0})
    (fr_n, nr_n), (fr_f, nr_f) = quality(near, hq, w), quality(far, hq, w)
    assert fr_n > fr_f and nr_n > nr_f
    with pytest.raises(ValueError, match="unknown FR metric"):
        quality(near, hq, MetricWeights(fr={"ahiq": 1.0}))


def test_regressor_macs_match_torchs_flop_counter():
    reg = GainRegressor(4, 4, width=16)
    args = (torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16, 16), torch.zeros(1))
    assert reg.macs(16, 16) == pytest.approx(count_macs(lambda: reg(*args)), rel=0.01)
    out = reg(*args)
    assert out.shape == (1, 2) and out.abs().max() <= 1


def test_gain_dataset_records_the_finest_trajectory_with_true_gains(teacher):
    """One record per region and step after the first; FR gains are tanh of the change of R_FR between the
    recorded x0 estimates (recomputed here from the records), NR gains 0 in the first half."""
    from srcompress.models.adaptive.train import gain_dataset

    g = torch.Generator().manual_seed(0)
    z = _z(teacher, b=2, size=32)
    hq = torch.rand(2, 3, 32, 32, generator=g)
    w = MetricWeights(fr={"psnr": 1.0}, nr={"piqe": 1.0})
    data = gain_dataset(teacher, z, hq, w, CODEBOOK)
    assert len(data["gains"]) == 2 * 19 and data["x0"].shape == (38, 4, 8, 8)
    early = data["t"] >= 500
    assert early.any() and (data["gains"][early, 1] == 0).all() and (data["gains"][~early, 1] != 0).any()
    with torch.no_grad():
        r = [quality(teacher.decode(x[None]), hq[k % 2][None], w)[0] for k, x in enumerate(data["x0"])]
        r_prev = [quality(teacher.decode((x - d)[None]), hq[k % 2][None], w)[0]
                  for k, (x, d) in enumerate(zip(data["x0"], data["dx0"]))]
    want = torch.tanh(torch.cat(r) - torch.cat(r_prev)).float()
    assert torch.allclose(data["gains"][:, 0], want, atol=1e-4)


def test_regressor_learns_a_gain_signal():
    """On data whose gain is a function of the timestep and the size of the last change, the trained regressor
    beats the zero predictor several times over; with no training it does not."""
    from srcompress.models.adaptive.train import regressor_error, train_regressor

    g = torch.Generator().manual_seed(0)
    n = 256
    dx0 = torch.randn(n, 4, 8, 8, generator=g) * torch.rand(n, 1, 1, 1, generator=g)
    t_frac = torch.rand(n, generator=g)
    gains = torch.stack([torch.tanh(dx0.abs().mean((1, 2, 3)) * 2), torch.tanh(t_frac - 0.5)], 1)
    data = {"x0": torch.randn(n, 4, 8, 8, generator=g), "dx0": dx0, "cond": torch.randn(n, 4, 8, 8, generator=g),
            "t_frac": t_frac, "gains": gains}
    untrained, _ = train_regressor(data, 4, 4, steps=0, lr=1e-3, batch=64, seed=0)
    reg, losses = train_regressor(data, 4, 4, steps=300, lr=3e-3, batch=64, seed=0)
    e0, e = regressor_error(untrained, data), regressor_error(reg, data)
    assert e["mae_fr"] < e["mae_fr_zero"] / 3 and e["mae_nr"] < e["mae_nr_zero"] / 3
    assert e0["mae_fr"] > e["mae_fr"] * 2 and losses[-1] < losses[0]
