"""Training the compressed VAE in TinySR's two phases (appendix "VAE Training"; docs/methods.md §8.6):

- **encoder**: ``L1(E_s(x), E_t(x))`` on the teacher's *scaled* latents (posterior means), AdamW;
- **decoder**: ``w_l1·L1(D_s(z_t), x) + w_p·ST-LPIPS(D_s(z_t), x) + w_g·GAN`` on the HQ pixels ``x``, decoded from
  the teacher's latents ``z_t`` (what the student's backbone will hand the decoder), with a hinge
  discriminator trained beside it.

    tr = VAETrainer(student_vae, teacher_vae, convention, cfg, lpips=net, disc=d)
    for step in range(n): tr.encoder_step(x)          # then: tr.decoder_step(x)
    tr.state_dict() / tr.load_state_dict(sd)          # checkpoint: weights, optimisers, step counters, losses

Pure PyTorch: the step driver (tasks/vae/) owns data, checkpoints and logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from srcompress.models.student.gan import d_hinge, g_hinge

Tensor = torch.Tensor


@dataclass(frozen=True)
class VAETrainSettings:
    enc_lr: float = 3e-4
    dec_lr: float = 5e-4
    d_lr: float = 1e-5
    l1_weight: float = 3.0
    perceptual_weight: float = 1.0
    gan_weight: float = 0.1
    weight_decay: float = 0.0
    schedule: str = "constant"       # or "one_cycle": per phase, over encoder_steps / decoder_steps
    encoder_steps: int = 0
    decoder_steps: int = 0


def scheduled_lr(base: float, step: int, total: int, schedule: str) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``. ``constant``: TinySR's appendix gives
    one rate per phase. ``one_cycle`` (ours): torch's ``OneCycleLR`` at its defaults with ``pct_start=0.1`` —
    cosine warm-up from base/25 over the first 10% of the steps, cosine anneal to base/(25·10⁴) — computed
    from the step counter, so that a resumed phase needs no scheduler state (tested equal to torch's)."""
    if schedule == "constant" or total < 2:
        return base
    start_lr, peak, final = base / 25, base, base / 25 / 1e4
    warm_end = 0.1 * total - 1
    if step <= warm_end:  # torch divides 0 by 0 when warm_end is 0 (total = 10): the peak here
        a, b, pct = start_lr, peak, step / warm_end if warm_end > 0 else 1.0
    else:
        a, b, pct = peak, final, (step - warm_end) / (total - 1 - warm_end)
    return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)


def _scaled(vae: nn.Module, x01: Tensor, scale: float, shift: float) -> Tensor:
    return (vae.encode(x01 * 2 - 1).latent_dist.mean - shift) * scale


def _decode(vae: nn.Module, z: Tensor, scale: float, shift: float) -> Tensor:
    return (vae.decode(z / scale + shift).sample + 1) / 2


def encoder_params(vae: nn.Module) -> list[nn.Parameter]:
    mods = [vae.encoder] + ([vae.quant_conv] if getattr(vae, "quant_conv", None) is not None else [])
    return [p for m in mods for p in m.parameters()]


def decoder_params(vae: nn.Module) -> list[nn.Parameter]:
    mods = [vae.decoder] + ([vae.post_quant_conv] if getattr(vae, "post_quant_conv", None) is not None else [])
    return [p for m in mods for p in m.parameters()]


