"""Load and save one-step teachers as local diffusers-format folders.

Folder layout (what ``save_teacher`` writes and ``load_teacher`` reads):

    <teacher>/vae/{config.json, diffusion_pytorch_model.safetensors}
    <teacher>/transformer/…   (SD3 teacher)   or   <teacher>/unet/… + <teacher>/scheduler/scheduler_config.json
    <teacher>/prompt_embeds.safetensors        prompt_embeds (1, L, D) [+ pooled_prompt_embeds (1, P) for SD3]
    <teacher>/lora/{adapter_config.json, adapter_model.safetensors}   optional peft LoRA, merged at load
    <teacher>/teacher.json                     optional: kind, latent mode, shift usage, timestep, latent tiling

Only safetensors are read (``use_safetensors=True``): untrusted pickles are never unpickled. Nothing is
downloaded (``local_files_only=True``). Missing or mismatched files raise ``TeacherLoadError`` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from srcompress.models.teachers.base import LatentConvention, OneStepTeacher
from srcompress.models.teachers.sd3 import SD3OneStepTeacher
from srcompress.models.teachers.unet import UNetOneStepTeacher

PROMPT_FILE = "prompt_embeds.safetensors"
NO_LORA = "none"  # `lora="none"`: merge nothing, even if the folder ships a lora/


class TeacherLoadError(FileNotFoundError):
    """A teacher folder is missing a file or its files do not fit together."""


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise TeacherLoadError(f"teacher: missing {what}: {path}")
    return path


def _weights(sub: Path) -> None:
    _need(sub / "config.json", f"{sub.name} config")
    if not any(sub.glob("*.safetensors")):
        bins = [p.name for p in sub.glob("*.bin")]
        hint = f" (found {bins}: convert them to safetensors; pickled weights are not loaded)" if bins else ""
        raise TeacherLoadError(f"teacher: missing {sub.name} weights: {sub}/diffusion_pytorch_model.safetensors{hint}")


MULTISTEP_PIPELINES = ("StableDiffusionUpscalePipeline", "LDMSuperResolutionPipeline")


def detect_kind(folder: Path) -> Literal["sd3", "unet", "multistep"]:
    if (folder / "transformer").is_dir():
        return "sd3"
    index = folder / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") in MULTISTEP_PIPELINES:
        return "multistep"
    if (folder / "unet").is_dir():
        return "unet"
    raise TeacherLoadError(f"teacher: {folder} has neither transformer/ (SD3) nor unet/ (SD-UNet)")


def load_teacher(folder: str | Path, *, kind: str = "auto", latent_mode: str | None = None,
                 use_shift_factor: bool | None = None, timestep: float | None = None,
                 lora: str | Path | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", steps: int | None = None,
                 scheduler: str | None = None, one_step: bool = False) -> OneStepTeacher:
    """Build a frozen, eval-mode teacher from a local folder on ``device``. Arguments override ``teacher.json``.

    ``lora``: a peft LoRA folder to merge; None = ``<folder>/lora`` if present; ``"none"`` = merge nothing.
    ``steps`` / ``scheduler`` (multi-step teachers): inference steps, and ddim | ddpm | dpm instead of the
    folder's own scheduler class (its noise schedule is kept). ``one_step``: a multi-step teacher's one-step
    form (``MultiStepTeacher.one_step``: what search and distillation start the student from); no effect on
    one-step teachers.
    """
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not folder.is_dir():
        raise TeacherLoadError(f"teacher: folder not found: {folder}")
    meta = json.loads((folder / "teacher.json").read_text()) if (folder / "teacher.json").is_file() else {}
    kind = meta.get("kind", "auto") if kind == "auto" else kind
    kind = detect_kind(folder) if kind == "auto" else kind
    common = dict(local_files_only=True, use_safetensors=True, torch_dtype=dtype)
    _weights(folder / "vae")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **common)
    if kind == "multistep":
        from srcompress.models.teachers.multistep_loader import load_multistep

        teacher = load_multistep(folder, vae, meta, common, latent_mode=latent_mode, steps=steps,
                                 scheduler=scheduler, lora=resolve_lora(folder, lora), merge=_merge_lora)
        teacher = teacher.one_step() if one_step else teacher
        teacher.eval().requires_grad_(False)
        return teacher.to(device)
    prompts_path = _need(folder / PROMPT_FILE, "fixed prompt embeddings")
    prompts = load_file(str(prompts_path))
    if "prompt_embeds" not in prompts:
        raise TeacherLoadError(f"teacher: {prompts_path} has no 'prompt_embeds' tensor (keys: {sorted(prompts)})")
    mode = latent_mode or meta.get("latent_mode", "mean")
    # TSD-SR encodes with `* scaling_factor` and no shift, although the SD3 VAE defines one (docs/methods.md §2).
    shift = use_shift_factor if use_shift_factor is not None else meta.get("use_shift_factor", False)
    conv = LatentConvention(float(vae.config.scaling_factor),
                            float(vae.config.shift_factor or 0.0) if shift else 0.0, mode)
    if kind == "sd3":
        from diffusers import SD3Transformer2DModel

        _weights(folder / "transformer")
        backbone = SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer", **common)
        if "pooled_prompt_embeds" not in prompts:
            raise TeacherLoadError(f"teacher: {prompts_path} has no 'pooled_prompt_embeds' (needed by SD3)")
        backbone = _merge_lora(backbone, resolve_lora(folder, lora))
        teacher: OneStepTeacher = SD3OneStepTeacher(
            vae, backbone, prompts["prompt_embeds"].to(dtype), prompts["pooled_prompt_embeds"].to(dtype), conv,
            timestep=timestep if timestep is not None else meta.get("timestep", 1000.0),
            tile=meta.get("tile"), tile_overlap=meta.get("tile_overlap", 8))
    elif kind == "unet":
        from diffusers import DDPMScheduler, UNet2DConditionModel

        _weights(folder / "unet")
        backbone = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **common)
        _need(folder / "scheduler" / "scheduler_config.json", "scheduler config")
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        backbone = _merge_lora(backbone, resolve_lora(folder, lora))
        teacher = UNetOneStepTeacher(vae, backbone, scheduler, prompts["prompt_embeds"].to(dtype), conv,
                                     timestep=int(timestep if timestep is not None else meta.get("timestep", 999)),
                                     tile=meta.get("tile"), tile_overlap=meta.get("tile_overlap", 8),
                                     lq_residual=bool(meta.get("lq_residual", False)),
                                     residual_std=float(meta.get("residual_std", 0.0)))
    else:
        raise TeacherLoadError(f"teacher: unknown kind {kind!r} (sd3 | unet | multistep)")
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def _default_lora(folder: Path) -> Path | None:
    return folder / "lora" if (folder / "lora").is_dir() else None


def resolve_lora(folder: Path, lora: str | Path | None) -> Path | None:
    """The LoRA folder to merge: ``lora`` if given, ``None`` → ``<folder>/lora`` if present, ``"none"`` → no LoRA."""
    if lora is not None and str(lora) == NO_LORA:
        return None
    return Path(lora) if lora is not None else _default_lora(folder)


def _merge_lora(backbone: torch.nn.Module, lora: Path | None) -> torch.nn.Module:
    """Merge a peft LoRA adapter into the backbone's weights (TSD-SR ships LoRA on top of SD3)."""
    if lora is None:
        return backbone
    lora = Path(lora)
    _need(lora / "adapter_config.json", "LoRA adapter config")
    if not (lora / "adapter_model.safetensors").is_file():
        raise TeacherLoadError(f"teacher: missing LoRA weights: {lora}/adapter_model.safetensors")
    from peft import PeftModel

    try:
        merged = PeftModel.from_pretrained(backbone, str(lora)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise TeacherLoadError(f"teacher: LoRA at {lora} does not fit the backbone: {exc}") from None
    return merged


def save_teacher(teacher: OneStepTeacher, folder: str | Path) -> Path:
    """Write a teacher folder that ``load_teacher`` reads back (safetensors only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    teacher.vae.save_pretrained(folder / "vae", safe_serialization=True)
    tensors = {"prompt_embeds": teacher.prompt_embeds.contiguous()}
    meta = {"kind": teacher.kind, "latent_mode": teacher.convention.mode,
            "use_shift_factor": teacher.convention.shift_factor != 0.0, "timestep": teacher.timestep,
            "tile": teacher.tile, "tile_overlap": teacher.tile_overlap}
    if teacher.kind == "multistep":
        from srcompress.models.teachers.multistep_loader import save_multistep_extras

        meta |= save_multistep_extras(teacher, folder)
    elif isinstance(teacher, SD3OneStepTeacher):
        teacher.backbone.save_pretrained(folder / "transformer", safe_serialization=True)
        tensors["pooled_prompt_embeds"] = teacher.pooled_prompt_embeds.contiguous()
    else:
        teacher.backbone.save_pretrained(folder / "unet", safe_serialization=True)
        teacher.scheduler.save_pretrained(folder / "scheduler")
        meta |= {"lq_residual": teacher.lq_residual, "residual_std": teacher.residual_std}
    save_file(tensors, str(folder / PROMPT_FILE))
    (folder / "teacher.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder
