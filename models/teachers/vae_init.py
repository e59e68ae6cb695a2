"""A latent-factor-4 ``AutoencoderKL`` built in minutes on a CPU: an exact PCA encoder and a decoder whose linear
path is fitted first, then copied into the diffusers decoder (``vae_init: pca`` of the bootstrapped teacher).

Why a construction: a tiny ``AutoencoderKL`` trained from scratch on a CPU stays far below what the teacher
needs (measured on the embedded photos: 24–26 dB after 500–800 decoder steps). Two facts shape the construction.

- **The encoder can be exact.** Two stride-2 convs (diffusers pads (0, 1, 0, 1) before them, so taps (0, 0),
  (0, 1), (1, 0), (1, 1) of the 3×3 kernel see one 2×2 cell) gather each 4×4×3 cell into 48 channels and
  project them on a 16-component PCA of the training images' cells (39 dB on held-out crops). Block 2's 1×1
  shortcut emits ``[z, −z, const]`` so the one-group GroupNorm + SiLU before ``conv_out`` stay near-linear, as in
  ``tiny.identity_init_vae``, and ``conv_out`` takes the difference.
- **The decoder cannot be.** With nearest-neighbour upsampling, every translation-equivariant decoder maps a
  constant latent field to a constant image, so depth-to-space (the exact inverse) is out of reach; the best
  *linear* decoder under that constraint (least squares on PCA latents) reaches 31.9 dB from a 3×3-cell
  neighbourhood. So the decoder's linear path — ``conv_in``, the two upsampler convs, the 1×1 shortcut between
  them, ``conv_out`` — is fitted as a plain linear network (``LinearDecoder``, Adam on MSE, ~30.6 dB after
  1,000 steps) and copied into the ``AutoencoderKL`` decoder with its resnets zeroed (``realize_decoder``; the
  copy is exact to the GroupNorm trick's ~1e-4). Nonlinear fine-tuning then starts from there.

Layout required: three blocks ``(c, c, w)`` with ``c >= max(12, latent)``, ``w > 2 · latent``, one norm group.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from srcompress.models.teachers.optim import one_cycle, update

Tensor = torch.Tensor


def cell_vectors(x: Tensor) -> Tensor:
    """(N, 3, H, W) → (N, 48, H/4, W/4), channel ``(k·4 + t1)·4 + t2``: the order the constructed convs gather."""
    return F.pixel_unshuffle(F.pixel_unshuffle(x, 2), 2)


def pca_basis(x: Tensor, components: int) -> tuple[Tensor, Tensor]:
    """The leading principal directions (components, 48) and the mean (48,) of the 4×4 cells of ``x``."""
    u = cell_vectors(x).permute(0, 2, 3, 1).reshape(-1, 48).double()
    mean = u.mean(0)
    cov = (u - mean).T @ (u - mean) / len(u)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, -components:].flip(1).T.float().contiguous(), mean.float()


def check_layout(vae) -> tuple[int, int, int, int]:
    """(c, w, latent, decoder data width) of a VAE the construction supports, or a ValueError saying why not."""
    cfg = vae.config
    lat = cfg.latent_channels
    if len(cfg.block_out_channels) != 3 or cfg.norm_num_groups != 1:
        raise ValueError("vae_init=pca needs three VAE blocks (latent factor 4) and norm_num_groups=1")
    c0, c1, w = cfg.block_out_channels
    if c0 != c1 or c0 < max(12, lat) or w <= 2 * lat:
        raise ValueError(f"vae_init=pca needs vae_channels [c, c, w] with c >= max(12, latent_channels={lat}) "
                         f"and w > 2 * latent_channels; got {list(cfg.block_out_channels)}")
    return c0, w, lat, (c0 - 4) // 2  # 4 constant channels steady the decoder's final GroupNorm


def _zero_resnets(part: nn.Module) -> None:
    """Each resnet becomes its shortcut: conv2 zeroed, a 1×1 shortcut set to embed its first channels; a
    mid-block attention becomes its residual connection (output projection zeroed)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for m in part.modules():
        if isinstance(m, Attention):
            if not m.residual_connection or m.rescale_output_factor != 1:
                raise ValueError("vae_init=pca: a mid-block attention must be residual with output factor 1")
            m.to_out[0].weight.zero_()
            m.to_out[0].bias.zero_()
        if isinstance(m, ResnetBlock2D):
            m.conv2.weight.zero_()
            m.conv2.bias.zero_()
            if m.conv_shortcut is not None:
                m.conv_shortcut.weight.zero_()
                m.conv_shortcut.bias.zero_()
                for i in range(min(m.conv_shortcut.weight.shape[:2])):
                    m.conv_shortcut.weight[i, i, 0, 0] = 1.0


