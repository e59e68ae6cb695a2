"""The student behind the teachers' one interface, and the diffusers-loadable folder it is published as.

    student = build_student(teacher, mask, lora_state=…, lora_rank=4, lora_alpha=4, streamline=True)
    student.vae = tiny_vae; student.tiny_vae = True            # optional (models/student/tiny_vae.py)
    save_student(student, folder); student = load_student(folder)
    sr = student(lq01)                                          # same call as a teacher

Folder layout (docs/methods.md §8.5), safetensors only::

    <student>/model_index.json          ours: class names of each component, for humans and tools
    <student>/transformer/              SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer"),
                                        or, image-only (TinySR), TinySRTransformer.from_pretrained(…) (tinysr.py)
    <student>/unet/ + scheduler/        UNet students: UNet2DConditionModel / DDPMScheduler ``from_pretrained``
    <student>/vae/                      AutoencoderKL, SeparableAutoencoderTiny or PrunedAutoencoderKL (the
                                        teacher's VAE compressed, vae_prune.py), all ``from_pretrained``
    <student>/prompt_embeds.safetensors fixed prompt (+ pooled, SD3) embeddings (not for image-only students)
    <student>/phase_adapter.safetensors optional: the post-backbone adapter or PEAM in the decoder (ours)
    <student>/student.json              backbone kind, latent convention, timestep, tiling, flags, kept units

A streamlined student is saved as its exact diffusers equivalent (``StreamlinedSD3.to_diffusers``) and
streamlined again at load, so the folder is plain diffusers and the loaded model computes the same output.
An image-only student (``image_only=True``, TinySR's prompt removal) is saved as itself: its folder's tensors
are exactly its runtime parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from srcompress.models.student.peam import DecoderPEAM, TokenPEAM, peam_blocks, peam_stages
from srcompress.models.student.phase import PhaseExchangeAdapter
from srcompress.models.student.shape import phase_mode
from srcompress.models.student.streamline import StreamlinedSD3
from srcompress.models.student.surgery import kept_indices, merge_lora, prune_sd3
from srcompress.models.student.tinysr import TinySRTransformer
from srcompress.models.student.tiny_vae import SeparableAutoencoderTiny
from srcompress.models.student.vae_prune import PrunedAutoencoderKL
from srcompress.models.student.unet_surgery import prune_unet
from srcompress.models.teachers.base import LatentConvention, OneStepTeacher
from srcompress.models.teachers.unet import UNetOneStepTeacher

Tensor = torch.Tensor
FORMAT = "srcompress.student.v1"
UNET_STREAMLINE = ("streamlining caches SD3's per-block adaLN modulation; a UNet student has none to cache "
                   "(set distill.streamline=false for UNet teachers)")


class _StudentIO:
    """What every student adds to its teacher's interface: an optional tiny VAE (trained to the teacher's
    scaled latents, so no scaling here), an optional phase adapter, the kept units."""

    phase: PhaseExchangeAdapter | DecoderPEAM | TokenPEAM | None
    _latent_factor: int

    def _student_parts(self, latent_factor: int | None, phase: PhaseExchangeAdapter | DecoderPEAM | TokenPEAM | None,
                       kept: list[str] | None) -> None:
        self._latent_factor = latent_factor or 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.phase = phase
        self.kept = list(kept or [])

    @property
    def phase_mode(self) -> str:
        """none | post (the latent adapter after the backbone) | peam (inside the pruned decoder)."""
        return "none" if self.phase is None else "peam" if isinstance(self.phase, (DecoderPEAM, TokenPEAM)) else "post"

    @property
    def tiny_vae(self) -> bool:
        return isinstance(self.vae, SeparableAutoencoderTiny)

    @property
    def compressed_vae(self) -> bool:
        """The teacher's VAE compressed as TinySR (models/student/vae_prune.py): same latent convention."""
        return isinstance(self.vae, PrunedAutoencoderKL)

    @property
    def latent_factor(self) -> int:
        return self._latent_factor

    def encode(self, x01: Tensor, generator=None) -> Tensor:
        if self.tiny_vae:  # trained to output the teacher's scaled latents
            return self.vae.encode(x01 * 2 - 1).latents
        return super().encode(x01, generator)

    def decode(self, z: Tensor) -> Tensor:
        if self.tiny_vae:
            return ((self.vae.decode(z).sample.clamp(-1, 1) + 1) / 2).clamp(0, 1)
        return super().decode(z)

    def describe(self) -> dict:
        return {**super().describe(), "streamlined": self.streamlined, "tiny_vae": self.tiny_vae,
                "compressed_vae": self.compressed_vae,
                "image_only": self.image_only,
                "phase_adapter": self.phase_mode, "kept_blocks": self.kept}


