"""Typed config of the ``compress_vae`` step (docs/methods.md §8.6). Defaults are TinySR's published values
(appendix, "VAE Training"); configs/tiny.yaml scales the step counts down to minutes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN


class VAECompressConfig(StrictModel):
    """Channel pruning, attention removal and SepConv encoder, then the encoder and decoder training phases."""

    enabled: bool = Field(False, description="Run the step; the final student (stage 2) then decodes with the compressed VAE instead of the teacher's (exclusive with distill.tiny_vae).")
    width: int | list[int] = Field(64, description="Channels kept in every channel space wider than this (TinySR: 64), or one cap per VAE block (blocks the teacher gives one width must keep one width).")

    @field_validator("width")
    @classmethod
    def _positive(cls, v: int | list[int]) -> int | list[int]:
        if (v if isinstance(v, int) else min(v, default=0)) < 1:
            raise ValueError(f"width must be a positive channel count or a non-empty list of them, got {v}")
        return v
    remove_attention: bool = Field(True, description="Drop the VAE's mid-block self-attention (TinySR).")
    separable_encoder: bool = Field(True, description="Depthwise-separable k×k convolutions in the encoder only (TinySR: the decoder keeps dense convolutions).")
    refit: bool = Field(False, description="After pruning, re-fit the encoder's output convolution by least squares so that the pruned encoder's moments match the teacher's on training crops (He et al. 2017's reconstruction step; ours, not TinySR's). Pruning a one-group GroupNorm's channels rescales every kept one; the re-fit undoes it before training.")
    decoder_init: Literal["pruned", "linear"] = Field("pruned", description="pruned: the teacher's decoder on the kept channels (TinySR). linear (ours, for VAEs of the embedded teacher's layout: three blocks [c, c, w], one norm group): a linear decoder at the compressed widths fitted (MSE) to the teacher's latents, copied into the pruned decoder with its resnets zeroed; the decoder phase then trains from there (docs/methods.md §8.6).")
    linear_steps: int = Field(1000, ge=1, description="decoder_init=linear: Adam steps of the linear decoder's fit.")
    linear_lr: float = Field(2e-3, gt=0, description="decoder_init=linear: peak learning rate of that fit (one-cycle).")
    encoder_steps: int = Field(100_000, ge=0, description="Phase 1: encoder L1 to the teacher's scaled latents (TinySR: 100k).")
    decoder_steps: int = Field(200_000, ge=0, description="Phase 2: decoder L1 + ST-LPIPS + GAN to the HQ pixels (TinySR: 200k).")
    schedule: Literal["constant", "one_cycle"] = Field("constant", description="Learning rate per phase: constant (TinySR's appendix gives one rate) or one_cycle (ours: torch's OneCycleLR defaults with pct_start 0.1 — cosine warm-up from lr/25, cosine anneal to lr/2.5e5; a few hundred steps fine-tune a constructed decoder without first wrecking it).")
    batch_size: int = Field(64, ge=1, description="Crops per step (TinySR: 64).")
    crop: int = Field(128, ge=8, description="Side of the random HQ crops (rounded down to the latent factor).")
    enc_lr: float = Field(3e-4, gt=0, description="Encoder AdamW learning rate (TinySR: 3e-4).")
    dec_lr: float = Field(5e-4, gt=0, description="Decoder AdamW learning rate (TinySR: 5e-4).")
    d_lr: float = Field(1e-5, gt=0, description="Discriminator learning rate (TinySR: 1e-5).")
    l1_weight: float = Field(3.0, ge=0, description="Decoder L1 weight (TinySR: 3; see docs/methods.md §8.6 on reading its A.2).")
    perceptual_weight: float = Field(1.0, ge=0, description="Decoder ST-LPIPS weight (TinySR's LPIPS: 1).")
    gan_weight: float = Field(0.1, ge=0, description="Decoder hinge-GAN weight (ours: the paper does not give it); 0 = no discriminator.")
    discriminator: Literal["patch", "projected_stlpips"] = Field("patch", description="Discriminator of the decoder phase (models/student/gan.py).")
    max_pairs: int = Field(4096, ge=1, description="Training pairs read from the degrade step (HQ crops for both phases, LQ for the encoder too).")
    eval_size: int = Field(16, ge=1, description="Held-out HQ crops on which both VAEs' reconstruction is measured (training pairs when there is no hold-out).")
    seed: int = Field(80, description="Seed of crops and initialisation (TinySR: 80).")
    checkpoint_every: int = Field(500, ge=1, description="Optimiser steps between checkpoints in the store (a killed step resumes from the latest).")
    log_every: int = Field(50, ge=1, description="Steps between progress log lines.")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N; null = run.device.")
