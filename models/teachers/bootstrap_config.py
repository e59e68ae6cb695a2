"""The tiny teacher's bootstrap recipe as a typed config (``teacher.bootstrap``), apart from the training code
(``bootstrap.py``) so that validating a config imports neither torch nor diffusers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from srcompress.typed import StrictModel


class MultiStepRecipe(StrictModel):
    """``teacher.bootstrap.multistep``: train a multi-step teacher (StableSR-style UNet over cat[z_t, z_L]) instead
    of the one-step SD3-style one. The VAE recipe, batch, tile, prompt and the restorer_* steps / LR apply."""

    unet_channels: list[int] = Field([32, 64], min_length=2, description="UNet block widths (cross-attention in every stage but the innermost, as SD's).")
    norm_groups: int = Field(16, ge=1, description="GroupNorm groups of the UNet (must divide every width).")
    steps: int = Field(20, ge=1, description="Inference steps of the fixed-step sampler.")
    scheduler: Literal["ddim", "ddpm", "dpm"] = Field("ddim", description="Sampler (diffusers DDIM / DDPM / DPM-Solver++), SD2.1's noise schedule.")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field("epsilon", description="What the UNet predicts (and is trained on).")
    strength: float = Field(1.0, gt=0, le=1, description="Start of the trajectory: 1 = pure noise (SD-x4-upscaler, StableSR); < 1 = the LQ latent noised to the schedule's last int(steps·strength) steps (diffusers' img2img convention).")
    lq_residual: bool = Field(False, description="x0 = z_LQ + k_t (z_t − √ᾱ z_LQ) + c_t UNet(…): the HQ − LQ residual (ResShift) with Karras et al.'s skip/out preconditioning around z_LQ (σ_d measured on the training pairs) and their loss weighting; needs prediction_type sample. The UNet's conv_out starts at zero, so training starts at the best linear denoiser (models/teachers/multistep.py: residual_x0).")
    t_range: float = Field(1.0, gt=0, le=1, description="Training timesteps drawn from the first t_range · 1000 (the noisiest timestep a strength < 1 sampler visits needs no more).")
    val_pairs: int = Field(16, ge=0, description="At most this many held-back training pairs are sampled end to end at each validation.")

    @model_validator(mode="after")
    def _check(self) -> "MultiStepRecipe":
        if self.lq_residual and self.prediction_type != "sample":
            raise ValueError("multistep.lq_residual needs prediction_type: sample (the UNet predicts x0 − z_LQ)")
        if any(c % self.norm_groups for c in self.unet_channels):
            raise ValueError(f"multistep.norm_groups={self.norm_groups} must divide every unet_channels {self.unet_channels}")
        return self


class UNetRecipe(StrictModel):
    """``teacher.bootstrap.unet``: train a one-step SD-UNet teacher (OSEDiff's form: one UNet pass at a fixed
    timestep on the LQ latent) instead of the SD3-style one. The VAE recipe, batch, tile, prompt and the
    restorer_* steps / LR apply (models/teachers/bootstrap_unet.py)."""

    unet_channels: list[int] = Field([32, 64], min_length=2, description="UNet block widths (cross-attention in every stage but the innermost, as SD's).")
    norm_groups: int = Field(16, ge=1, description="GroupNorm groups of the UNet (must divide every width).")
    timestep: int = Field(999, ge=0, le=999, description="The fixed timestep of the one UNet pass (OSEDiff: 999).")

    @model_validator(mode="after")
    def _check(self) -> "UNetRecipe":
        if any(c % self.norm_groups for c in self.unet_channels):
            raise ValueError(f"unet.norm_groups={self.norm_groups} must divide every unet_channels {self.unet_channels}")
        return self


class BootstrapConfig(StrictModel):
    """The tiny SD3-style teacher trained in-pipeline for the embedded default (``teacher.source: bootstrap``)."""

    seed: int = Field(0, description="Seed of initialisation, batch sampling and the validation split.")
    vae_init: Literal["identity", "pca", "random"] = Field("identity", description="identity: exact identity AutoencoderKL (one block, latent = pixels), see models/teachers/tiny.py; pca: latent factor 4, exact PCA encoder + fitted linear decoder path (models/teachers/vae_init.py; vae_channels [c, c, w], c >= max(12, latent_channels), w > 2 * latent_channels, vae_norm_groups 1); random: train from scratch.")
    vae_channels: list[int] = Field([32], min_length=1, description="AutoencoderKL block widths; 2**(n-1) is the latent downsampling factor.")
    vae_attention: bool = Field(False, description="Mid-block self-attention in both VAE halves, as SD3's VAE has (TinySR's compression removes it); pca/random only: the pca construction starts it as the identity (output projection zeroed) and the fine-tune trains the decoder's.")
    vae_norm_groups: int = Field(1, ge=1, description="GroupNorm groups in the VAE (identity init needs 1; 1 also trained fastest from scratch).")
    latent_channels: int = Field(16, ge=3, description="Latent channels (SD3: 16).")
    num_layers: int = Field(8, ge=1, description="SD3 transformer blocks (the prunable units).")
    heads: int = Field(2, ge=1, description="Attention heads per block.")
    head_dim: int = Field(16, ge=4, description="Width of one attention head.")
    patch_size: int = Field(4, ge=1, description="Transformer patch size (latent cells per token side).")
    tile: int = Field(32, ge=4, description="Latent tile the transformer sees (training crops and inference tiles; its pos_embed size).")
    tile_overlap: int = Field(16, ge=0, description="Overlap of inference tiles (Gaussian blending).")
    text_dim: int = Field(32, ge=1, description="joint_attention_dim of the fixed prompt embedding.")
    pooled_dim: int = Field(32, ge=1, description="pooled_projection_dim of the fixed pooled embedding.")
    prompt_len: int = Field(8, ge=1, description="Tokens of the fixed prompt embedding.")
    batch_size: int = Field(16, ge=1, description="Training batch size (both phases).")
    vae_steps: int = Field(0, ge=0, description="Phase 1: VAE reconstruction steps (L1 + KL) on LQ and HQ crops; 0 keeps the identity init.")
    vae_lr: float = Field(8e-3, gt=0, description="Phase 1 peak learning rate (one-cycle schedule); a fine-tune of the pca init wants ~2e-4.")
    vae_linear_steps: int = Field(1000, ge=0, description="vae_init=pca: Adam steps fitting the decoder's linear path (MSE) before it is copied into the AutoencoderKL.")
    vae_linear_lr: float = Field(2e-3, gt=0, description="vae_init=pca: peak learning rate of that fit (one-cycle).")
    vae_crop: int = Field(48, ge=8, description="Random crop size of phase-1 patches.")
    kl_weight: float = Field(1e-6, ge=0, description="KL weight of the VAE loss.")
    restorer_steps: int = Field(400, ge=0, description="Phase 2: one-step restorer steps on random latent tiles.")
    restorer_lr: float = Field(5e-4, gt=0, description="Phase 2 peak learning rate (one-cycle schedule).")
    latent_weight: float = Field(1.0, ge=0, description="Phase 2: weight of MSE(v, z_L − z_H) (the flow-matching target at t=1000).")
    pixel_weight: float = Field(0.0, ge=0, description="Phase 2: weight of L1(decode(z_L − v), HQ) (redundant with an identity VAE).")
    boundary_weight: float = Field(0.0, ge=0, description="Phase 2: weight of MSE between the predicted and the HQ latent's steps across token boundaries (models/metrics.boundary_loss; ours, against a patch grid).")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="Training pairs held back to pick the best restorer checkpoint (never the held-out set).")
    eval_every: int = Field(50, ge=1, description="Validate every N restorer steps; the best checkpoint (step 0 included) is kept.")
    max_seconds: float = Field(360.0, gt=0, description="Time budget; exceeding it is logged as a warning (steps are fixed for reproducibility).")
    multistep: MultiStepRecipe | None = Field(None, description="Set: bootstrap a multi-step teacher (models/teachers/bootstrap_multistep.py) with this recipe; the SD3-only fields (num_layers, heads, head_dim, patch_size, pooled_dim, latent/pixel/boundary weights) are then refused unless at their defaults.")
    unet: UNetRecipe | None = Field(None, description="Set: bootstrap a one-step SD-UNet teacher (models/teachers/bootstrap_unet.py) with this recipe; the SD3-only fields are then refused unless at their defaults, as with multistep.")
    checkpoint_every: int = Field(100, ge=0, description="Save a resumable checkpoint every N restorer steps (0 = never); a killed run resumes from the last one with identical results.")

    @model_validator(mode="after")
    def _check_multistep(self) -> BootstrapConfig:
        if self.multistep is not None and self.unet is not None:
            raise ValueError("teacher.bootstrap: set multistep or unet, not both (one teacher is trained)")
        if self.multistep is None and self.unet is None:
            return self
        other = "multistep" if self.multistep is not None else "unet"
        sd3_only = ("num_layers", "heads", "head_dim", "patch_size", "pooled_dim", "latent_weight", "pixel_weight",
                    "boundary_weight")
        # values, not fields_set: a dumped config (every field written out) must validate again
        set_here = [f for f in sd3_only if getattr(self, f) != type(self).model_fields[f].default]
        if set_here:
            raise ValueError(f"teacher.bootstrap: {set_here} configure the one-step SD3-style teacher and do nothing "
                             f"with bootstrap.{other} set; remove them")
        return self

    @model_validator(mode="after")
    def _check_identity(self) -> BootstrapConfig:
        if self.vae_init == "identity" and (len(self.vae_channels) != 1 or self.vae_norm_groups != 1
                                            or self.vae_channels[0] < 8):
            raise ValueError("vae_init=identity needs vae_channels=[w >= 8] and vae_norm_groups=1")
        if self.vae_init == "identity" and self.vae_attention:
            raise ValueError("vae_attention needs vae_init pca or random (the identity construction has no attention)")
        ch, lat = self.vae_channels, self.latent_channels
        if self.vae_init == "pca" and (len(ch) != 3 or self.vae_norm_groups != 1 or ch[0] != ch[1]
                                       or ch[0] < max(12, lat) or ch[2] <= 2 * lat):
            raise ValueError(f"vae_init=pca needs vae_channels=[c, c, w] with c >= max(12, latent_channels={lat}), "
                             f"w > 2 * latent_channels, and vae_norm_groups=1; got {ch}, {self.vae_norm_groups}")
        return self
