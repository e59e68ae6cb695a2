"""A depth mask on a teacher's prunable blocks: block j computes ``m_j·f_j(x) + (1 − m_j)·x`` (docs/methods.md §7).

    masker = DepthMasker(teacher)                      # hooks on teacher.prunable_blocks()
    with masker.masked(mask):                          # mask: (num_blocks,) — 0/1, or differentiable samples
        z0 = teacher.restore_latent(z_lq)

For SD3 blocks the blend applies to the image stream and the context stream (TinyFusion / TinySR), except
the context of the last, ``context_pre_only`` block, which has no context output. ``m_j = 0`` makes block j
exactly the identity (``0·f + 1·x == x`` in floating point), which is also how removal sensitivity "skips"
a block. UNet units (resnets / attentions) blend their single output with their input; attentions return a
1-tuple ``(sample,)`` inside diffusers' blocks, which is blended too (a masked attention used to pass through
unchanged). Only units whose output has their input's shape are prunable (``UNetOneStepTeacher.prunable_blocks``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

Tensor = torch.Tensor


def _blend(m: Tensor, out, inp):
    if out is None or inp is None:
        return out
    if isinstance(out, Tensor) and isinstance(inp, Tensor) and out.shape == inp.shape:
        return m * out + (1 - m) * inp
    return out


class DepthMasker:
    """Forward hooks that blend each prunable block's output with its input by the current mask value."""

    def __init__(self, teacher: nn.Module):
        self.names = [n for n, _ in teacher.prunable_blocks()]
        self.blocks = [b for _, b in teacher.prunable_blocks()]
        self.mask: Tensor | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def _hook(self, index: int):
        def hook(module, args, kwargs, output):
            if self.mask is None:
                return output
            m = self.mask[index]
            hs_in = kwargs.get("hidden_states", args[0] if args else None)
            if isinstance(output, tuple) and len(output) == 2:  # SD3: (context, image)
                ctx_in = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
                return _blend(m, output[0], ctx_in), _blend(m, output[1], hs_in)
            if isinstance(output, tuple) and len(output) == 1:  # UNet attentions (return_dict=False): (sample,)
                return (_blend(m, output[0], hs_in),)
            if hasattr(output, "sample") and isinstance(output.sample, Tensor):  # a diffusers output object
                output.sample = _blend(m, output.sample, hs_in)
                return output
            return _blend(m, output, hs_in)
        return hook

    @contextlib.contextmanager
    def masked(self, mask: Tensor) -> Iterator[None]:
        """Run forwards under ``mask`` (num_blocks,) on the blocks' device and dtype."""
        if mask.shape != (self.num_blocks,):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, the teacher has {self.num_blocks} prunable "
                             f"blocks")
        p = next(self.blocks[0].parameters())
        self.mask = mask.to(device=p.device, dtype=p.dtype)
        handles = [b.register_forward_hook(self._hook(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self.mask = None

    def skipping(self, index: int) -> Tensor:
        """The mask that removes block ``index`` alone."""
        mask = torch.ones(self.num_blocks)
        mask[index] = 0.0
        return mask
