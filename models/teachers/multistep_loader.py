"""Load and save multi-step teachers (``MultiStepTeacher``) as local diffusers folders.

Two layouts are read:

- ours (``save_teacher``): ``vae/ unet/ scheduler/ [low_res_scheduler/] prompt_embeds.safetensors teacher.json``
  with ``kind: multistep`` and the sampler settings (steps, condition, noise level, seed, tiling);
- diffusers' ``StableDiffusionUpscalePipeline`` folder (``model_index.json``, ``unet/ vae/ scheduler/
  low_res_scheduler/ text_encoder/ tokenizer/``): the condition is the LR pixels with noise-level class
  labels. Its fixed prompt (``teacher.json: prompt``, default empty, as SR pipelines run) is encoded once with
  the folder's CLIP text encoder — safetensors only, nothing downloaded — unless
  ``prompt_embeds.safetensors`` is present.

The condition follows from the UNet (``in_channels = 2 · latent`` → LQ latent, ``latent + 3`` → LQ pixels),
so a folder cannot be read with the wrong one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from srcompress.models.teachers.base import LatentConvention
from srcompress.models.teachers.loader import PROMPT_FILE, TeacherLoadError, _weights
from srcompress.models.teachers.multistep import SCHEDULERS, MultiStepTeacher

KNOWN_SCHEDULERS = set(SCHEDULERS.values())


def _scheduler(folder: Path, sub: str, override: str | None = None):
    """The folder's scheduler (its class from ``_class_name``, a known one only), or ``override`` built from the
    same config so the noise schedule stays the model's."""
    import diffusers

    path = folder / sub / "scheduler_config.json"
    if not path.is_file():
        raise TeacherLoadError(f"teacher: missing {sub} config: {path}")
    cfg = json.loads(path.read_text())
    if override and override not in SCHEDULERS:
        raise TeacherLoadError(f"teacher: scheduler must be one of {sorted(SCHEDULERS)}, got {override!r}")
    name = SCHEDULERS[override] if override else cfg.get("_class_name", "DDPMScheduler")
    if name not in KNOWN_SCHEDULERS:
        raise TeacherLoadError(f"teacher: {path} names scheduler {name!r}; supported: {sorted(KNOWN_SCHEDULERS)} "
                     f"(set teacher.scheduler to use one of them with this noise schedule)")
    return getattr(diffusers, name).from_config(cfg)


def _prompt(folder: Path, meta: dict, dtype: torch.dtype) -> torch.Tensor:
    if (folder / PROMPT_FILE).is_file():
        tensors = load_file(str(folder / PROMPT_FILE))
        if "prompt_embeds" not in tensors:
            raise TeacherLoadError(f"teacher: {folder / PROMPT_FILE} has no 'prompt_embeds' tensor "
                                   f"(keys: {sorted(tensors)})")
        return tensors["prompt_embeds"].to(dtype)
    if not ((folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()):
        raise TeacherLoadError(f"teacher: {folder} has neither {PROMPT_FILE} nor text_encoder/ + tokenizer/ to encode "
                     "the fixed prompt with")
    from transformers import CLIPTextModel, CLIPTokenizer

    if not any((folder / "text_encoder").glob("*.safetensors")):
        raise TeacherLoadError(f"teacher: missing text_encoder weights (safetensors): {folder / 'text_encoder'}")
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    enc = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, use_safetensors=True)
    ids = tok([meta.get("prompt", "")], padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids).last_hidden_state.to(dtype)


def load_multistep(folder: Path, vae, meta: dict, common: dict, *, latent_mode: str | None, steps: int | None,
                   scheduler: str | None, lora: Path | None, merge: Callable) -> MultiStepTeacher:
    from diffusers import UNet2DConditionModel

    _weights(folder / "unet")
    unet = merge(UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **common), lora)
    latent = int(vae.config.latent_channels)
    if unet.config.in_channels == 2 * latent:
        condition = "latent"
    elif unet.config.in_channels == latent + 3:
        condition = "pixels"
    else:
        raise TeacherLoadError(f"teacher: unet.in_channels={unet.config.in_channels} is neither 2 x {latent} "
                               f"(LQ latent concatenated) nor {latent} + 3 (LQ pixels concatenated)")
    index = json.loads((folder / "model_index.json").read_text()) if (folder / "model_index.json").is_file() else {}
    has_levels = unet.config.num_class_embeds is not None or unet.config.class_embed_type is not None
    noise_level = meta.get("noise_level", 20 if (condition == "pixels" and has_levels) else None)
    if noise_level is not None and not 0 <= int(noise_level) <= int(index.get("max_noise_level", 1000)):
        raise TeacherLoadError(f"teacher: noise_level {noise_level} outside [0, {index.get('max_noise_level', 1000)}]")
    low = _scheduler(folder, "low_res_scheduler") if noise_level is not None else None
    conv = LatentConvention(float(vae.config.scaling_factor), 0.0, latent_mode or meta.get("latent_mode", "mean"))
    dtype = common.get("torch_dtype", torch.float32)
    return MultiStepTeacher(vae, unet, _scheduler(folder, "scheduler", scheduler or meta.get("scheduler")),
                            _prompt(folder, meta, dtype), conv, steps=int(steps or meta.get("steps", 50)),
                            condition=condition, noise_level=noise_level, low_res_scheduler=low,
                            seed=int(meta.get("seed", 0)), tile=meta.get("tile"),
                            tile_overlap=meta.get("tile_overlap", 8), strength=float(meta.get("strength", 1.0)),
                            lq_residual=bool(meta.get("lq_residual", False)),
                            residual_std=float(meta.get("residual_std", 0.0)))


def save_multistep_extras(teacher: MultiStepTeacher, folder: Path) -> dict:
    """Write the UNet and schedulers; return the ``teacher.json`` fields of the sampler."""
    teacher.backbone.save_pretrained(folder / "unet", safe_serialization=True)
    teacher.scheduler.save_pretrained(folder / "scheduler")
    if teacher.low_res_scheduler is not None:
        teacher.low_res_scheduler.save_pretrained(folder / "low_res_scheduler")
    return {"steps": teacher.steps, "condition": teacher.condition, "noise_level": teacher.noise_level,
            "seed": teacher.seed, "strength": teacher.strength, "lq_residual": teacher.lq_residual,
            "residual_std": teacher.residual_std}
