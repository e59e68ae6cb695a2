"""Discriminators and the hinge GAN losses of stage 2 (docs/methods.md §9.2).

TinySR's stage 2 uses a projected discriminator: trainable heads on a *frozen* pretrained feature network
(DINO ViT-S/16, whose weights no package ships). Ours keeps the idea — frozen features, light trainable heads
per feature level — on the network that is available offline, the ST-LPIPS AlexNet trunk (stlpips-pytorch).
The choice is pluggable (``make_discriminator``): ``projected_stlpips`` or ``patch`` (a small PatchGAN with
spectral norm, trained from scratch). TinySR's DiffAugment and DINOv2 class conditioning are not reproduced.

    d = make_discriminator("projected_stlpips", trunk=perceptual_net(device))
    loss_d = d_hinge(d(real), d(fake.detach())); loss_g = g_hinge(d(fake))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm

Tensor = torch.Tensor


def d_hinge(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """mean(relu(1 − D(real))) + mean(relu(1 + D(fake))), summed over heads."""
    return sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits))


def g_hinge(fake_logits: list[Tensor]) -> Tensor:
    """−mean D(fake), summed over heads."""
    return sum(-f.mean() for f in fake_logits)


def _head(channels: int, width: int = 64) -> nn.Module:
    return nn.Sequential(spectral_norm(nn.Conv2d(channels, width, 1)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv2d(width, 1, 1)))


class ProjectedDiscriminator(nn.Module):
    """Frozen ST-LPIPS trunk (its scaling layer and AlexNet slices) → one trainable head per feature level."""

    def __init__(self, lpips: nn.Module, levels: tuple[int, ...] = (1, 2, 4), width: int = 64):
        super().__init__()
        # Frozen and outside the trainable tree's gradients; kept as a submodule so it moves with .to().
        self.trunk = lpips.requires_grad_(False).eval()
        with torch.no_grad():
            feats = self._features(torch.zeros(1, 3, 64, 64, device=next(lpips.parameters()).device))
        self.levels = levels
        self.heads = nn.ModuleList(_head(feats[i].shape[1], width) for i in levels)

    def _features(self, x01: Tensor) -> list[Tensor]:
        return list(self.trunk.net.forward(self.trunk.scaling_layer(x01 * 2 - 1)))

    def train(self, mode: bool = True) -> ProjectedDiscriminator:
        super().train(mode)
        self.trunk.eval()  # the frozen network never leaves eval mode
        return self

    def forward(self, x01: Tensor) -> list[Tensor]:
        feats = self._features(x01)
        return [head(feats[i]) for head, i in zip(self.heads, self.levels)]


class PatchDiscriminator(nn.Module):
    """A small PatchGAN (strided convs, spectral norm, LeakyReLU 0.2), trained from scratch."""

    def __init__(self, width: int = 32, layers: int = 3):
        super().__init__()
        mods, c = [], 3
        for i in range(layers):
            mods += [spectral_norm(nn.Conv2d(c, width * 2**i, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c = width * 2**i
        mods.append(spectral_norm(nn.Conv2d(c, 1, 3, padding=1)))
        self.net = nn.Sequential(*mods)

    def forward(self, x01: Tensor) -> list[Tensor]:
        return [self.net(x01 * 2 - 1)]


def make_discriminator(kind: str, trunk: nn.Module | None = None) -> nn.Module:
    if kind == "projected_stlpips":
        if trunk is None:
            raise ValueError("projected_stlpips needs the frozen ST-LPIPS network")
        return ProjectedDiscriminator(trunk)
    if kind == "patch":
        return PatchDiscriminator()
    raise ValueError(f"unknown discriminator {kind!r} (projected_stlpips | patch)")
