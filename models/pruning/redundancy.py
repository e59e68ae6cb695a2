"""Per-block redundancy scores of a one-step teacher, per image (docs/methods.md §6).

    scores = block_scores(teacher, z_lq, z_hq, sigmas=(0.25, 0.5, 0.75, 1.0))
    scores["block_influence"]          # (num_blocks, B): low = the block barely changes its input
    scores["pgp_cos"], scores["pgp_kl"] # (num_blocks, B): low = the block's output barely moves along the path
    scores["removal_l1"]               # (num_blocks, B): low = removing it alone changes the latent little
    scores["removal_psnr_y"]           # (num_blocks, B) dB vs the unpruned output: HIGH = removing it costs little
    importance(scores)                 # name → (num_blocks,) mean importance, higher = keep (signs unified)

- **Block influence** (ShortGPT; TinyFusion ``prune_by_score.py``): mean over tokens of 1 − cos(block input,
  block output), image stream, one forward on the LQ latent.
- **PGP-DiffSR Φ_cos and Ψ_KL** — *our adaptation*. PGP-DiffSR compares a block's outputs at adjacent steps
  of the sampling trajectory; a one-step teacher has no trajectory, so the backbone is evaluated along the
  straight path between the cached latents, z_σ = σ·z_LQ + (1 − σ)·z_HQ, at the σ grid, with the teacher's own
  fixed conditioning (timestep, prompt). For adjacent σ: Φ_cos = mean over tokens of 1 − cos(out_σi, out_σi+1);
  Ψ_KL = mean over tokens of KL(softmax(out_σi) ‖ softmax(out_σi+1)) with the softmax over **channels**
  (the axis the paper leaves open; recorded in every report). Both averaged over the adjacent pairs.
- **Removal sensitivity**: block j alone is skipped (mask m_j = 0, the exact identity); the change of the
  restored latent (mean |Δ|) and the drop of PSNR-Y of the decoded image against the unpruned teacher's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from srcompress.models.metrics import psnr_y
from srcompress.models.pruning.masked import DepthMasker

Tensor = torch.Tensor
SCORES = ("block_influence", "pgp_cos", "pgp_kl", "removal_l1", "removal_psnr_y")
# +1: a higher score means a more important block; −1: the opposite (PSNR of the output without the block).
IMPORTANCE_SIGN = {"block_influence": 1, "pgp_cos": 1, "pgp_kl": 1, "removal_l1": 1, "removal_psnr_y": -1}
PSNR_CAP_DB = 100.0  # identical outputs (a block that does nothing) would be +inf


def _tokens(x: Tensor) -> Tensor:
    """(B, N, C) tokens from a block tensor (SD3 blocks already are; UNet maps (B, C, H, W) → (B, HW, C))."""
    return x if x.dim() == 3 else x.flatten(2).transpose(1, 2)


def one_minus_cos(a: Tensor, b: Tensor) -> Tensor:
    """(B,) mean over tokens of 1 − cos along channels."""
    return (1 - F.cosine_similarity(_tokens(a).float(), _tokens(b).float(), dim=-1)).mean(-1)


def kl_channels(p: Tensor, q: Tensor) -> Tensor:
    """(B,) mean over tokens of KL(softmax(p) ‖ softmax(q)), softmax over channels."""
    lp, lq = F.log_softmax(_tokens(p).float(), -1), F.log_softmax(_tokens(q).float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).mean(-1)


@torch.no_grad()
def block_scores(teacher, z_lq: Tensor, z_hq: Tensor, sigmas: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                 masker: DepthMasker | None = None) -> dict[str, Tensor]:
    """Every score for every prunable block and every image of the batch: name → (num_blocks, B)."""
    if sorted(sigmas) != list(sigmas) or len(sigmas) < 2:
        raise ValueError(f"sigmas must be an increasing grid of at least 2 points, got {list(sigmas)}")
    masker = masker or DepthMasker(teacher)
    names = masker.names
    with teacher.capture() as feats:
        teacher.restore_tile(z_lq)
    influence = torch.stack([one_minus_cos(feats[n]["input"], feats[n]["output"]) for n in names])
    outs = []
    for s in sigmas:
        with teacher.capture() as f:
            teacher.restore_tile(s * z_lq + (1 - s) * z_hq)
        outs.append({n: f[n]["output"] for n in names})
    cos = torch.stack([torch.stack([one_minus_cos(a[n], b[n]) for a, b in zip(outs, outs[1:])]).mean(0)
                       for n in names])
    kl = torch.stack([torch.stack([kl_channels(a[n], b[n]) for a, b in zip(outs, outs[1:])]).mean(0)
                      for n in names])
    full = teacher.restore_tile(z_lq)
    ref = teacher.decode(full)
    l1, drop = [], []
    for j in range(len(names)):
        with masker.masked(masker.skipping(j)):
            z = teacher.restore_tile(z_lq)
        l1.append((z - full).abs().flatten(1).mean(1))
        drop.append(psnr_y(teacher.decode(z), ref).clamp(max=PSNR_CAP_DB))  # vs the unpruned teacher's output
    return {"block_influence": influence, "pgp_cos": cos, "pgp_kl": kl,
            "removal_l1": torch.stack(l1).float(), "removal_psnr_y": torch.stack(drop).float()}


def importance(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per score, the mean over images turned into "higher = more important" (num_blocks,)."""
    return {k: IMPORTANCE_SIGN[k] * v.float().mean(-1) for k, v in scores.items()}


def rank(values: Tensor) -> list[int]:
    """Block indices from least to most important (ascending importance; stable for ties)."""
    return [int(i) for i in torch.argsort(values, stable=True)]


def top_k_mask(values: Tensor, keep: int) -> Tensor:
    """Keep the ``keep`` most important blocks (a baseline mask)."""
    mask = torch.zeros(len(values))
    mask[rank(values)[len(values) - keep:]] = 1.0
    return mask
