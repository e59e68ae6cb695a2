"""Multi-step latent diffusion SR teacher (StableSR / SD-x4-upscaler style) behind the one-step interface.

The UNet sees the noisy latent concatenated with the LQ condition along channels and predicts ε, v or x0 at a
timestep; a diffusers scheduler (DDPM / DDIM / DPM-Solver, ``steps`` inference steps) walks from pure noise
(or, with ``strength < 1``, from the noised LQ latent) to the restored latent. Two conditions:

- ``latent``: the LQ image's own VAE latent (StableSR's concat variant; the embedded multi-step teacher);
  ``unet.in_channels = 2 · latent_channels``.
- ``pixels``: the LQ image at latent resolution in [−1, 1], noised to ``noise_level`` by a low-res scheduler
  and the level passed as ``class_labels`` (diffusers ``StableDiffusionUpscalePipeline``);
  ``unet.in_channels = latent_channels + 3``. ``encode`` then returns those pixels: they *are* the LQ
  "latent" this model conditions on.

``restore_tile`` runs the whole trajectory on one tile; ``tiled`` blends finished tiles with Gaussian weights
only after the last step — AdaDiffSR stitches sub-regions in latent space at the final timestep (docs/methods.md
§12). The initial noise is one seeded draw of the tile's shape shared by every tile and image, so a result does
not depend on how tiles are batched and a rerun reproduces it exactly.

``lq_residual`` (ours, the embedded teacher; ResShift's idea of modelling the HQ − LQ residual, in the x0
parameterisation): ``model_output`` returns ``residual_x0`` of the UNet's output, so the scheduler sees an
ordinary ``sample`` prediction; with a zero-initialised ``conv_out`` training starts at the best linear
denoiser around z_LQ, the way the one-step bootstrap teacher starts at the identity.

    teacher = MultiStepTeacher(vae, unet, DDIMScheduler(...), prompt_embeds, convention, steps=20)
    sr = teacher(lq01)                     # (B, 3, H, W) in [0, 1]
    z = teacher.trajectory(z_lq, callback=lambda i, t, z_t: ...)   # sees every step's latent and timestep
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from srcompress.models.teachers.base import LatentConvention, OneStepTeacher
from srcompress.models.teachers.unet import prunable_units

if TYPE_CHECKING:
    from srcompress.models.teachers.unet import UNetOneStepTeacher

Tensor = torch.Tensor
Condition = Literal["latent", "pixels"]


class MultiStepTeacher(OneStepTeacher):
    kind = "multistep"

    def __init__(self, vae: nn.Module, unet: nn.Module, scheduler, prompt_embeds: Tensor,
                 convention: LatentConvention, steps: int = 20, condition: Condition = "latent",
                 noise_level: int | None = None, low_res_scheduler=None, seed: int = 0,
                 tile: int | None = None, tile_overlap: int = 8, strength: float = 1.0,
                 lq_residual: bool = False, residual_std: float = 0.0):
        super().__init__(vae, unet, convention, tile, tile_overlap)
        latent = int(vae.config.latent_channels)
        want = 2 * latent if condition == "latent" else latent + 3
        if unet.config.in_channels != want:
            raise ValueError(f"condition {condition!r} needs unet.in_channels = {want} (noisy latent {latent} + "
                             f"{'LQ latent' if condition == 'latent' else 'LQ pixels'}); the UNet has "
                             f"{unet.config.in_channels}")
        if unet.config.out_channels != latent:
            raise ValueError(f"the UNet predicts {unet.config.out_channels} channels, the VAE latent has {latent}")
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != unet.config.cross_attention_dim:
            raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} must be (1, L, "
                             f"cross_attention_dim={unet.config.cross_attention_dim})")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 < strength <= 1 or int(steps * strength) < 1:
            raise ValueError(f"strength must be in (0, 1] and leave at least one of the {steps} steps, got {strength}")
        if strength < 1 and condition != "latent":
            raise ValueError("strength < 1 starts from the noised LQ latent: the teacher must be conditioned on it")
        if lq_residual and (condition != "latent" or scheduler.config.prediction_type != "sample"):
            raise ValueError("lq_residual: the UNet predicts x0 − z_LQ, which needs the LQ latent condition and "
                             "prediction_type 'sample'")
        if condition == "pixels" and noise_level is not None and low_res_scheduler is None:
            raise ValueError("condition 'pixels' with a noise_level needs the low-res scheduler that adds it")
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.scheduler = scheduler
        self.low_res_scheduler = low_res_scheduler
        self.steps, self.condition, self.noise_level, self.seed = int(steps), condition, noise_level, int(seed)
        self.strength, self.lq_residual, self.residual_std = float(strength), bool(lq_residual), float(residual_std)
        self.latent_channels = latent
        self.prediction_type = scheduler.config.prediction_type
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)

    @property
    def unet(self) -> nn.Module:
        return self.backbone

    def schedule(self, device=None) -> Tensor:
        """The timesteps the fixed-step sampler runs: the scheduler's ``steps``-step schedule, of which only the
        last ``int(steps · strength)`` with ``strength < 1`` (diffusers' img2img convention)."""
        self.scheduler.set_timesteps(self.steps, device=device)
        keep = min(int(self.steps * self.strength), self.steps)
        return self.scheduler.timesteps[(self.steps - keep) * self.scheduler.order:]

    @property
    def timestep(self) -> int:
        """The first (noisiest) timestep the sampler runs: where a one-step student starts (OSEDiff)."""
        return int(self.schedule()[0])

    def initial(self, z_lq: Tensor) -> Tensor:
        """The sampler's starting latent: the seeded noise — or, with ``strength < 1``, the LQ latent noised to
        the first timestep (SDEdit / img2img: the trajectory refines the LQ instead of drawing from scratch)."""
        noise = self.noise((self.latent_channels, *z_lq.shape[-2:]), z_lq.shape[0]).to(z_lq)
        if self.strength >= 1:
            return noise * self.scheduler.init_noise_sigma
        t = torch.full((z_lq.shape[0],), self.timestep, dtype=torch.long)
        return self.scheduler.add_noise(z_lq, noise, t.to(z_lq.device))

    @property
    def train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    # -- conditioning -------------------------------------------------------------------------------
    def encode(self, x01: Tensor, generator=None) -> Tensor:
        if self.condition == "latent":
            return super().encode(x01, generator)
        f = self.latent_factor  # the LQ pixels at latent resolution are the condition itself
        return F.interpolate(x01 * 2 - 1, scale_factor=1 / f, mode="bicubic", align_corners=False,
                             antialias=True).clamp(-1, 1)

    def _condition(self, z_lq: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.condition == "latent" or self.noise_level is None:
            return z_lq, None
        level = torch.full((z_lq.shape[0],), int(self.noise_level), dtype=torch.long, device=z_lq.device)
        noise = self.noise(z_lq.shape[1:], z_lq.shape[0], salt=1).to(z_lq)
        return self.low_res_scheduler.add_noise(z_lq, noise, level), level

    def noise(self, shape: torch.Size | tuple, batch: int, salt: int = 0) -> Tensor:
        """One seeded CPU draw of ``shape`` repeated for every sample (the same on every device and batching)."""
        g = torch.Generator().manual_seed(self.seed * 1000003 + salt)
        return torch.randn(tuple(shape), generator=g).expand(batch, *shape).contiguous()

    def model_output(self, z_t: Tensor, t: Tensor | int, cond: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The UNet's raw prediction (ε, v or x0 per ``prediction_type``) at timestep(s) ``t``."""
        b = z_t.shape[0]
        t = torch.as_tensor(t, device=z_t.device).long().expand(b) if torch.as_tensor(t).dim() == 0 \
            else torch.as_tensor(t, device=z_t.device).long()
        kw = {"class_labels": class_labels} if class_labels is not None else {}
        out = self.backbone(torch.cat([z_t, cond], dim=1), t,
                            encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1), **kw).sample
        if not self.lq_residual:
            return out
        a = self.alphas_cumprod.to(z_t.device)[t].view(-1, 1, 1, 1).to(z_t.dtype)
        return residual_x0(out, z_t, cond, a, self.residual_std)

    def predict_x0(self, z_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """x0 from a model output at per-sample timesteps ``t`` (B,)."""
        a = self.alphas_cumprod.to(z_t.device)[t.long()].view(-1, 1, 1, 1).to(z_t.dtype)
        if self.prediction_type == "epsilon":
            return (z_t - (1 - a).sqrt() * out) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * z_t - (1 - a).sqrt() * out
        if self.prediction_type == "sample":
            return out
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    # -- sampling -----------------------------------------------------------------------------------
    def trajectory(self, z_lq: Tensor, callback: Callable[[int, int, Tensor], None] | None = None) -> Tensor:
        """The fixed-step sampler: ``steps`` scheduler steps from seeded noise. ``callback(i, t, z_t)`` sees the
        latent entering step i (timestep t), for analyses across timesteps."""
        sched = self.scheduler
        timesteps = self.schedule(z_lq.device)
        cond, labels = self._condition(z_lq)
        z = self.initial(z_lq)
        # DDPM's per-step variance draws: one CPU generator per sample, all seeded alike, so the draws do not
        # depend on the batch (diffusers' randn_tensor takes one generator per sample)
        g = [torch.Generator().manual_seed(self.seed * 1000003 + 2) for _ in range(z_lq.shape[0])]
        kw = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
        for i, t in enumerate(timesteps):
            if callback is not None:
                callback(i, int(t), z)
            out = self.model_output(sched.scale_model_input(z, t), t, cond, labels)
            # stochastic schedulers (DDPM) draw their variance noise from ``g``, CPU generators: diffusers'
            # randn_tensor draws on the generators' device and moves the noise, the same on every device
            z = sched.step(out, t, z, **kw).prev_sample
        return z

    def restore_tile(self, z_lq: Tensor) -> Tensor:
        return self.trajectory(z_lq)

    def prunable_blocks(self) -> list[tuple[str, nn.Module]]:
        return prunable_units(self.backbone)

    def one_step(self) -> "UNetOneStepTeacher":
        """The OSEDiff-style one-step form a student starts from: the same UNet (shared, not copied) at the
        fixed schedule's first timestep, fed ``cat[z_L, z_L]`` (the LQ latent where the sampler puts noise),
        x0 from its prediction by the DDPM formula. LQ-pixel teachers (x4 upscaler) have no latent to feed."""
        from diffusers import DDPMScheduler

        from srcompress.models.teachers.unet import UNetOneStepTeacher

        if self.condition != "latent":
            raise ValueError("a one-step student needs a teacher conditioned on the LQ latent; this one is "
                             "conditioned on LQ pixels (x4-upscaler layout)")
        one = UNetOneStepTeacher(self.vae, self.backbone, DDPMScheduler.from_config(self.scheduler.config),
                                 self.prompt_embeds, self.convention, timestep=self.timestep, tile=self.tile,
                                 tile_overlap=self.tile_overlap, lq_residual=self.lq_residual,
                                 residual_std=self.residual_std)
        return one

    def describe(self) -> dict:
        return super().describe() | {"steps": self.steps, "strength": self.strength,
                                     "lq_residual": self.lq_residual, "residual_std": self.residual_std,
                                     "condition": self.condition,
                                     "scheduler": type(self.scheduler).__name__, "seed": self.seed,
                                     "noise_level": self.noise_level}


def residual_x0(f: Tensor, z_t: Tensor, z_lq: Tensor, a: Tensor, std: float) -> Tensor:
    """x0 of the ``lq_residual`` parameterisation from the UNet's output ``f`` at ᾱ = ``a``. ``std`` = 0:
    ``z_L + f``. ``std`` = σ_d > 0 (ours; Karras et al. 2022's c_skip / c_out preconditioning around the LQ
    latent): ``z_L + k (z_t − √ᾱ z_L) + c f`` with the linear MMSE gain ``k = √ᾱ σ_d² / (ᾱ σ_d² + 1 − ᾱ)`` and
    the posterior std ``c = √((1 − ᾱ) σ_d² / (ᾱ σ_d² + 1 − ᾱ))`` of x0 − z_L ~ N(0, σ_d²) given z_t — so f = 0 is
    already the best linear denoiser, and the UNet learns only what that misses, at unit scale."""
    if std <= 0:
        return z_lq + f
    s2 = std * std
    den = a * s2 + 1 - a
    return z_lq + (a.sqrt() * s2 / den) * (z_t - a.sqrt() * z_lq) + ((1 - a) * s2 / den).sqrt() * f


def residual_scale(a: Tensor, std: float) -> Tensor:
    """c of ``residual_x0``: how much one unit of the UNet's output moves x0 at ᾱ = ``a``."""
    s2 = std * std
    return ((1 - a) * s2 / (a * s2 + 1 - a)).sqrt()


def ddim_jump(z_t: Tensor, x0: Tensor, alpha_t: Tensor, alpha_prev: Tensor) -> Tensor:
    """Deterministic DDIM update (η = 0) from timestep t to any earlier s with ᾱ_s = ``alpha_prev``:
    ``z_s = √ᾱ_s x0 + √(1−ᾱ_s) ε̂`` with ``ε̂ = (z_t − √ᾱ_t x0) / √(1−ᾱ_t)`` (Song et al. 2021, eq. 12).
    Arbitrary jumps are what AdaDiffSR's step skipping needs; for the scheduler's own spacing it equals
    diffusers' ``DDIMScheduler.step(eta=0)`` (tested)."""
    eps = (z_t - alpha_t.sqrt() * x0) / (1 - alpha_t).sqrt()
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm": "DPMSolverMultistepScheduler"}


def make_scheduler(name: str, prediction_type: str = "epsilon", num_train_timesteps: int = 1000):
    """A diffusers scheduler with SD2.1's noise schedule (scaled-linear β 0.00085 → 0.012 over 1000 steps, no
    sample clipping, timesteps spaced from the noisiest end as SD does: ``timestep_spacing="leading"``,
    ``steps_offset=1``)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    kw = dict(num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
              beta_schedule="scaled_linear", prediction_type=prediction_type)
    if name in ("ddim", "ddpm"):
        kw["clip_sample"] = False
    if name == "ddim":
        kw |= {"set_alpha_to_one": False, "steps_offset": 1}
    return getattr(diffusers, SCHEDULERS[name])(**kw)
