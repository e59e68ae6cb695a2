"""Training data and training of the MMLE gain regressor (AdaDiffSR §3.2: frozen diffusion model, synthetic
Real-ESRGAN pairs, L2 loss).

Targets come from the teacher's own trajectory at the codebook's smallest interval (the finest steps DTSS may
take) on training regions: at every step the decoded x0 estimate is scored against the region's HQ crop
(``mmle.quality``) and the gains ``tanh(R_i − R_{i−1})`` are recorded with the regressor's inputs. The NR
gain is 0 in the first half of the trajectory, where the seed does not count NR metrics.

    data = gain_dataset(teacher, z_lq_regions, hq_regions, weights, cfg)      # one region per item
    reg, losses = train_regressor(data, latent_channels, cond_channels, steps=300, lr=1e-3, batch=64, seed=0)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from srcompress.models.adaptive.dtss import DTSSConfig, late
from srcompress.models.adaptive.mmle import GainRegressor, MetricWeights, gain, quality
from srcompress.models.adaptive.sampler import adaptive_restore
from srcompress.models.teachers.multistep import MultiStepTeacher

Tensor = torch.Tensor
INF = float("inf")


@torch.no_grad()
def gain_dataset(teacher: MultiStepTeacher, z_lq: Tensor, hq01: Tensor, weights: MetricWeights, cfg: DTSSConfig,
                 stlpips: Callable[[Tensor, Tensor], Tensor] | None = None, batch: int = 16) -> dict[str, Tensor]:
    """Regressor inputs and true gains along the finest trajectory of each region (``z_lq`` regions, ``hq01``
    their HQ crops). Keys: x0, dx0, cond, t_frac (inputs), gains (N, 2) (targets), t (timesteps), region (the
    index of the record's region in ``z_lq``)."""
    if hq01.shape[-1] != z_lq.shape[-1] * teacher.latent_factor:
        raise ValueError(f"HQ crops {tuple(hq01.shape)} do not match the regions {tuple(z_lq.shape)}")
    parts: dict[str, list[Tensor]] = {k: [] for k in ("x0", "dx0", "cond", "t_frac", "gains", "t", "region")}
    for start in range(0, len(z_lq), batch):
        zl, hq = z_lq[start : start + batch], hq01[start : start + batch]
        cond, _ = teacher._condition(zl)
        scores: dict[int, tuple[Tensor, Tensor]] = {}

        def score(x0: Tensor, rows: list[int]) -> tuple[Tensor, Tensor]:
            return quality(teacher.decode(x0), hq[rows], weights, stlpips)

        def record(idx: Tensor, x0: Tensor, x0_prev: Tensor, t: Tensor) -> Tensor:
            rows = idx.tolist()
            fr, nr = score(x0, rows)
            missing = [k for k, r in enumerate(rows) if r not in scores]
            if missing:
                pf, pn = score(x0_prev[missing], [rows[k] for k in missing])
                for n, k in enumerate(missing):
                    scores[rows[k]] = (pf[n], pn[n])
            prev_fr = torch.stack([scores[r][0] for r in rows])
            prev_nr = torch.stack([scores[r][1] for r in rows])
            g_fr = gain(fr, prev_fr)
            g_nr = torch.where(torch.tensor([late(int(v), cfg) for v in t]), gain(nr, prev_nr), torch.zeros_like(fr))
            for k, r in enumerate(rows):
                scores[r] = (fr[k], nr[k])
            parts["x0"].append(x0.cpu())
            parts["dx0"].append((x0 - x0_prev).cpu())
            parts["cond"].append(cond[idx].cpu())
            parts["t_frac"].append(t.float().cpu() / cfg.t_max)
            parts["t"].append(t.cpu())
            parts["region"].append(idx.cpu() + start)
            parts["gains"].append(torch.stack([g_fr, g_nr], 1).float())
            return torch.full((len(rows), 2), INF)  # keep the finest steps: this is a recording, not a decision

        adaptive_restore(teacher, zl, None, cfg, oracle=record)
    return {k: torch.cat(v) for k, v in parts.items()}


def train_regressor(data: dict[str, Tensor], latent_channels: int, cond_channels: int, steps: int, lr: float,
                    batch: int, seed: int, width: int = 32,
                    log: Callable[[int, float], None] | None = None) -> tuple[GainRegressor, list[float]]:
    """L2 regression of the recorded gains (AdaDiffSR: "L2 loss optimization"), Adam, cosine-decayed LR."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reg = GainRegressor(latent_channels, cond_channels, width)
    opt = torch.optim.Adam(reg.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    n, losses = len(data["gains"]), []
    for step in range(steps):
        i = torch.randint(0, n, (min(batch, n),), generator=g)
        pred = reg(data["x0"][i], data["dx0"][i], data["cond"][i], data["t_frac"][i])
        loss = F.mse_loss(pred, data["gains"][i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        if log is not None:
            log(step, float(loss))
    return reg.eval().requires_grad_(False), losses


@torch.no_grad()
def regressor_error(reg: GainRegressor, data: dict[str, Tensor]) -> dict[str, float]:
    """Mean absolute error of the predicted gains, and of the zero predictor (what the regressor must beat)."""
    pred = reg(data["x0"], data["dx0"], data["cond"], data["t_frac"])
    err = (pred - data["gains"]).abs().mean(0)
    base = data["gains"].abs().mean(0)
    return {"mae_fr": float(err[0]), "mae_nr": float(err[1]), "mae_fr_zero": float(base[0]),
            "mae_nr_zero": float(base[1])}
