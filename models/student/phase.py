"""Phase-exchange adapter after the backbone — OUR REINTERPRETATION of PGP-DiffSR's PEAM (docs/methods.md §8.4).

The paper documents only the idea (no code): the restoration's Fourier amplitude with the LQ input's phase.
This variant (``distill.phase_adapter: post``) acts once, in latent space, on the restored latent ``z`` and the
LQ latent ``z_lq``::

    A = |FFT2(z)|,  P = angle(FFT2(conv(z_lq))),  z_pe = IFFT2(A · e^{iP})
    out = z + fuse([z, z_pe])        # fuse: 1×1 conv, zero-initialised → the adapter starts as the identity

It is ``peam.StagePEAM`` at the latent's own resolution and width; ``peam`` (the default reading of the
paper) puts the same exchange inside the pruned decoder stages instead.
"""

from __future__ import annotations

from srcompress.models.student.peam import StagePEAM


class PhaseExchangeAdapter(StagePEAM):
    def __init__(self, channels: int):
        super().__init__(channels, channels)
