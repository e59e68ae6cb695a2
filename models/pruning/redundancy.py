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
- **Multi-step teachers** (``teacher.kind == "multistep"``): Φ_cos and Ψ_KL as PGP-DiffSR defines them — a
  block's outputs at adjacent timesteps of the real sampling trajectory (the teacher's fixed-step sampler from
  its seeded noise, conditioned on z_LQ), averaged over the adjacent pairs; block influence is averaged over
  the trajectory's steps; removal runs the whole trajectory with the block skipped. No σ path, no z_HQ.
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
    if getattr(teacher, "kind", None) == "multistep":
        cos, kl, influence = trajectory_scores(teacher, z_lq, names)
        return {"block_influence": influence, "pgp_cos": cos, "pgp_kl": kl, **_removal(teacher, z_lq, masker)}
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
    return {"block_influence": influence, "pgp_cos": cos, "pgp_kl": kl, **_removal(teacher, z_lq, masker)}


def _removal(teacher, z_lq: Tensor, masker: DepthMasker) -> dict[str, Tensor]:
    full = teacher.restore_tile(z_lq)
    ref = teacher.decode(full)
    l1, drop = [], []
    for j in range(len(masker.names)):
        with masker.masked(masker.skipping(j)):
            z = teacher.restore_tile(z_lq)
        l1.append((z - full).abs().flatten(1).mean(1))
        drop.append(psnr_y(teacher.decode(z), ref).clamp(max=PSNR_CAP_DB))  # vs the unpruned teacher's output
    return {"removal_l1": torch.stack(l1).float(), "removal_psnr_y": torch.stack(drop).float()}


@torch.no_grad()
def trajectory_outputs(teacher, z_lq: Tensor, names: Sequence[str]) -> dict[str, list[dict[str, Tensor]]]:
    """name → per sampling step, the block's image-stream input and output along the teacher's trajectory."""
    from srcompress.models.teachers.base import image_stream

    seen: dict[str, list[dict[str, Tensor]]] = {n: [] for n in names}
    handles = []
    for n in names:
        def hook(module, args, kwargs, output, _n=n):
            inp = kwargs.get("hidden_states", args[0] if args else None)
            seen[_n].append({"input": inp.detach(), "output": image_stream(output).detach()})
        handles.append(teacher.block(n).register_forward_hook(hook, with_kwargs=True))
    try:
        teacher.trajectory(z_lq)
    finally:
        for h in handles:
            h.remove()
    return seen


def trajectory_scores(teacher, z_lq: Tensor, names: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """(Φ_cos, Ψ_KL, block influence), each (num_blocks, B), across the timesteps of the sampling trajectory."""
    seen = trajectory_outputs(teacher, z_lq, names)
    if teacher.steps < 2:
        raise ValueError("redundancy across timesteps needs a trajectory of at least 2 steps")
    outs = {n: [s["output"] for s in seen[n]] for n in names}
    cos = torch.stack([torch.stack([one_minus_cos(a, b) for a, b in zip(outs[n], outs[n][1:])]).mean(0)
                       for n in names])
    kl = torch.stack([torch.stack([kl_channels(a, b) for a, b in zip(outs[n], outs[n][1:])]).mean(0)
                      for n in names])
    influence = torch.stack([torch.stack([one_minus_cos(s["input"], s["output"]) for s in seen[n]]).mean(0)
                             for n in names])
    return cos, kl, influence


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
