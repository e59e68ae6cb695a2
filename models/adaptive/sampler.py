"""AdaDiffSR adaptive inference on a multi-step teacher: regions denoised independently, each with its own
step sizes (DTSS, driven by the MMLE regressor's gains), early exit of saturated regions, and the finished
regions stitched once, in latent space, with Gaussian weights (AdaDiffSR §3.1; docs/methods.md §12).

All regions of all images run as one batch with per-sample timesteps (the UNet takes a timestep per sample),
so a step costs one UNet call on the regions still active. Jumps of any length use the deterministic DDIM
update (``ddim_jump``), so the fixed-step DDIM teacher and the adaptive one share the noise, the x0
parameterisation and the schedule; only the step sizes differ.

    z_sr, info = adaptive_restore(teacher, z_lq, regressor, DTSSConfig((50, 100, 150, 200)), region=16, overlap=8)
    info.steps          # (B, n_regions) UNet evaluations per region; info.step_map(h, w) paints them
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from srcompress.models.adaptive.dtss import DTSSConfig, decide
from srcompress.models.adaptive.mmle import GainRegressor
from srcompress.models.teachers.multistep import MultiStepTeacher, ddim_jump
from srcompress.models.teachers.tiling import gaussian_weights, tile_starts

Tensor = torch.Tensor


@dataclass
class AdaptiveInfo:
    origins: list[tuple[int, int]]           # region origins in latent cells
    region: int
    steps: Tensor                            # (B, R) UNet evaluations per region
    labels: list[list[list[str]]] = field(default_factory=list)  # per image, per region: the label sequence
    unet_calls: int = 0                      # region-evaluations in total (Σ steps)
    regressor_calls: int = 0

    def step_map(self, h: int, w: int) -> Tensor:
        """(B, h, w) latent-resolution map of the steps each region took (overlaps: the mean)."""
        out = torch.zeros(self.steps.shape[0], h, w)
        cnt = torch.zeros(h, w)
        for r, (i, j) in enumerate(self.origins):
            out[:, i : i + self.region, j : j + self.region] += self.steps[:, r, None, None].float()
            cnt[i : i + self.region, j : j + self.region] += 1
        return out / cnt.clamp_min(1)


def regions_of(h: int, w: int, region: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping region origins covering an (h, w) latent; one region when it fits."""
    if h <= region and w <= region:
        return [(0, 0)]
    if h < region or w < region:
        raise ValueError(f"adaptive inference: latent {h}x{w} is smaller than the region {region} on one side")
    return [(i, j) for i in tile_starts(h, region, overlap) for j in tile_starts(w, region, overlap)]


@torch.no_grad()
def adaptive_restore(teacher: MultiStepTeacher, z_lq: Tensor, regressor: GainRegressor | None, cfg: DTSSConfig,
                     region: int | None = None, overlap: int = 8,
                     oracle=None) -> tuple[Tensor, AdaptiveInfo]:
    """Restore ``z_lq`` (B, C, H, W) with per-region adaptive step skipping. ``regressor`` predicts the gains;
    ``oracle(i_region_batch, x0, x0_prev, t) -> (B', 2)`` may stand in for it (true metrics, for training
    targets and the regressor-vs-metric ablation). Without either, every region takes the smallest interval."""
    b, _, h, w = z_lq.shape
    region = region or max(h, w)
    origins = regions_of(h, w, region, overlap)
    size = (min(region, h), min(region, w))  # one region smaller than ``region`` when the latent fits
    crops = torch.cat([z_lq[..., i : i + size[0], j : j + size[1]] for i, j in origins])  # (R·B, C, h', w')
    n = crops.shape[0]
    cond, labels_cls = teacher._condition(crops)
    a = teacher.alphas_cumprod.to(z_lq.device)
    # start where the fixed-step schedule starts (same noise level), end as DDIM ends (ᾱ_final)
    t_now = torch.full((n,), min(teacher.timestep, cfg.t_max - 1), dtype=torch.long)
    a_final = torch.as_tensor(getattr(teacher.scheduler, "final_alpha_cumprod", 1.0), dtype=a.dtype)
    z = teacher.initial(crops)
    x0_prev = torch.zeros_like(z)
    final = torch.zeros_like(z)
    active = torch.ones(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    history: list[list[str]] = [[] for _ in range(n)]
    info = AdaptiveInfo(origins, size[0], steps)
    first = True
    while active.any():
        idx = active.nonzero().flatten()
        t = t_now[idx]
        out = teacher.model_output(z[idx], t.to(z.device), cond[idx],
                                   labels_cls[idx] if labels_cls is not None else None)
        x0 = teacher.predict_x0(z[idx], t.to(z.device), out)
        steps[idx] += 1
        info.unet_calls += len(idx)
        if first:
            gains = torch.full((len(idx), 2), float("inf"))  # no trend yet: the smallest interval
        elif oracle is not None:
            gains = oracle(idx, x0, x0_prev[idx], t).float().cpu()
        elif regressor is not None:
            gains = regressor(x0, x0 - x0_prev[idx], cond[idx], t.float() / cfg.t_max).float().cpu()
            info.regressor_calls += len(idx)
        else:
            gains = torch.full((len(idx), 2), float("inf"))
        first = False
        for k, r in enumerate(idx.tolist()):
            g_fr, g_nr = float(gains[k, 0]), float(gains[k, 1])
            label, interval = ("growth", cfg.intervals[0]) if g_fr == float("inf") else \
                decide(g_fr, g_nr, int(t[k]), cfg)
            history[r].append(label)
            t_next = int(t[k]) - (interval or 0)
            if label == "saturated":  # keep the estimate before the step that lowered NR
                final[r], active[r] = x0_prev[r], False
            elif t_next < 0:          # the trajectory's end: DDIM's last jump, to ᾱ_final
                final[r], active[r] = ddim_jump(z[r], x0[k], a[t[k]], a_final), False
            else:
                z[r] = ddim_jump(z[r], x0[k], a[t[k]], a[t_next])
                t_now[r] = t_next
            x0_prev[r] = x0[k]
    # stitch the finished regions once (AdaDiffSR: only at the final timestep)
    weight = gaussian_weights(size[0]).to(z_lq) if len(origins) > 1 else torch.ones(size).to(z_lq)
    out = torch.zeros((b, final.shape[1], h, w), dtype=z_lq.dtype, device=z_lq.device)
    norm = torch.zeros((1, 1, h, w), dtype=z_lq.dtype, device=z_lq.device)
    for r, (i, j) in enumerate(origins):
        out[..., i : i + size[0], j : j + size[1]] += final[r * b : (r + 1) * b] * weight
        norm[..., i : i + size[0], j : j + size[1]] += weight
    info.steps = steps.view(len(origins), b).T.contiguous()
    info.labels = [[history[r * b + i] for r in range(len(origins))] for i in range(b)]
    return out / norm, info
