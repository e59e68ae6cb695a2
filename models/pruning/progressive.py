"""PGP-DiffSR's progressive pruning (PPA): a coarse stage, then fine rounds on the decoder (docs/methods.md §7.3).

    stages = block_stages(names, m)                       # name → Stage("encoder", 0 | "bottleneck" | "decoder")
    mask = coarse_mask(names, importance, stages)         # one block per encoder stage and bottleneck
    drop = fine_choice(names, importance, mask, stages, k=1)   # the k least important live decoder units
    importance = masked_importance(teacher, masker, mask, z_lq, z_hq, sigmas, "pgp_cos")   # re-scored

PGP-DiffSR (paper, §3): adjacent-step feature changes are small in the encoder and the bottleneck, so each of
their stages collapses to one block; the decoder, whose features change more, is pruned in a finer second
stage. The paper's thresholds and schedule are not public; what follows is *our reading*, flagged as
``search.method: pgp_progressive``.

What a *stage* and a *block* are:
* **SD-UNet** — ``down_blocks.i`` is encoder stage i, ``mid_block`` the bottleneck, ``up_blocks.i`` decoder
  stage i. An encoder block is a resnet with its attention (BK-SDM's pair: the unit the student surgery removes
  from a down block), a bottleneck block is one of the mid block's resnets (keeping one drops the mid attention
  with the other resnet, which surgery realises as ``UNetMidBlock2D``). So the coarse stage's choice is always
  realisable. Decoder units are pruned one unit at a time.
* **DiT (SD3)** — no encoder or decoder: the blocks split into groups of ``m`` consecutive blocks; the groups
  before the middle group ``(G − 1) // 2`` are encoder stages, the middle group is the bottleneck, the groups
  after it are decoder stages (ours: the issue's "by groups of blocks").

Importance is "higher = keep" (``redundancy.importance``): a block whose features change little along the
path is redundant. A block's importance is its most important unit's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.pruning.redundancy import kl_channels, one_minus_cos

Tensor = torch.Tensor
SCORES = ("pgp_cos", "pgp_kl")
_UNET = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)$")
_DIT = re.compile(r"^transformer_blocks\.(\d+)$")


@dataclass(frozen=True)
class Stage:
    part: str   # encoder | bottleneck | decoder
    index: int  # the stage within its part
    block: str  # the block this unit belongs to (units of one block are kept or dropped together in the coarse stage)
    anchored: bool = False  # the block holds a unit no depth mask can remove (a width-changing resnet)

    @property
    def coarse(self) -> bool:
        return self.part in ("encoder", "bottleneck")

    @property
    def key(self) -> str:
        return f"{self.part}.{self.index}"


def block_stages(names: Sequence[str], m: int) -> dict[str, Stage]:
    """Every prunable unit's stage and block (UNet names by position, DiT blocks by groups of ``m``)."""
    if all(_DIT.match(n) for n in names):
        if len(names) % m:
            raise ValueError(f"pgp_progressive: search.m={m} must divide the {len(names)} transformer blocks")
        groups = len(names) // m
        middle = (groups - 1) // 2
        out = {}
        for n in names:
            g = int(_DIT.match(n).group(1)) // m
            part = "encoder" if g < middle else "bottleneck" if g == middle else "decoder"
            out[n] = Stage(part, g if part == "encoder" else 0 if part == "bottleneck" else g - middle - 1, n)
        return out
    out, present = {}, set(names)
    for n in names:
        if (u := _UNET.match(n)) is not None:
            kind, i, j = u.group(1), int(u.group(2)), int(u.group(4))
            if kind == "down_blocks":  # a resnet and its attention are one block
                # a stage's first resnet may change the width: not a unit, so its block can never go
                out[n] = Stage("encoder", i, f"down_blocks.{i}.pair.{j}",
                               anchored=f"down_blocks.{i}.resnets.{j}" not in present)
            else:
                out[n] = Stage("decoder", i, n)
        elif (u := _MID.match(n)) is not None:
            # the blocks are the resnets; the attention has no block of its own (it goes unless kept by threshold)
            out[n] = Stage("bottleneck", 0, n if u.group(1) == "resnets" else "mid_block.attention")
        else:
            raise ValueError(f"pgp_progressive: cannot place block {n!r} in an encoder, bottleneck or decoder")
    return out