class VAETrainer:
    """Both phases of the compressed VAE's training, one optimiser step per call."""

    def __init__(self, vae: nn.Module, teacher_vae: nn.Module, scale: float, shift: float, cfg: VAETrainSettings,
                 lpips: nn.Module | None = None, disc: nn.Module | None = None):
        self.vae, self.teacher, self.scale, self.shift, self.cfg = vae, teacher_vae.eval(), scale, shift, cfg
        self.teacher.requires_grad_(False)
        self.lpips, self.disc = lpips, disc
        self.opt_enc = torch.optim.AdamW(encoder_params(vae), cfg.enc_lr, weight_decay=cfg.weight_decay)
        self.opt_dec = torch.optim.AdamW(decoder_params(vae), cfg.dec_lr, weight_decay=cfg.weight_decay)
        self.opt_d = (torch.optim.AdamW(disc.parameters(), cfg.d_lr, betas=(0.5, 0.999)) if disc is not None
                      and cfg.gan_weight > 0 else None)
        self.steps = {"encoder": 0, "decoder": 0}
        self.history: dict[str, list[float]] = {"encoder.l1": [], "decoder.l1": [], "decoder.perceptual": [],
                                                "decoder.gan_g": [], "decoder.gan_d": []}

    @torch.no_grad()
    def teacher_latents(self, x01: Tensor) -> Tensor:
        return _scaled(self.teacher, x01, self.scale, self.shift)

    def encoder_step(self, x01: Tensor) -> float:
        self.vae.train()
        loss = F.l1_loss(_scaled(self.vae, x01, self.scale, self.shift), self.teacher_latents(x01))
        self._set_lr(self.opt_enc, self.cfg.enc_lr, "encoder", self.cfg.encoder_steps)
        self.opt_enc.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_enc.step()
        self.steps["encoder"] += 1
        self.history["encoder.l1"].append(loss.item())
        return loss.item()

    def decoder_step(self, x01: Tensor) -> float:
        self.vae.train()
        c = self.cfg
        fake = _decode(self.vae, self.teacher_latents(x01), self.scale, self.shift)
        l1 = F.l1_loss(fake, x01)
        loss = c.l1_weight * l1
        perc = torch.zeros((), device=x01.device)
        if self.lpips is not None and c.perceptual_weight > 0:
            perc = self.lpips(fake, x01, normalize=True).mean()
            loss = loss + c.perceptual_weight * perc
        g = torch.zeros((), device=x01.device)
        if self.opt_d is not None:
            self.disc.requires_grad_(False)  # the generator's backward must not touch D's weights
            g = g_hinge(self.disc(fake.clamp(0, 1)))
            loss = loss + c.gan_weight * g
        self._set_lr(self.opt_dec, c.dec_lr, "decoder", c.decoder_steps)
        self.opt_dec.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_dec.step()
        d = torch.zeros(())
        if self.opt_d is not None:
            self.disc.requires_grad_(True)
            d = d_hinge(self.disc(x01), self.disc(fake.detach().clamp(0, 1)))
            self.opt_d.zero_grad(set_to_none=True)
            d.backward()
            self.opt_d.step()
        self.steps["decoder"] += 1
        for k, v in (("decoder.l1", l1), ("decoder.perceptual", perc), ("decoder.gan_g", g), ("decoder.gan_d", d)):
            self.history[k].append(float(v.item()))
        return float(loss.item())

    def _set_lr(self, opt: torch.optim.Optimizer, base: float, phase: str, total: int) -> None:
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(base, self.steps[phase], total, self.cfg.schedule)

    def state_dict(self) -> dict:
        sd = {"vae": self.vae.state_dict(), "opt_enc": self.opt_enc.state_dict(), "opt_dec": self.opt_dec.state_dict(),
              "steps": dict(self.steps), "history": {k: list(v) for k, v in self.history.items()}}
        if self.opt_d is not None:
            sd |= {"disc": self.disc.state_dict(), "opt_d": self.opt_d.state_dict()}
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.vae.load_state_dict(sd["vae"])
        self.opt_enc.load_state_dict(sd["opt_enc"])
        self.opt_dec.load_state_dict(sd["opt_dec"])
        if self.opt_d is not None:
            self.disc.load_state_dict(sd["disc"])
            self.opt_d.load_state_dict(sd["opt_d"])
        self.steps = dict(sd["steps"])
        self.history = {k: list(v) for k, v in sd["history"].items()}


@torch.no_grad()
def reconstruction(vae: nn.Module, x01: Tensor, scale: float, shift: float) -> Tensor:
    """Encode (posterior mean) and decode: the VAE's reconstruction of ``x01`` in [0, 1]."""
    vae.eval()
    return _decode(vae, _scaled(vae, x01, scale, shift), scale, shift).clamp(0, 1)