class StudentSR(_StudentIO, OneStepTeacher):
    """A pruned SD3 backbone (plain, streamlined, or image-only), the teacher's VAE or a tiny one, an optional
    adapter. An image-only student has no prompt: ``prompt_embeds`` may be None."""

    kind = "student"
    backbone_kind = "sd3"

    def __init__(self, vae: nn.Module, backbone: nn.Module, convention: LatentConvention, prompt_embeds: Tensor | None,
                 pooled_prompt_embeds: Tensor | None, timestep: float = 1000.0, tile: int | None = None,
                 tile_overlap: int = 8, latent_factor: int | None = None, phase: PhaseExchangeAdapter | None = None,
                 kept: list[str] | None = None):
        super().__init__(vae, backbone, convention, tile, tile_overlap)
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.register_buffer("pooled_prompt_embeds", pooled_prompt_embeds, persistent=False)
        self.timestep = float(timestep)
        self._student_parts(latent_factor, phase, kept)

    @property
    def streamlined(self) -> bool:
        return isinstance(self.backbone, (StreamlinedSD3, TinySRTransformer))

    @property
    def image_only(self) -> bool:
        return isinstance(self.backbone, TinySRTransformer)

    def velocity(self, z: Tensor) -> Tensor:
        if self.streamlined:
            return self.backbone(z)
        b = z.shape[0]
        return self.backbone(hidden_states=z, encoder_hidden_states=self.prompt_embeds.expand(b, -1, -1).to(z.dtype),
                             pooled_projections=self.pooled_prompt_embeds.expand(b, -1).to(z.dtype),
                             timestep=torch.full((b,), self.timestep, dtype=z.dtype, device=z.device)).sample

    def restore_tile(self, z_lq: Tensor) -> Tensor:
        if isinstance(self.phase, TokenPEAM):  # the LQ latent's phase enters after the pruned runs of blocks
            with self.phase.attached(self.backbone, z_lq):
                return z_lq - (self.timestep / 1000.0) * self.velocity(z_lq)
        z = z_lq - (self.timestep / 1000.0) * self.velocity(z_lq)
        return self.phase(z, z_lq) if self.phase is not None else z

    def prunable_blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"transformer_blocks.{i}", b) for i, b in enumerate(self.backbone.transformer_blocks)]

    def streamline(self) -> StudentSR:
        """Cache the conditioning in place (exact; see models/student/streamline.py)."""
        if not self.streamlined:
            self.backbone = StreamlinedSD3(self.backbone, self.prompt_embeds, self.pooled_prompt_embeds, self.timestep)
        return self


class UNetStudentSR(_StudentIO, UNetOneStepTeacher):
    """A UNet teacher after BK-SDM-style surgery (models/student/unet_surgery.py): the same one-step formula,
    the teacher's VAE or a tiny one, an optional adapter. ``surgery`` is ``prune_unet``'s report."""

    kind = "student"
    backbone_kind = "unet"
    streamlined = False
    image_only = False

    def __init__(self, vae: nn.Module, unet: nn.Module, scheduler, prompt_embeds: Tensor,
                 convention: LatentConvention, timestep: int = 999, tile: int | None = None, tile_overlap: int = 8,
                 latent_factor: int | None = None, phase: PhaseExchangeAdapter | None = None,
                 kept: list[str] | None = None, surgery: dict | None = None, lq_residual: bool = False,
                 residual_std: float = 0.0):
        UNetOneStepTeacher.__init__(self, vae, unet, scheduler, prompt_embeds, convention, timestep, tile, tile_overlap,
                                    lq_residual, residual_std)
        self._student_parts(latent_factor, phase, kept)
        self.surgery = dict(surgery or {})

    def restore_tile(self, z_lq: Tensor) -> Tensor:
        if isinstance(self.phase, DecoderPEAM):  # the LQ latent's phase enters the pruned decoder stages
            with self.phase.attached(self.backbone, z_lq):
                return UNetOneStepTeacher.restore_tile(self, z_lq)
        z = UNetOneStepTeacher.restore_tile(self, z_lq)
        return self.phase(z, z_lq) if self.phase is not None else z

    def streamline(self) -> UNetStudentSR:
        raise ValueError(UNET_STREAMLINE)

    def describe(self) -> dict:
        return {**super().describe(), "surgery": self.surgery}


