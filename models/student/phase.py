"""Phase-exchange adapter — OUR REINTERPRETATION of PGP-DiffSR's PEAM (docs/methods.md §8.4); off by default.

The paper documents only the idea (no code): the restoration's Fourier amplitude with the LQ input's phase.
Our version acts in latent space on the restored latent ``z`` and the LQ latent ``z_lq``::

    A = |FFT2(z)|,  P = angle(FFT2(conv(z_lq))),  z_pe = IFFT2(A · e^{iP})
    out = z + fuse([z, z_pe])        # fuse: 1×1 conv, zero-initialised → the adapter starts as the identity

so adding it never changes a model before training. Flag: ``distill.phase_adapter``.
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


class PhaseExchangeAdapter(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.lq_proj = nn.Conv2d(channels, channels, 3, padding=1)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, z: Tensor, z_lq: Tensor) -> Tensor:
        dtype = z.dtype
        spec = torch.fft.fft2(z.float(), norm="ortho")
        phase = torch.angle(torch.fft.fft2(self.lq_proj(z_lq).float(), norm="ortho"))
        exchanged = torch.fft.ifft2(spec.abs() * torch.exp(1j * phase), norm="ortho").real.to(dtype)
        return z + self.fuse(torch.cat([z, exchanged], dim=1))