def _pass_data(gn: nn.GroupNorm, data: int, bias: float) -> None:
    """The GroupNorm keeps its first ``data`` channels (moved to SiLU's near-linear region) and zeroes the rest."""
    gn.weight.zero_()
    gn.bias.zero_()
    gn.weight[:data] = 1.0
    gn.bias[:data] = bias


def _near_linear(width: int, data: int, const: float, shift: float) -> tuple[float, float, float]:
    """GroupNorm(1 group) over ``data`` ±pairs and ``width − data`` channels at ``const``: (the norm's shift, its
    std, SiLU's slope at ``shift``). Mean and variance are set by the constants (the ± pairs cancel in the mean)."""
    n_c = width - data
    mean = n_c * const / width
    std = math.sqrt(n_c * const**2 / width - mean**2)
    sig = 1.0 / (1.0 + math.exp(-shift))
    return shift + mean / std, std, sig * (1 + shift * (1 - sig))


@torch.no_grad()
def pca_init_encoder(vae, basis: Tensor, mean: Tensor, const: float = 300.0, shift: float = 20.0) -> None:
    """Set the encoder to ``latent = basis · (cell − mean)`` (see the module docstring); log-variance −30."""
    _, w, lat, _ = check_layout(vae)
    enc = vae.encoder
    _zero_resnets(enc)
    enc.conv_in.weight.zero_()
    enc.conv_in.bias.zero_()
    for k in range(3):
        enc.conv_in.weight[k, k, 1, 1] = 1.0
    d0 = enc.down_blocks[0].downsamplers[0].conv
    d0.weight.zero_()
    d0.bias.zero_()
    for k in range(3):
        for t in range(4):
            d0.weight[k * 4 + t, k, t // 2, t % 2] = 1.0
    d1 = enc.down_blocks[1].downsamplers[0].conv
    d1.weight.zero_()
    for c in range(12):
        for t in range(4):
            d1.weight[:lat, c, t // 2, t % 2] = basis[:, c * 4 + t]
    d1.bias.zero_()
    d1.bias[:lat] = -(basis @ mean)
    sc = enc.down_blocks[2].resnets[0].conv_shortcut  # c → w: [z, −z, const]
    sc.weight.zero_()
    sc.bias.zero_()
    for j in range(lat):
        sc.weight[j, j, 0, 0], sc.weight[lat + j, j, 0, 0] = 1.0, -1.0
    sc.bias[2 * lat:] = const
    bias, std, slope = _near_linear(w, 2 * lat, const, shift)
    _pass_data(enc.conv_norm_out, 2 * lat, bias)
    enc.conv_out.weight.zero_()
    enc.conv_out.bias.zero_()
    for j in range(lat):
        enc.conv_out.weight[j, j, 1, 1] = std / (2 * slope)
        enc.conv_out.weight[j, lat + j, 1, 1] = -std / (2 * slope)
    enc.conv_out.bias[lat:] = -30.0
    if vae.quant_conv is not None:
        _identity_1x1(vae.quant_conv)


def _identity_1x1(conv: nn.Conv2d) -> None:
    conv.weight.zero_()
    conv.bias.zero_()
    for i in range(conv.weight.shape[0]):
        conv.weight[i, i, 0, 0] = 1.0


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LinearDecoder(nn.Module):
    """The decoder's linear path at the VAE's widths: conv_in (latent → w), up + conv (w → w), 1×1 (w → c),
    up + conv (c → c), 1×1 (c → data), conv_out (data → 3)."""

    def __init__(self, latent: int, c: int, w: int, data: int):
        super().__init__()
        self.conv_in, self.up1, self.short = nn.Conv2d(latent, w, 3, 1, 1), _Up(w, w), nn.Conv2d(w, c, 1)
        self.up2, self.to_data, self.conv_out = _Up(c, c), nn.Conv2d(c, data, 1), nn.Conv2d(data, 3, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        return self.conv_out(self.to_data(self.up2(self.short(self.up1(self.conv_in(z))))))


@torch.no_grad()
def realize_decoder(vae, lin: LinearDecoder, const: float = 300.0, shift: float = 20.0) -> None:
    """Copy ``lin`` into the ``AutoencoderKL`` decoder (resnets zeroed; see the module docstring)."""
    c, _, _, data = check_layout(vae)
    dec = vae.decoder
    _zero_resnets(dec)
    if vae.post_quant_conv is not None:
        _identity_1x1(vae.post_quant_conv)
    dec.conv_in.load_state_dict(lin.conv_in.state_dict())
    dec.up_blocks[0].upsamplers[0].conv.load_state_dict(lin.up1.conv.state_dict())
    dec.up_blocks[1].resnets[0].conv_shortcut.load_state_dict(lin.short.state_dict())
    # the second upsampler with the 1×1 to the data channels folded in, emitting [h, −h, const]
    w2 = lin.to_data.weight[:, :, 0, 0]
    weight = torch.einsum("oc,cikl->oikl", w2, lin.up2.conv.weight)
    bias = w2 @ lin.up2.conv.bias + lin.to_data.bias
    up = dec.up_blocks[1].upsamplers[0].conv
    up.weight.zero_()
    up.bias.zero_()
    up.weight[:data], up.weight[data:2 * data] = weight, -weight
    up.bias[:data], up.bias[data:2 * data] = bias, -bias
    up.bias[2 * data:] = const
    gn_bias, std, slope = _near_linear(c, 2 * data, const, shift)
    _pass_data(dec.conv_norm_out, 2 * data, gn_bias)
    a = std / (2 * slope)
    dec.conv_out.weight.zero_()
    dec.conv_out.weight[:, :data] = a * lin.conv_out.weight
    dec.conv_out.weight[:, data:2 * data] = -a * lin.conv_out.weight
    dec.conv_out.bias.copy_(lin.conv_out.bias)


def fit_linear_decoder(encode: Callable[[Tensor], Tensor], images: Tensor, layout: tuple[int, int, int, int],
                       steps: int, lr: float, batch: int, crop: int, g: torch.Generator,
                       log: Callable[[str], None] = print, name: str = "bootstrap vae (linear decoder)",
                       ) -> tuple[LinearDecoder, list[float]]:
    """A :class:`LinearDecoder` at ``layout`` = (c, w, latent, data) fitted to invert ``encode`` on ``images``
    (N, 3, H, W in [−1, 1]): MSE, one-cycle Adam, ``batch`` random ``crop``-px crops on the 4-px grid per step.
    Returns it (to copy in with :func:`realize_decoder`) and its losses."""
    c, w, lat, data = layout
    lin = LinearDecoder(lat, c, w, data).to(images.device)
    opt = torch.optim.Adam(lin.parameters(), lr)
    warm = min(0.5, max(0.05, 2.0 / max(steps, 1)))  # ≥ 2 warm-up steps: OneCycleLR divides by them
    sched = one_cycle(opt, lr, max(steps, 2), pct_start=warm)
    crop = min(crop, images.shape[-1], images.shape[-2]) // 4 * 4
    losses: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        i = int(torch.randint(0, (images.shape[-2] - crop) // 4 + 1, (1,), generator=g)) * 4
        j = int(torch.randint(0, (images.shape[-1] - crop) // 4 + 1, (1,), generator=g)) * 4
        x = images[idx, :, i:i + crop, j:j + crop]
        with torch.no_grad():
            z = encode(x)
        update(opt, sched, F.mse_loss(lin(z), x), losses, step, steps, name, log)
    return lin, losses


def build_pca_vae(vae, images: Tensor, linear_steps: int, lr: float, batch: int, crop: int, g: torch.Generator,
                  log: Callable[[str], None] = print) -> list[float]:
    """PCA encoder from ``images`` (N, 3, H, W in [−1, 1]), then the linear decoder fitted for ``linear_steps``
    (:func:`fit_linear_decoder`) and copied in. Returns its losses."""
    layout = check_layout(vae)
    basis, mean = pca_basis(images, layout[2])
    pca_init_encoder(vae, basis, mean)

    def encode(x: Tensor) -> Tensor:
        return ((cell_vectors(x).permute(0, 2, 3, 1) - mean) @ basis.T).permute(0, 3, 1, 2)

    lin, losses = fit_linear_decoder(encode, images, layout, linear_steps, lr, batch, crop, g, log)
    realize_decoder(vae, lin)
    return losses