def coarse_mask(names: Sequence[str], importance: Tensor, stages: dict[str, Stage],
                threshold: float | None = None) -> Tensor:
    """Keep one block per encoder stage and per bottleneck — its most important — and every decoder unit.
    A stage whose first block changes the width keeps that block (surgery cannot remove its resnet).

    ``threshold``: a coarse-stage block whose importance is at least this fraction of the largest block
    importance in the backbone is kept too. The bottleneck's attention is never a block of its own: it is kept
    only when the threshold keeps it."""
    imp = {n: float(v) for n, v in zip(names, importance.tolist(), strict=True)}
    blocks: dict[str, dict[str, float]] = {}  # stage key → block → importance
    anchored: dict[str, set[str]] = {}  # stage key → blocks that cannot go (then the stage's one block)
    for n in names:
        st = stages[n]
        if st.coarse:
            blocks.setdefault(st.key, {})
            blocks[st.key][st.block] = max(blocks[st.key].get(st.block, float("-inf")), imp[n])
            if st.anchored:
                anchored.setdefault(st.key, set()).add(st.block)
    top = max(imp.values())
    keep_blocks: set[str] = set()
    for key, members in blocks.items():
        candidates = {b: v for b, v in members.items() if b != "mid_block.attention"} or members
        if key in anchored:
            candidates = {b: v for b, v in candidates.items() if b in anchored[key]}
        keep_blocks.add(max(candidates, key=lambda b: (candidates[b], b)))
        if threshold is not None:
            keep_blocks |= {b for b, v in members.items() if v >= threshold * top}
    return torch.tensor([1.0 if not stages[n].coarse or stages[n].block in keep_blocks else 0.0 for n in names])


def fine_choice(names: Sequence[str], importance: Tensor, mask: Tensor, stages: dict[str, Stage], k: int) -> list[str]:
    """The ``k`` least important decoder units the mask still keeps (fewer if fewer are left)."""
    live = [(float(importance[i]), n) for i, n in enumerate(names) if mask[i] > 0.5 and stages[n].part == "decoder"]
    return [n for _, n in sorted(live)[:k]]


def fine_units(names: Sequence[str], mask: Tensor, stages: dict[str, Stage]) -> int:
    """How many decoder units the mask still keeps (what the fine stage can prune)."""
    return sum(1 for i, n in enumerate(names) if mask[i] > 0.5 and stages[n].part == "decoder")


@torch.no_grad()
def masked_importance(teacher, masker: DepthMasker, mask: Tensor, z_lq: Tensor, z_hq: Tensor,
                      sigmas: Sequence[float], score: str) -> Tensor:
    """PGP's Φ_cos or Ψ_KL of every block of the *pruned* model (under ``mask``, LoRA and all), averaged over
    the adjacent σ pairs of the path z_σ = σ·z_LQ + (1 − σ)·z_HQ and the images (``redundancy.block_scores``'s
    one-step adaptation): (num_blocks,), higher = more important. Masked blocks score 0 (their output is their
    input's)."""
    if score not in SCORES:
        raise ValueError(f"pgp_progressive scores blocks by {SCORES}, not {score!r}")
    fn = one_minus_cos if score == "pgp_cos" else kl_channels
    outs = []
    with masker.masked(mask):
        for s in sigmas:
            # registered after the masker's hooks: records the blended output (the input, for a masked block)
            with teacher.capture(masker.names) as feats:
                teacher.restore_tile(s * z_lq + (1 - s) * z_hq)
            outs.append({n: feats[n]["output"] for n in masker.names})
    values = torch.stack([torch.stack([fn(a[n], b[n]) for a, b in zip(outs, outs[1:])]).mean() for n in masker.names])
    return torch.where(mask.to(values.device) > 0.5, values, torch.zeros_like(values))
