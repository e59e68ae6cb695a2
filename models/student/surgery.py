"""Block surgery: the kept blocks of a (LoRA-merged) SD3 teacher copied, by name, into a smaller model of the
teacher's own diffusers class (docs/methods.md §8.1).

    backbone = merge_lora(teacher.backbone, lora_state, rank=4, alpha=4)   # the search's LoRA, merged first
    student = prune_sd3(backbone, keep=[0, 2, 5, 7])                      # SD3Transformer2DModel(num_layers=4)

The student computes exactly what the masked teacher computes (mask 0 → the block is the identity): kept
blocks keep their weights and order. SD3's last block is ``context_pre_only`` (no context output); when the
teacher's last block is removed, the student's new last block is rebuilt pre-only and its context adaLN
becomes the ``AdaLayerNormContinuous`` of a pre-only block with the same (scale, shift) rows — the image
stream is unchanged, and the context stream after the last block is never used.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.*)$")


def merge_lora(backbone: nn.Module, state: dict[str, torch.Tensor], rank: int, alpha: int) -> nn.Module:
    """Merge peft LoRA tensors (``<module>.lora_A[.default].weight`` / ``lora_B``) into the Linear (and
    Conv2d) weights of ``backbone`` in place: W += (alpha / rank) · B @ A. Returns ``backbone``."""
    if not state or rank <= 0:
        return backbone
    modules = dict(backbone.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        m = re.match(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", name)
        if m is None:
            raise ValueError(f"not a LoRA tensor name: {name}")
        pairs.setdefault(m.group(1), {})[m.group(2)] = value
    scale = alpha / rank
    with torch.no_grad():
        for path, ab in pairs.items():
            target = modules.get(path)
            if not isinstance(target, (nn.Linear, nn.Conv2d)) or set(ab) != {"A", "B"}:
                raise ValueError(f"LoRA for {path!r} does not fit the backbone (module {type(target).__name__})")
            a, b = ab["A"].to(target.weight), ab["B"].to(target.weight)
            # Linear: B @ A; Conv2d (peft: A has the kernel, B is 1×1): B[:, :, 0, 0] @ A.flatten(1), reshaped
            delta = (b.flatten(1) @ a.flatten(1)).reshape(target.weight.shape) if a.dim() == 4 else b @ a
            if delta.shape != target.weight.shape:
                raise ValueError(f"LoRA for {path!r}: delta {tuple(delta.shape)} vs weight {tuple(target.weight.shape)}")
            target.weight.add_(delta, alpha=scale)
    return backbone


def kept_indices(mask: list[float] | torch.Tensor) -> list[int]:
    keep = [i for i, v in enumerate(torch.as_tensor(mask, dtype=torch.float32, device="cpu").tolist()) if v > 0.5]
    if not keep:
        raise ValueError("the mask keeps no block")
    return keep


def _pre_only_context_norm(key: str, value: torch.Tensor, dim: int) -> torch.Tensor:
    """AdaLayerNormZero rows (shift, scale, gate, …) → AdaLayerNormContinuous rows (scale, shift)."""
    if value.shape[0] == 2 * dim:
        return value
    shift, scale = value[:dim], value[dim : 2 * dim]
    return torch.cat([scale, shift])


def prune_sd3(transformer: nn.Module, keep: list[int]) -> nn.Module:
    """A new ``SD3Transformer2DModel`` with the blocks ``keep`` (teacher indices, ascending) of ``transformer``."""
    from diffusers import SD3Transformer2DModel

    n = len(transformer.transformer_blocks)
    if sorted(set(keep)) != list(keep) or not keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep must be ascending distinct block indices in [0, {n}), got {keep}")
    cfg = dict(transformer.config)
    dual = set(cfg.get("dual_attention_layers") or ())
    cfg.update(num_layers=len(keep), dual_attention_layers=tuple(i for i, k in enumerate(keep) if k in dual))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    student = SD3Transformer2DModel.from_config(cfg)
    dtype = next(transformer.parameters()).dtype
    if dtype != torch.float32:  # diffusers warns on a no-op .to(dtype)
        student = student.to(dtype=dtype)
    new_of = {k: i for i, k in enumerate(keep)}
    dim = transformer.inner_dim
    last_new = len(keep) - 1
    target = student.state_dict()
    out = {}
    for name, value in transformer.state_dict().items():
        m = _BLOCK.match(name)
        if m is None:
            out[name] = value
            continue
        old, rest = int(m.group(1)), m.group(2)
        if old not in new_of:
            continue
        new = new_of[old]
        key = f"transformer_blocks.{new}.{rest}"
        if key not in target:  # context parts a pre-only last block does not have
            continue
        if new == last_new and old != n - 1 and rest.startswith("norm1_context.linear."):
            value = _pre_only_context_norm(rest, value, dim)
        out[key] = value
    missing = set(target) - set(out)
    if missing:
        raise ValueError(f"block surgery left weights unset: {sorted(missing)[:5]}")
    student.load_state_dict(out, strict=True)
    return student.eval()