def build_student(teacher: OneStepTeacher, mask: list[float] | Tensor, lora_state: dict[str, Tensor] | None = None,
                  lora_rank: int = 0, lora_alpha: int = 1, streamline: bool = False,
                  phase_adapter: bool | str = False, image_only: bool = False) -> StudentSR | UNetStudentSR:
    """The teacher's kept blocks (search LoRA merged first) as a smaller model of the teacher's class: SD3
    blocks by ``prune_sd3``, UNet units by ``prune_unet`` (docs/methods.md §8.1). ``image_only`` (SD3):
    TinySR's prompt removal, a ``TinySRTransformer`` — streamlined by construction, text stream dropped.
    ``phase_adapter``: none | post | peam (True: post; ``models/student/peam.py``)."""
    import copy

    kind = getattr(teacher, "kind", type(teacher).__name__)
    if kind not in ("sd3", "unet"):
        raise ValueError(f"student build: cannot build from a {kind!r} model (an SD3 or UNet teacher)")
    names = [n for n, _ in teacher.prunable_blocks()]
    if len(mask) != len(names):
        raise ValueError(f"mask has {len(mask)} entries, the teacher has {len(names)} prunable blocks")
    keep = kept_indices(mask)
    if kind == "unet" and streamline:
        raise ValueError(UNET_STREAMLINE)
    if kind == "unet" and image_only:
        raise ValueError("an image-only student removes SD3's text stream; a UNet has none to remove "
                         "(set distill.text_stream=keep for UNet teachers)")
    # The SD3 builds copy the kept tensors into a new model; without a LoRA to merge the teacher's backbone is
    # only read (no deep copy: at SD3-medium scale that is 8 GB). UNet surgery edits its input, so it gets a copy.
    backbone = teacher.backbone
    if (lora_state and lora_rank > 0) or kind == "unet":
        backbone = merge_lora(copy.deepcopy(teacher.backbone), lora_state or {}, lora_rank, lora_alpha)
    mode = phase_mode(phase_adapter)
    channels = int(teacher.vae.config.latent_channels)
    phase = PhaseExchangeAdapter(channels) if mode == "post" else None
    p = next(teacher.backbone.parameters())
    if kind == "unet":
        unet, report = prune_unet(backbone, {n for i, n in enumerate(names) if i not in keep})
        gone = set(report["removed"]) | set(report["structural"])
        kept = [n for n in names if n not in gone]
        if mode == "peam":
            phase = DecoderPEAM(unet, peam_stages(names, {n for i, n in enumerate(names) if i not in keep},
                                                  len(unet.up_blocks)), channels)
        student = UNetStudentSR(copy.deepcopy(teacher.vae), unet, copy.deepcopy(teacher.scheduler),
                                teacher.prompt_embeds.clone(), teacher.convention, teacher.timestep, teacher.tile,
                                teacher.tile_overlap, teacher.latent_factor, phase, kept, report,
                                teacher.lq_residual, teacher.residual_std)
        return student.to(p.device).eval().requires_grad_(False)
    if image_only:
        pruned = TinySRTransformer.from_sd3(backbone, teacher.prompt_embeds, teacher.pooled_prompt_embeds,
                                            teacher.timestep, keep)
        prompts = (None, None)
    else:
        pruned = prune_sd3(backbone, keep)
        prompts = (teacher.prompt_embeds.clone(), teacher.pooled_prompt_embeds.clone())
    if mode == "peam":
        phase = TokenPEAM(pruned, peam_blocks(keep, len(names)), channels)
    student = StudentSR(copy.deepcopy(teacher.vae), pruned, teacher.convention, *prompts, teacher.timestep,
                        teacher.tile, teacher.tile_overlap, teacher.latent_factor, phase,
                        [f"transformer_blocks.{i}" for i in keep]).to(p.device)
    if streamline and not image_only:
        student.streamline()
    return student.eval().requires_grad_(False)


