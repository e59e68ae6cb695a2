"""Build, load and publish the student of a distillation stage (used inside the DeepSpeed ranks).

    student = stage1_student(ctx, cfg, teacher_cfg, teacher_m, mask_m, phase, device)    # from the mask
    student = stage2_student(ctx, stage1_m, device)                                        # from stage 1
    result = publish_student(store, student, f"distill/{key}/stage1", extra)              # rank 0
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load

from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest
from srcompress.models.student.shape import TinyVAEShape, shaped_student, shaped_tiny_vae
from srcompress.models.student.shape import final_student as shaped_final_student
from srcompress.models.student.student import StudentSR, load_student, save_student
from srcompress.models.teachers import OneStepTeacher, load_teacher
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import fetch_teacher_folder, load_kwargs, publish_folder
from srcompress.tasks.distill.config import DistillConfig

Tensor = torch.Tensor


def teacher_on(ctx: RunContext, teacher_cfg: TeacherConfig, teacher_m: Manifest, device) -> OneStepTeacher:
    folder = fetch_teacher_folder(ctx.get_store(), teacher_m, Path(ctx.workdir) / "teachers")
    return load_teacher(folder, **load_kwargs(teacher_cfg, one_step=True), device=device)


def search_result(ctx: RunContext, mask_m: Manifest) -> dict:
    store = ctx.get_store()
    return json.loads(store.get_bytes(store.key_from_uri(mask_m.uri), mask_m.digest))


def search_lora(ctx: RunContext, result: dict) -> dict[str, Tensor]:
    lora = result["lora"]
    tensors = load(ctx.get_store().get_bytes(lora["key"], expected_sha256=lora["sha256"]))
    return {k: v for k, v in tensors.items() if "lora_" in k}


def configured_student(teacher: OneStepTeacher, mask: list, cfg: DistillConfig, lora: dict[str, Tensor] | None = None,
                       lora_rank: int = 0, lora_alpha: int = 1, phase: bool | None = None) -> StudentSR:
    """The student as ``cfg`` shapes it before training (``models/student/shape.py``): the stage-1 build."""
    shape = cfg.shape(getattr(teacher, "kind", ""), phase)
    return shaped_student(teacher, mask, shape, lora, lora_rank, lora_alpha)


def configured_tiny_vae(student: StudentSR, cfg: DistillConfig) -> torch.nn.Module:
    """The tiny VAE stage 2 fits (before its weights are trained or restored)."""
    t = cfg.tiny_vae
    return shaped_tiny_vae(student, TinyVAEShape(t.width, t.blocks, t.separable))


def final_student(teacher: OneStepTeacher, mask: list, cfg: DistillConfig) -> StudentSR:
    """The shape of the student the DAG publishes last (what ``srcompress plan`` counts)."""
    return shaped_final_student(teacher, mask, cfg.shape(getattr(teacher, "kind", "")))


def stage1_student(ctx: RunContext, cfg: DistillConfig, teacher_cfg: TeacherConfig, teacher_m: Manifest,
                   mask_m: Manifest, phase: str, device) -> StudentSR:
    """The pruned student: kept blocks of the teacher (search LoRA merged when configured), streamlined, image-only
    when ``distill.text_stream`` says so."""
    teacher = teacher_on(ctx, teacher_cfg, teacher_m, device)
    result = search_result(ctx, mask_m)
    if result.get("teacher_digest") != teacher_m.digest:
        raise ValueError("distill: the mask was searched for another teacher")
    lora = search_lora(ctx, result) if cfg.merge_search_lora else {}
    return configured_student(teacher, result["mask"], cfg, lora, int(result["lora"]["rank"]),
                              int(result["lora"]["alpha"]), phase).to(device)


def published_student(ctx: RunContext, manifest: Manifest, device, streamline: bool | None = None) -> StudentSR:
    """The student of a ``student`` manifest (a stage's output), downloaded and verified once per machine."""
    folder = fetch_teacher_folder(ctx.get_store(), manifest, Path(ctx.workdir) / "students")
    return load_student(folder, streamline=streamline, device=device)


@torch.no_grad()
def comparison_grid(student: StudentSR, data: dict[str, Tensor], tile: int | None, n: int = 4) -> bytes:
    """PNG rows: LQ | teacher | student | HQ on the centre tile of the first ``n`` training pairs."""
    from srcompress.tasks.common.latents import center_tile

    dev = next(student.parameters()).device
    z_lq = center_tile(data["lq"][:n], tile).to(dev)
    z_t = center_tile(data["teacher"][:n], tile).to(dev)
    cols = [student.decode(z_lq), student.decode(z_t), student.decode(student.restore_tile(z_lq))]
    if "hq" in data:
        f = student.latent_factor
        h, w = data["lq"].shape[-2:]
        t = z_lq.shape[-1]
        top, left = max(0, (h - t) // 2) * f, max(0, (w - t) // 2) * f
        cols.append(data["hq"][:n, :, top : top + t * f, left : left + t * f].float().to(dev) / 255)
    rows = torch.cat([torch.cat(list(c), dim=-1) for c in zip(*cols)], dim=-2)  # (3, n·H, cols·W)
    arr = (rows.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def publish_student(store, student: StudentSR, prefix: str, extra: dict, scratch: Path) -> dict:
    """Save the diffusers-loadable folder, upload it (index + files); returns the index URI and digest."""
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        folder = save_student(student, Path(tmp) / "student", extra)
        uri, digest, index = publish_folder(store, folder, prefix)
    return {"index_uri": uri, "digest": digest, "index_sha256": store.stat(store.key_from_uri(uri)).sha256,
            "files": {rel: e["sha256"] for rel, e in index["files"].items()}}
