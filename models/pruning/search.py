"""The module the depth-pruning search trains: the teacher under a learnable (or fixed) N:M depth mask, with
LoRA on the backbone (TinyFusion's recoverability; TinySR's search), docs/methods.md §7.

    model = MaskSearch(teacher, n=2, m=4, lora_rank=8, lora_alpha=8, targets=TINYSR_LORA_TARGETS)
    z0 = model(z_lq, tau=4.0, generator=g)          # one mask sampled per batch
    loss = (z0 - z_teacher).abs().mean()            # L1 to the cached teacher latent
    model.param_groups(lr, weight_decay, gate_lr_mult=10)   # LoRA / gates (no weight decay on the gates)

With ``fixed_mask`` the gates are not used (baselines and LoRA recovery of a given mask).
"""

from __future__ import annotations

import torch
from torch import nn

from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.pruning.masks import NMGumbelGates
from srcompress.models.pruning.targets import TINYSR_LORA_TARGETS


def add_lora(backbone: nn.Module, rank: int, alpha: int, targets: list[str], seed: int = 0) -> list[str]:
    """Inject peft LoRA layers in place (B = 0: the output is unchanged at start); freeze everything else.
    Returns the names of the trainable LoRA parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {n.rsplit(".", 1)[-1] for n, _ in backbone.named_modules()} | {n for n, _ in backbone.named_modules()}
    usable = [t for t in targets if any(name == t or name.endswith("." + t) for name in present)]
    if not usable:
        raise ValueError(f"none of the LoRA targets {targets} exists in the backbone")
    backbone.requires_grad_(False)
    torch.manual_seed(seed)  # LoRA A's init
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=usable, lora_dropout=0.0), backbone)
    names = [n for n, p in backbone.named_parameters() if "lora_" in n]
    for n, p in backbone.named_parameters():
        p.requires_grad_("lora_" in n)
    return names


class MaskSearch(nn.Module):
    def __init__(self, teacher: nn.Module, n: int, m: int, lora_rank: int = 8, lora_alpha: int = 8,
                 targets: list[str] | None = None, init: float = 0.02, scaling: float = 1e2, dynamic: bool = True,
                 expansion_corrosion: bool = True, ema: float = 0.999, fixed_mask: torch.Tensor | None = None,
                 seed: int = 0):
        super().__init__()
        self.teacher = teacher
        teacher.requires_grad_(False)
        self.lora_names = add_lora(teacher.backbone, lora_rank, lora_alpha, targets or TINYSR_LORA_TARGETS, seed) \
            if lora_rank > 0 else []
        self.masker = DepthMasker(teacher)
        self.gates = NMGumbelGates(self.masker.num_blocks, n, m, init, scaling, dynamic, expansion_corrosion, ema)
        if fixed_mask is not None:
            if fixed_mask.shape != (self.masker.num_blocks,):
                raise ValueError(f"mask for {len(fixed_mask)} blocks, the teacher has {self.masker.num_blocks}")
            self.gates.requires_grad_(False)
        self.register_buffer("fixed_mask", fixed_mask.float() if fixed_mask is not None else None)

    def lora_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.teacher.backbone.named_parameters() if "lora_" in n}

    def param_groups(self, lr: float, weight_decay: float, gate_lr_mult: float = 10.0) -> list[dict]:
        """TinyFusion: the gates get their own group, ``gate_lr_mult``× the LoRA lr, no weight decay."""
        lora = [p for n, p in self.teacher.backbone.named_parameters() if "lora_" in n]
        groups = [{"params": lora, "lr": lr, "weight_decay": weight_decay, "name": "lora"}] if lora else []
        if self.fixed_mask is None:
            groups.append({"params": list(self.gates.parameters()), "lr": lr * gate_lr_mult, "weight_decay": 0.0,
                           "name": "gates"})
        return groups

    def mask(self, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.fixed_mask if self.fixed_mask is not None else self.gates.sample(tau, generator)

    def forward(self, z_lq: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        with self.masker.masked(self.mask(tau, generator) if mask is None else mask):
            return self.teacher.restore_tile(z_lq)