def save_student(student: StudentSR | UNetStudentSR, folder: str | Path, extra: dict | None = None) -> Path:
    """Write the diffusers-loadable student folder (see the module docstring)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet = student.backbone_kind == "unet"
    backbone = student.backbone.to_diffusers() if student.streamlined and not student.image_only else student.backbone
    sub = "unet" if unet else "transformer"
    backbone.save_pretrained(folder / sub, safe_serialization=True)
    student.vae.save_pretrained(folder / "vae", safe_serialization=True)
    if not student.image_only:  # an image-only student reads no prompt
        prompts = {"prompt_embeds": student.prompt_embeds.detach().cpu().contiguous()}
        if not unet:
            prompts["pooled_prompt_embeds"] = student.pooled_prompt_embeds.detach().cpu().contiguous()
        save_file(prompts, str(folder / "prompt_embeds.safetensors"))
    if unet:
        student.scheduler.save_pretrained(folder / "scheduler")
    if student.phase is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in student.phase.state_dict().items()},
                  str(folder / "phase_adapter.safetensors"))
    for cfg_file in (folder / sub / "config.json", folder / "vae" / "config.json"):
        # diffusers records where a model was loaded from: a machine-local path that would make the folder's
        # digest differ between identical runs in different work dirs
        data = json.loads(cfg_file.read_text())
        data.pop("_name_or_path", None)
        cfg_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    vae_cls, bb_cls = type(student.vae), type(backbone)
    index = {"_class_name": "SrcompressStudent", "format": FORMAT,
             sub: ["diffusers" if bb_cls.__module__.startswith("diffusers") else bb_cls.__module__, bb_cls.__name__],
             "vae": ["diffusers" if vae_cls.__module__.startswith("diffusers") else vae_cls.__module__,
                     vae_cls.__name__]}
    if unet:
        index["scheduler"] = ["diffusers", type(student.scheduler).__name__]
    meta = {"format": FORMAT, "kind": "student", "backbone": student.backbone_kind,
            "convention": student.convention.as_dict(), "timestep": student.timestep, "tile": student.tile,
            "tile_overlap": student.tile_overlap, "latent_factor": student.latent_factor,
            "streamlined": student.streamlined, "image_only": student.image_only, "tiny_vae": student.tiny_vae,
            "compressed_vae": student.compressed_vae, "phase_adapter": student.phase_mode,
            **({"peam": student.phase.describe()} if student.phase_mode == "peam" else {}),
            "kept_blocks": student.kept, **({"surgery": student.surgery, "lq_residual": student.lq_residual,
                                             "residual_std": student.residual_std} if unet else {}), **(extra or {})}
    (folder / "model_index.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    (folder / "student.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder


def load_student(folder: str | Path, streamline: bool | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> StudentSR | UNetStudentSR:
    """Read a student folder (safetensors only, nothing downloaded); ``streamline`` None = as it was saved."""
    from diffusers import AutoencoderKL, DDPMScheduler, SD3Transformer2DModel, UNet2DConditionModel

    folder = Path(folder)
    meta_path = folder / "student.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"student: missing {meta_path}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"student: {meta_path} has format {meta.get('format')!r}, expected {FORMAT}")
    kind = meta.get("backbone", "sd3")
    if kind not in ("sd3", "unet"):
        raise ValueError(f"student: {meta_path} has backbone {kind!r} (sd3 | unet)")
    common = dict(local_files_only=True, use_safetensors=True, torch_dtype=dtype)
    image_only = bool(meta.get("image_only", False))
    if image_only and streamline is False:
        raise ValueError(f"student: {folder} is image-only (TinySR): it has no un-streamlined form")
    if kind == "unet":
        backbone = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **common)
    elif image_only:
        backbone = TinySRTransformer.from_pretrained(folder, subfolder="transformer", **common)
    else:
        backbone = SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer", **common)
    vae_cls = (SeparableAutoencoderTiny if meta["tiny_vae"] else PrunedAutoencoderKL if meta.get("compressed_vae")
               else AutoencoderKL)
    vae = vae_cls.from_pretrained(folder, subfolder="vae", **common)
    prompts = {} if image_only else load_file(str(folder / "prompt_embeds.safetensors"))
    phase = None
    mode = phase_mode(meta.get("phase_adapter", False))  # folders before PEAM say true for post
    if mode == "peam" and not isinstance(meta.get("peam"), dict):
        raise ValueError(f"student: {meta_path} has phase_adapter peam but no peam record (kind, stages, lq_channels)")
    if mode != "none":
        peam = {"unet": DecoderPEAM, "dit": TokenPEAM}.get(meta.get("peam", {}).get("kind", "unet"))
        phase = (peam(backbone, meta["peam"]["stages"], meta["peam"]["lq_channels"]) if mode == "peam"
                 else PhaseExchangeAdapter(int(backbone.config.in_channels)))
        phase.load_state_dict(load_file(str(folder / "phase_adapter.safetensors")))
    c = meta["convention"]
    conv = LatentConvention(c["scaling_factor"], c["shift_factor"], c["mode"])
    if kind == "unet":
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        student = UNetStudentSR(vae, backbone, scheduler, prompts["prompt_embeds"].to(dtype), conv, meta["timestep"],
                                meta["tile"], meta["tile_overlap"], meta["latent_factor"], phase,
                                meta.get("kept_blocks"), meta.get("surgery"), bool(meta.get("lq_residual", False)),
                                float(meta.get("residual_std", 0.0)))
    else:
        prompt, pooled = (None, None) if image_only else \
            (prompts["prompt_embeds"].to(dtype), prompts["pooled_prompt_embeds"].to(dtype))
        student = StudentSR(vae, backbone, conv, prompt, pooled, meta["timestep"], meta["tile"],
                            meta["tile_overlap"], meta["latent_factor"], phase, meta.get("kept_blocks"))
    if not image_only and (streamline if streamline is not None else meta.get("streamlined", False)):
        student.streamline()
    return student.to(device).eval().requires_grad_(False)
