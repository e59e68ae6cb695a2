"""Typed config of the ``distill`` step (docs/methods.md §9): the student's build options and both stages."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN
from srcompress.models.student.shape import PHASE_MODES, CompressedVAEShape, StudentShape, TinyVAEShape, phase_mode
from srcompress.tasks.common.training import DeepSpeedConfig

PhaseMode = Literal[PHASE_MODES]  # type: ignore[valid-type]  # none | post | peam, from the student's own list


class TinyVAEConfig(StrictModel):
    """TinySR's tiny VAE: TAESD layout, depthwise-separable convs, fitted to the teacher's VAE before stage 2."""

    enabled: bool = Field(False, description="Replace the teacher's VAE by a tiny one in the student.")
    width: int = Field(64, ge=4, description="Channels of every stage (TinySR: 64); with search.budget.vae_widths the budget chooses the width instead (the mask manifest records it).")
    blocks: int = Field(3, ge=1, description="AutoencoderTinyBlocks per stage (TAESD: 3).")
    separable: bool = Field(True, description="Depthwise-separable k×k convs (TinySR); false = stock AutoencoderTiny convs.")
    steps: int = Field(300, ge=1, description="Fitting steps (encoder → teacher latents, decoder → teacher pixels).")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (Adam, one-cycle).")
    batch_size: int = Field(8, ge=1, description="Crops per rank per step.")
    crop: int = Field(64, ge=8, description="Pixel crop side (rounded down to a multiple of the latent factor).")


class Stage1Config(StrictModel):
    """Stage 1, latent space: student(z_LQ) → the cached teacher latent (TinySR stage 1)."""

    steps: int = Field(300, ge=0, description="Training micro-steps (0 skips the stage: the pruned student goes on as is).")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW, cosine after warm-up; 3p stage1.sh: 1e-4).")
    warmup: int = Field(0, ge=0, description="Linear warm-up steps.")
    batch_size: int = Field(4, ge=1, description="Micro-batch per rank (latent tiles).")
    perceptual_weight: float = Field(0.0, ge=0, description="ST-LPIPS between the decoded student and decoded teacher latents (TinySR train_prune.py adds LPIPS; 0 = latent L1 only).")


class Stage2Config(StrictModel):
    """Stage 2, pixel space: L1 + perceptual + hinge GAN (TinySR stage 2, weights from the 3p stage2.sh)."""

    steps: int = Field(150, ge=0, description="Generator steps (0 skips the stage; the stage-1 student is final).")
    lr: float = Field(2e-5, gt=0, description="Generator learning rate (AdamW; 3p: 1e-6 over 50k steps).")
    d_lr: float = Field(1e-4, gt=0, description="Discriminator learning rate (3p: 5e-6, i.e. 5× the generator's).")
    batch_size: int = Field(4, ge=1, description="Micro-batch per rank (latent tiles and their pixel crops).")
    l1_weight: float = Field(5.0, ge=0, description="Weight of the L1 term (TinySR recipe: 5).")
    l1_target: Literal["teacher_latent", "hq_pixels"] = Field("teacher_latent", description="teacher_latent: L1 to the cached teacher latent (3p train_stage2.py); hq_pixels: L1 of the decoded output to the HQ crop.")
    perceptual_weight: float = Field(1.0, ge=0, description="Weight of the perceptual term against the HQ crop (TinySR: 1; ST-LPIPS, offline).")
    gan_weight: float = Field(0.3, ge=0, description="Weight of the generator's GAN term −mean D(fake) (TinySR: 0.3; 0 = no discriminator).")
    discriminator: Literal["projected_stlpips", "patch"] = Field("projected_stlpips", description="projected_stlpips: heads on the frozen ST-LPIPS AlexNet trunk (stands in for TinySR's DINO projected D, whose weights no package ships); patch: a small trainable PatchGAN.")
    gan_start: int = Field(0, ge=0, description="Generator steps before the GAN term switches on (the discriminator trains from step 0).")
    train_decoder: bool = Field(True, description="Train the tiny or compressed VAE's decoder with the generator (its encoder stays as fitted). false: it stays as its own training left it — at toy scale the perceptual and GAN terms pull a decoder off the photos (configs/tiny.yaml).")


class DistillConfig(StrictModel):
    """Build the student from the mask (search LoRA merged), then distil it in two DeepSpeed stages."""

    streamline: bool = Field(True, description="TinySR streamlining: cache the fixed-t / fixed-prompt adaLN modulations and context (exact; removes time_text_embed, context_embedder, the adaLN linears). SD3 teachers only: set false for a UNet teacher.")
    text_stream: Literal["auto", "drop", "keep"] = Field("auto", description="drop: TinySR's prompt removal, an image-only student (kept blocks lose the context stream; joint attention becomes self-attention; the prompt's effect is learned back in distillation; needs streamline); keep: the context stream stays (exact streamlining; the ablation row); auto: drop for SD3 teachers when streamline is on, keep otherwise (UNets have no separate text stream).")
    merge_search_lora: bool = Field(True, description="Merge the search's LoRA into the teacher before copying the kept blocks.")
    phase_adapter: PhaseMode = Field("none", description="PGP-DiffSR's phase-exchange adapter, OUR reinterpretation (docs/methods.md §8.4): none; post (a latent-space adapter after the backbone); peam (inside the pruned backbone — a UNet's pruned decoder stages, a DiT's pruned runs of blocks: the features' amplitude with the LQ latent's phase, zero-initialised). true / false read as post / none.")
    phase_ablation: list[PhaseMode] = Field([], description="Also distil the student with each of these phase_adapter settings (evaluation rows student_phase_<setting>, e.g. student_phase_none: the no-PEAM ablation). true reads as the flipped setting (none ↔ post; peam → none), false as [].")
    tiny_vae: TinyVAEConfig = Field(default_factory=TinyVAEConfig, description="The tiny VAE (TinySR).")
    stage1: Stage1Config = Field(default_factory=Stage1Config, description="Stage 1: latent-space distillation.")
    stage2: Stage2Config = Field(default_factory=Stage2Config, description="Stage 2: pixel-space training with GAN.")
    train_size: int = Field(96, ge=2, description="Cached pairs used (seeded draw), split over the ranks.")
    num_workers: int = Field(1, ge=1, description="DeepSpeed ranks, launched as Ray actors (local Ray, or run.ray_address).")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig, description="DeepSpeed engine settings (generator, discriminator and tiny VAE engines).")
    log_every: int = Field(10, ge=1, description="Log losses to MLflow every N steps.")
    checkpoint_every: int = Field(50, ge=0, description="DeepSpeed checkpoints to the store every N steps; 0 = never.")
    seed: int = Field(0, description="Seed of the pair draw, crops, batches and initialisations (per rank).")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="auto | cpu | cuda; null = run.device.")

    @field_validator("phase_adapter", mode="before")
    @classmethod
    def _phase_bool(cls, v):
        return phase_mode(v) if isinstance(v, bool) else v  # other values: the Literal's own error

    @model_validator(mode="before")
    @classmethod
    def _ablation_bool(cls, data):
        if isinstance(data, dict) and isinstance(data.get("phase_ablation"), bool):
            mode = cls._phase_bool(data.get("phase_adapter", "none"))
            data = {**data, "phase_ablation": [{"none": "post"}.get(mode, "none")] if data["phase_ablation"] else []}
        return data

    NOT_RESULTS: ClassVar[frozenset[str]] = frozenset({"log_every", "checkpoint_every", "device", "phase_ablation"})

    def image_only(self, teacher_kind: str) -> bool:
        """Whether the student drops the text stream for a teacher of ``teacher_kind`` (sd3 | unet)."""
        if self.text_stream == "auto":
            return self.streamline and teacher_kind == "sd3"
        return self.text_stream == "drop"

    def shape(self, teacher_kind: str, phase: str | None = None,
              compressed_vae: CompressedVAEShape | None = None) -> StudentShape:
        """The student this config builds for a teacher of ``teacher_kind``: the final one, with the tiny VAE
        when stage 2 runs and fits one, or ``compressed_vae`` (the compress_vae step's, ``SrConfig.student_shape``)
        (``phase`` overrides ``phase_adapter``, for the ablation)."""
        tiny = (TinyVAEShape(self.tiny_vae.width, self.tiny_vae.blocks, self.tiny_vae.separable)
                if self.tiny_vae.enabled and self.stage2.steps > 0 else None)
        return StudentShape(streamline=self.streamline, image_only=self.image_only(teacher_kind),
                            phase_adapter=self.phase_adapter if phase is None else phase, tiny_vae=tiny,
                            compressed_vae=compressed_vae if self.stage2.steps > 0 else None)

    def with_vae_width(self, width: int | None) -> "DistillConfig":
        """This config with the tiny VAE ``width`` wide (``None``: unchanged)."""
        if width is None:
            return self
        return self.model_copy(update={"tiny_vae": self.tiny_vae.model_copy(update={"width": int(width)})})

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.phase_adapter in self.phase_ablation:
            raise ValueError(f"phase_ablation lists {self.phase_adapter!r}, the student's own phase_adapter")
        if self.text_stream == "drop" and not self.streamline:
            raise ValueError("text_stream: drop builds an image-only student, which has no prompt or timestep "
                             "input: it needs streamline: true (or set text_stream: keep)")
        if self.stage2.gan_weight > 0 and self.stage2.steps and self.stage2.gan_start >= self.stage2.steps:
            raise ValueError("stage2.gan_start must be below stage2.steps (or set gan_weight: 0)")
        return self
