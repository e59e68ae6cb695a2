"""BK-SDM-style block surgery for SD-UNet teachers: the masked resnet / attention units removed from a smaller
``UNet2DConditionModel`` (the teacher's own class, so ``from_pretrained`` loads it), weights copied by name
(docs/methods.md §8.1).

    unet, report = prune_unet(teacher.backbone, masked={"mid_block.attentions.0", "down_blocks.1.resnets.1"})

A UNet is not a stack of interchangeable blocks: its structure lives in the config (block types, layers per
block, the mid-block type), so a mask over units (``UNetOneStepTeacher.prunable_blocks``) is realised as the
largest removal that config can express and that removes no unit the mask kept:

* **attentions** — when every remaining attention of a down / up block is masked, the block becomes its
  attention-free twin (``CrossAttnDownBlock2D`` → ``DownBlock2D``, ``CrossAttnUpBlock2D`` → ``UpBlock2D``);
  exact: a masked attention is the identity and the resnets and resamplers keep their names;
* **mid block** — all units masked → ``mid_block_type=None``; the attention and one resnet masked →
  ``UNetMidBlock2D`` with the other resnet (no attention); both exact;
* **down-block resnets** (BK-SDM's R-A pair removal) — a masked resnet whose attention, if it has one, is
  masked too leaves the block with it (``layers_per_block`` per block; a block keeps at least one). Lossy by
  design, as in BK-SDM: the block emits one skip connection fewer, so the mirrored up block loses one
  resnet/attention pair too — a middle one (the first and the last keep their shapes and weights), the
  pairs whose attention the mask removed first — and the student is distilled back. These structural
  removals may take out up-block units the mask kept; those are reported apart (``structural``).

Masked units the config cannot express (one attention of several, the mid attention alone, one mid-block
resnet while its attention is kept) stay in the student and are reported as ``unrealised``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from srcompress.models.teachers.unet import prunable_units

_UNIT = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")
_NO_ATTENTION = {"CrossAttnDownBlock2D": "DownBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}


def _per_block(value, n: int, name: str) -> list:
    if isinstance(value, int):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, int) for v in value):
        return list(value)
    raise ValueError(f"UNet surgery: unsupported {name}={value!r} (an int or one int per block)")


def prune_unet(unet: nn.Module, masked: set[str] | list[str]) -> tuple[nn.Module, dict]:
    """A new ``UNet2DConditionModel`` without the ``masked`` units (teacher names) that its config can drop.

    Returns the student (eval mode) and a report: ``removed`` (masked units gone), ``structural`` (units the
    mask kept that went with a down-block pair: its mirrored up-block pair), ``unrealised`` (masked units kept).
    Every masked unit is in ``removed`` or ``unrealised``."""
    from diffusers import UNet2DConditionModel

    masked = set(masked)
    stray = sorted(masked - {n for n, _ in prunable_units(unet)})
    if stray:
        raise ValueError(f"UNet surgery: not removable units (see UNetOneStepTeacher.prunable_blocks): {stray[:4]}")
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    n = len(unet.down_blocks)
    layers = _per_block(cfg["layers_per_block"], n, "layers_per_block")
    if cfg.get("reverse_transformer_layers_per_block") is not None:
        raise ValueError("UNet surgery: reverse_transformer_layers_per_block is not supported")
    removed, structural, unrealised = [], [], []
    down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    down_keep: dict[int, list[int]] = {}  # teacher resnet/attention index per kept student index
    for i, blk in enumerate(unet.down_blocks):
        has_attn = bool(getattr(blk, "attentions", None))
        pairs = {j: [f"down_blocks.{i}.resnets.{j}"] + ([f"down_blocks.{i}.attentions.{j}"] if has_attn else [])
                 for j in range(len(blk.resnets))}
        keep = [j for j, names in pairs.items() if not all(nm in masked for nm in names)]
        keep = keep or [0]  # a block keeps one resnet (its downsampler expects the block's width)
        removed += [nm for j, names in pairs.items() if j not in keep for nm in names]
        unrealised += [pairs[j][0] for j in keep if pairs[j][0] in masked]  # its attention is checked below
        down_keep[i] = keep
        layers[i] = len(keep)
    up_keep: dict[int, list[int]] = {}
    for u, blk in enumerate(unet.up_blocks):
        total, want = len(blk.resnets), layers[n - 1 - u] + 1
        has_attn = bool(getattr(blk, "attentions", None))
        # the middle resnets share one shape: any of them can go; those whose attention is masked first
        middle = sorted(range(1, total - 1), key=lambda j: (not (has_attn and f"up_blocks.{u}.attentions.{j}" in masked), -j))
        keep = sorted(set(range(total)) - set(middle[: total - want]))
        up_keep[u] = keep
        for j in sorted(set(range(total)) - set(keep)):
            for nm in [f"up_blocks.{u}.resnets.{j}"] + ([f"up_blocks.{u}.attentions.{j}"] if has_attn else []):
                (removed if nm in masked else structural).append(nm)
    drop_attn = {}
    for kind, blocks, types, kept in (("down_blocks", unet.down_blocks, down_types, down_keep),
                                      ("up_blocks", unet.up_blocks, up_types, up_keep)):
        for i, blk in enumerate(blocks):
            if not getattr(blk, "attentions", None):
                continue
            names = [f"{kind}.{i}.attentions.{j}" for j in kept[i]]
            if all(nm in masked for nm in names) and types[i] in _NO_ATTENTION:
                types[i] = _NO_ATTENTION[types[i]]
                drop_attn[(kind, i)] = True
                removed += names
            else:
                unrealised += [nm for nm in names if nm in masked]
    mid_map: dict[int, int] | None = None  # student mid resnet → teacher mid resnet; None = no mid block
    mid = unet.mid_block
    if mid is not None:
        units = [f"mid_block.resnets.{j}" for j in range(len(mid.resnets))]
        attns = [f"mid_block.attentions.{j}" for j in range(len(getattr(mid, "attentions", []) or []))]
        hit = [u for u in units + attns if u in masked]
        kept_res = [j for j, u in enumerate(units) if u not in masked]
        if len(hit) == len(units) + len(attns):
            cfg["mid_block_type"] = None
            removed += hit
        elif attns and all(a in masked for a in attns) and len(kept_res) == 1 and len(units) == 2:
            cfg["mid_block_type"] = "UNetMidBlock2D"
            mid_map = {0: kept_res[0]}
            removed += hit
        else:
            mid_map = {j: j for j in range(len(units))}
            unrealised += hit
    cfg.update(layers_per_block=tuple(layers), down_block_types=tuple(down_types), up_block_types=tuple(up_types))
    student = UNet2DConditionModel.from_config(cfg)
    dtype = next(unet.parameters()).dtype
    if dtype != torch.float32:
        student = student.to(dtype=dtype)
    out = _copy_by_name(unet.state_dict(), student.state_dict(), down_keep, up_keep, drop_attn, mid_map)
    student.load_state_dict(out, strict=True)
    report = {"removed": sorted(set(removed)), "structural": structural, "unrealised": sorted(set(unrealised))}
    return student.eval(), report


def _copy_by_name(src: dict, target: dict, down_keep, up_keep, drop_attn, mid_map) -> dict:
    out = {}
    mid_from = {t: s for s, t in (mid_map or {}).items()}  # teacher mid resnet → student mid resnet
    for name, value in src.items():
        m = _UNIT.match(name)
        if m is not None:
            kind, i, part, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            keep = (down_keep if kind == "down_blocks" else up_keep)[i]
            if j not in keep or (part == "attentions" and drop_attn.get((kind, i))):
                continue
            name = f"{kind}.{i}.{part}.{keep.index(j)}.{rest}"
        elif name.startswith("mid_block."):
            if mid_map is None:
                continue
            mm = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", name)
            if mm and mm.group(1) == "resnets":
                if int(mm.group(2)) not in mid_from:
                    continue
                name = f"mid_block.resnets.{mid_from[int(mm.group(2))]}.{mm.group(3)}"
            elif mm and len(mid_map) == 1:  # UNetMidBlock2D: no attention
                continue
        if name in target:
            if target[name].shape != value.shape:
                raise ValueError(f"UNet surgery: {name} is {tuple(target[name].shape)} in the student, "
                                 f"{tuple(value.shape)} in the teacher")
            out[name] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"UNet surgery left weights unset: {missing[:5]}")
    return out
