"""The shape of the student the distillation step builds, in one place: the stage builds, ``srcompress plan``
and the budget choice of the search all build from it, so what is counted is what is trained.

    shape = StudentShape(streamline=True, image_only=True, tiny_vae=TinyVAEShape(width=64))
    student = final_student(teacher, mask, shape)      # untrained weights: to count, on the meta device too
    student = shaped_student(teacher, mask, shape, lora, rank, alpha)   # the stage-1 build (teacher's VAE)

``DistillConfig.shape`` turns the distillation config into one (tasks/distill/config.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # configs import this module: torch and diffusers (via the builders) load only when a student is built
    import torch

    from srcompress.models.student.student import StudentSR

PHASE_MODES = ("none", "post", "peam")


def phase_mode(value: bool | str) -> str:
    """A phase-adapter setting as none | post | peam (booleans: the settings before PEAM existed, true = post)."""
    mode = ("post" if value else "none") if isinstance(value, bool) else value
    if mode not in PHASE_MODES:
        raise ValueError(f"phase adapter {value!r}: one of {PHASE_MODES}")
    return mode


@dataclass(frozen=True)
class TinyVAEShape:
    """TinySR's tiny VAE as stage 2 fits it: TAESD layout, ``width`` channels, ``blocks`` per stage."""

    width: int = 64
    blocks: int = 3
    separable: bool = True


@dataclass(frozen=True)
class CompressedVAEShape:
    """The teacher's VAE compressed as TinySR (the compress_vae step, models/student/vae_prune.py)."""

    width: int | tuple[int, ...] = 64  # one cap, or one per VAE block (vae_prune.width_caps)
    remove_attention: bool = True
    separable_encoder: bool = True


@dataclass(frozen=True)
class StudentShape:
    """Everything but the mask and the weights that decides what the student is (docs/methods.md §8)."""

    streamline: bool = True
    image_only: bool = True
    phase_adapter: str = "none"  # one of PHASE_MODES
    tiny_vae: TinyVAEShape | None = None  # the final student's VAE; None (and no compressed_vae): the teacher's
    compressed_vae: CompressedVAEShape | None = None

    def with_vae_width(self, width: int | None) -> StudentShape:
        """The same shape with the tiny VAE ``width`` wide (``None``, or no tiny VAE: unchanged)."""
        if width is None or self.tiny_vae is None:
            return self
        return replace(self, tiny_vae=replace(self.tiny_vae, width=int(width)))

    def to_dict(self) -> dict:
        return asdict(self)


def shaped_student(teacher, mask: list, shape: StudentShape, lora: dict | None = None,
                   lora_rank: int = 0, lora_alpha: int = 1) -> StudentSR:
    """The student before training, with the teacher's VAE: kept blocks (the search's LoRA merged first),
    streamlined, image-only and with the phase adapter as ``shape`` says."""
    from srcompress.models.student.student import build_student

    return build_student(teacher, mask, lora or {}, lora_rank, lora_alpha, streamline=shape.streamline,
                         phase_adapter=shape.phase_adapter, image_only=shape.image_only)


def shaped_tiny_vae(student: StudentSR, tiny: TinyVAEShape) -> torch.nn.Module:
    """The tiny VAE stage 2 fits for ``student`` (untrained)."""
    from srcompress.models.student.tiny_vae import tiny_vae_for

    return tiny_vae_for(student, tiny.width, tiny.blocks, tiny.separable)


def final_student(teacher, mask: list, shape: StudentShape) -> StudentSR:
    """The shape of the student the DAG publishes last: the stage-1 build, with the tiny or the compressed VAE
    when ``shape`` has one (untrained weights)."""
    student = shaped_student(teacher, mask, shape)
    if shape.tiny_vae is not None:
        student.vae = shaped_tiny_vae(student, shape.tiny_vae)
    elif shape.compressed_vae is not None:
        import torch

        from srcompress.models.student.vae_prune import pruned_architecture

        c = shape.compressed_vae
        with torch.device(next(teacher.vae.parameters()).device):
            student.vae = pruned_architecture(teacher.vae, c.width, c.remove_attention, c.separable_encoder)
    return student
