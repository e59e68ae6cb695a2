"""Typed config of the teacher: where it comes from, its conventions, and the tiny bootstrap recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from srcompress.infra.config import StrictModel


class BootstrapConfig(StrictModel):
    """The tiny SD3-style teacher trained in-pipeline for the embedded default (``teacher.source: bootstrap``)."""

    seed: int = Field(0, description="Seed of initialisation, batch sampling and the validation split.")
    vae_init: Literal["identity", "random"] = Field("identity", description="identity: exact identity AutoencoderKL (one block, latent = pixels), see models/teachers/tiny.py; random: train from scratch.")
    vae_channels: list[int] = Field([32], min_length=1, description="AutoencoderKL block widths; 2**(n-1) is the latent downsampling factor.")
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
    vae_lr: float = Field(8e-3, gt=0, description="Phase 1 peak learning rate (one-cycle schedule).")
    vae_crop: int = Field(48, ge=8, description="Random crop size of phase-1 patches.")
    kl_weight: float = Field(1e-6, ge=0, description="KL weight of the VAE loss.")
    restorer_steps: int = Field(400, ge=0, description="Phase 2: one-step restorer steps on random latent tiles.")
    restorer_lr: float = Field(5e-4, gt=0, description="Phase 2 peak learning rate (one-cycle schedule).")
    latent_weight: float = Field(1.0, ge=0, description="Phase 2: weight of MSE(v, z_L − z_H) (the flow-matching target at t=1000).")
    pixel_weight: float = Field(0.0, ge=0, description="Phase 2: weight of L1(decode(z_L − v), HQ) (redundant with an identity VAE).")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="Training pairs held back to pick the best restorer checkpoint (never the held-out set).")
    eval_every: int = Field(50, ge=1, description="Validate every N restorer steps; the best checkpoint (step 0 included) is kept.")
    max_seconds: float = Field(360.0, gt=0, description="Time budget; exceeding it is logged as a warning (steps are fixed for reproducibility).")

    @model_validator(mode="after")
    def _check_identity(self) -> "BootstrapConfig":
        if self.vae_init == "identity" and (len(self.vae_channels) != 1 or self.vae_norm_groups != 1
                                            or self.vae_channels[0] < 8):
            raise ValueError("vae_init=identity needs vae_channels=[w >= 8] and vae_norm_groups=1")
        return self


class TeacherConfig(StrictModel):
    """Which one-step teacher the pipeline compresses, and its latent conventions."""

    source: str = Field("bootstrap", description="'bootstrap' (train the tiny teacher), a local diffusers-format folder, or a store URI of a published teacher index.")
    kind: Literal["auto", "sd3", "unet"] = Field("auto", description="Backbone family; auto = detect transformer/ or unet/.")
    lora: str | None = Field(None, description="peft LoRA folder merged into the backbone; default <teacher>/lora if present.")
    latent_mode: Literal["mean", "sample"] | None = Field(None, description="Posterior mean or seeded sample when encoding; None = teacher.json, else mean.")
    use_shift_factor: bool | None = Field(None, description="Apply the VAE shift_factor; None = teacher.json, else false (TSD-SR convention).")
    timestep: float | None = Field(None, description="One-step timestep; None = teacher.json, else 1000 (SD3) / 999 (UNet).")
    lq_upsample: Literal["bicubic"] = Field("bicubic", description="How native-size LQ is brought to HQ size before encoding (TSD-SR sr_bicubic).")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig, description="Tiny teacher recipe.")

    @model_validator(mode="after")
    def _check(self) -> "TeacherConfig":
        if self.source != "bootstrap" and not self.source.strip():
            raise ValueError("source must be 'bootstrap', a folder or a store URI")
        return self
