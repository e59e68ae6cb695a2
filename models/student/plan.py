"""What a student would cost before anything is trained: params and MACs of the teacher and its student,
counted on the meta device (no weights, nothing downloaded, seconds for SD3-medium).

    report = plan(keep=nm_keep(24, 2, 4))                 # TSD-SR's SD3-medium teacher, TinySR-style student
    report["teacher"], report["student"]                  # {"params": int, "gmacs": float}, whole models
    plan(SD3_MEDIUM_TRANSFORMER, SD3_MEDIUM_VAE, keep=spread_keep(24, 8), size=1024)

The teacher is TSD-SR's: the SD3-medium MMDiT transformer (24 blocks) and the SD3 ``AutoencoderKL``, run as
in ``SD3OneStepTeacher`` (encode, one transformer step, decode). The student is what ``build_student`` makes
of it: the kept blocks, image-only (``TinySRTransformer``: text stream removed, conditioning cached, TinySR's
streamlining) and with the tiny VAE (``SeparableAutoencoderTiny(**tiny_vae_config(16, 8, width=64, blocks=3))``).
``build`` replaces that default with any ``(teacher, mask) → student`` — the CLI passes the distillation
step's own builder for the config (``tasks/distill/build.py: final_student``), so ``plan`` counts the student
the DAG builds.
Whole-model totals: teacher = VAE encoder + decoder + transformer; student = tiny VAE + streamlined
pruned transformer.

Counting protocol (that of ``models/efficiency.py``): ``torch.utils.flop_counter.FlopCounterMode``,
MACs = FLOPs / 2, batch 1, one untiled pass at ``size``×``size``. Attention runs through PyTorch's *math*
SDPA backend while counting, so its two matmuls are counted on every device (FlopCounterMode has no formula
for the fused CPU kernel ``_scaled_dot_product_flash_attention_for_cpu``: counted on a CPU with the default
backend, attention would read 0). Normalisations, activations and element-wise ops are not counted (as in
every MACs figure in this field).

Text tokens: TSD-SR's fixed prompt embedding has 333 tokens: CLIP-L and CLIP-G padded to 77 tokens
(concatenated on the channel axis) followed by T5 at ``max_length=256`` (``Microtreei/TSD-SR``
``data/process.py``; its README: "SD3 prompt embedding tensors, (333, 4096)"). They enter every joint
attention of a student that keeps the text stream (``distill.text_stream: keep``); the image-only student
has none. MACs are reported with the attention matmuls (``gmacs``) and without them (``gmacs_no_attention``:
what TinySR's counter reports, linear layers and convolutions only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from srcompress.models.efficiency import count_macs
from srcompress.models.student.student import StudentSR, build_student
from srcompress.models.student.tiny_vae import SeparableAutoencoderTiny, tiny_vae_config
from srcompress.models.teachers.base import LatentConvention
from srcompress.models.teachers.sd3 import SD3OneStepTeacher

Tensor = torch.Tensor

# Source: huggingface.co/stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json
# (SD3-medium; no qk_norm, no dual-attention layers: both arrived with SD3.5).
SD3_MEDIUM_TRANSFORMER: dict = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192,
}
# Source: huggingface.co/stabilityai/stable-diffusion-3-medium-diffusers, vae/config.json.
SD3_MEDIUM_VAE: dict = {
    "in_channels": 3, "out_channels": 3, "act_fn": "silu", "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024,
    "scaling_factor": 1.5305, "shift_factor": 0.0609, "force_upcast": True, "latents_mean": None,
    "latents_std": None, "use_quant_conv": False, "use_post_quant_conv": False,
}
# 77 CLIP tokens + 256 T5 tokens (TSD-SR data/process.py; see the module docstring).
TSDSR_TEXT_TOKENS = 77 + 256
# The student's tiny VAE (TinySR's layout: TAESD widths 64, 3 blocks per stage, depthwise-separable convs).
TINY_VAE = {"width": 64, "blocks": 3}
# TinySR's final student (paper Table 1, row "Ours": 341M params, 427 GMACs, 26 ms at 512x512, 5.68x faster than
# TSD-SR). Table 4's 516M is the count before the modulation pre-cache, not the final model.
TINYSR_REPORTED = {"params": 341_000_000, "gmacs": 427.0, "size": 512, "speedup": 5.68}


# -- which blocks -----------------------------------------------------------------------------------------
def nm_keep(num_blocks: int, n: int, m: int) -> list[int]:
    """N:M depth pattern: the first ``n`` of every group of ``m`` consecutive blocks."""
    if not 1 <= n <= m or num_blocks % m:
        raise ValueError(f"N:M keep {n}:{m} needs 1 <= n <= m and m dividing the {num_blocks} blocks")
    return [g + j for g in range(0, num_blocks, m) for j in range(n)]


def spread_keep(num_blocks: int, k: int) -> list[int]:
    """``k`` blocks evenly spaced over ``num_blocks``, the first and the last included (k > 1)."""
    if not 1 <= k <= num_blocks:
        raise ValueError(f"keep must be between 1 and {num_blocks} (the teacher's blocks), got {k}")
    if k == 1:
        return [0]
    return [math.floor(i * (num_blocks - 1) / (k - 1) + 0.5) for i in range(k)]


def keep_to_mask(keep: list[int], num_blocks: int) -> list[int]:
    return [1 if i in set(keep) else 0 for i in range(num_blocks)]


def parse_mask(raw: bytes | str | list, num_blocks: int, source: str = "mask") -> list[int]:
    """A search ``result.json`` (its ``"mask"`` list) or a bare JSON list of 0/1, one entry per block."""
    data = raw
    if isinstance(raw, (bytes, str)):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"{source}: not JSON ({exc})") from None
    if isinstance(data, dict):
        if "mask" not in data:
            raise ValueError(f"{source}: a JSON object without a 'mask' list (keys: {sorted(data)[:8]})")
        data = data["mask"]
    if not isinstance(data, list) or any(v not in (0, 1) or isinstance(v, bool) for v in data):
        raise ValueError(f"{source}: the mask must be a list of 0/1 entries")
    if len(data) != num_blocks:
        raise ValueError(f"{source}: the mask has {len(data)} entries, the teacher has {num_blocks} blocks")
    if not any(data):
        raise ValueError(f"{source}: the mask keeps no block")
    return [int(v) for v in data]


# -- models on the meta device --------------------------------------------------------------------------
class _MetaSafe(TorchFunctionMode):
    """Lets ``build_student`` run under ``torch.device("meta")``: tensors made from Python data (a mask list)
    stay on the CPU, where ``.tolist()`` can read them back; ``Tensor.cpu()`` of a meta tensor returns it
    unchanged (``StreamlinedSD3`` keeps CPU copies of the removed modules' weights for ``to_diffusers``: on
    meta there is no data to copy). Entered inside the device context, so it sees each call first."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cpu and args and isinstance(args[0], Tensor) and args[0].is_meta:
            return args[0]
        if (func in (torch.as_tensor, torch.tensor) and kwargs.get("device") is None and args
                and not isinstance(args[0], Tensor)):
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in dict(cfg).items() if not k.startswith("_")}


def build_teacher(transformer_config: dict = SD3_MEDIUM_TRANSFORMER, vae_config: dict = SD3_MEDIUM_VAE,
                  text_tokens: int = TSDSR_TEXT_TOKENS, device: str | torch.device = "meta") -> SD3OneStepTeacher:
    """An ``SD3OneStepTeacher`` from the two diffusers configs, on ``device`` (meta: no memory, no init)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    tcfg, vcfg = _clean(transformer_config), _clean(vae_config)
    with torch.device(device):
        transformer = SD3Transformer2DModel.from_config(tcfg)
        vae = AutoencoderKL.from_config(vcfg)
        prompt = torch.zeros(1, text_tokens, int(transformer.config.joint_attention_dim))
        pooled = torch.zeros(1, int(transformer.config.pooled_projection_dim))
    conv = LatentConvention(float(vae.config.scaling_factor), 0.0, "mean")  # TSD-SR: scale, no shift
    return SD3OneStepTeacher(vae, transformer, prompt, pooled, conv).eval().requires_grad_(False)


def teacher_from_folder(folder: str | Path, device: str | torch.device = "meta") -> SD3OneStepTeacher:
    """The SD3 teacher of a diffusers folder (``vae/`` + ``transformer/`` + ``prompt_embeds.safetensors``) built
    from its configs on ``device`` — its shapes, not its weights: the prompt's token count is read from the
    safetensors header."""
    from safetensors import safe_open

    from srcompress.models.teachers.loader import PROMPT_FILE

    folder = Path(folder)
    if not (folder / "transformer" / "config.json").is_file():
        raise ValueError(f"{folder} is not an SD3-transformer teacher folder (no transformer/config.json); "
                         "only SD3-family teachers have a per-block cost model")
    tcfg = json.loads((folder / "transformer" / "config.json").read_text())
    vcfg = json.loads((folder / "vae" / "config.json").read_text())
    with safe_open(str(folder / PROMPT_FILE), "pt") as f:
        tokens = int(f.get_slice("prompt_embeds").get_shape()[1])
    return build_teacher(tcfg, vcfg, tokens, device)


def check_size(teacher: SD3OneStepTeacher, size: int) -> None:
    """``size`` px must be a multiple of latent factor × patch and fit one untiled pass of the transformer."""
    multiple = teacher.latent_factor * int(teacher.backbone.config.patch_size)
    cap = int(teacher.backbone.config.pos_embed_max_size) * int(teacher.backbone.config.patch_size)
    if size <= 0 or size % multiple:
        raise ValueError(f"the size must be a positive multiple of {multiple} (latent factor × patch), got {size}")
    if size // teacher.latent_factor > cap:
        raise ValueError(f"size {size} exceeds one untiled pass of the transformer "
                         f"({cap} latents = {cap * teacher.latent_factor} px)")


Builder = Callable[[SD3OneStepTeacher, list[int]], StudentSR]


def build_planned_student(teacher: SD3OneStepTeacher, mask: list[int], tiny_vae: dict | None = TINY_VAE,
                          streamline: bool = True, image_only: bool = True, build: Builder | None = None) -> StudentSR:
    """``build(teacher, mask)`` (meta-safe), or by default ``build_student`` image-only and streamlined, with
    the tiny VAE when ``tiny_vae`` is set."""
    device = next(teacher.backbone.parameters()).device
    with torch.device(device), _MetaSafe():
        if build is not None:
            student = build(teacher, mask)
        else:
            student = build_student(teacher, mask, streamline=streamline, image_only=image_only)
            if tiny_vae is not None:
                student.vae = SeparableAutoencoderTiny(**tiny_vae_config(
                    int(teacher.vae.config.latent_channels), teacher.latent_factor, **tiny_vae))
    return student.eval().requires_grad_(False)


# -- counting -------------------------------------------------------------------------------------------
def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _AttentionMacs(TorchFunctionMode):
    """Sums the two matmuls of every ``scaled_dot_product_attention`` call from its shapes:
    ``Q·Kᵀ`` (L·S·d) and ``softmax·V`` (L·S·d_v) per batch and head — FlopCounterMode's own formula."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = args[:3]
            lead = math.prod(q.shape[:-2])
            self.macs += lead * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return func(*args, **(kwargs or {}))


def macs(fn: Callable[[], object], attention: bool = True) -> int:
    """``count_macs`` with attention on the math SDPA backend (counted on every device; module docstring);
    ``attention=False`` leaves the attention matmuls out (TinySR's convention: linear layers and convolutions)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    spy = _AttentionMacs()
    with sdpa_kernel([SDPBackend.MATH]), spy:
        total = count_macs(fn)
    return total if attention else total - spy.macs


def _entry(n_params: int, n_macs: int, **extra) -> dict:
    return {"params": int(n_params), "gmacs": n_macs / 1e9, "macs": int(n_macs), **extra}


def count_model(model, size: int) -> dict:
    """Params and MACs of one encode → one-step restore → decode pass of a one-step model at ``size``²
    (``gmacs`` with the attention matmuls, ``gmacs_no_attention`` without)."""
    device = next(model.backbone.parameters()).device
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad():
        z = model.encode(x)
    parts = {"enc": lambda: model.encode(x), "step": lambda: model.restore_tile(z), "dec": lambda: model.decode(z)}
    full = {k: macs(f) for k, f in parts.items()}
    lin = {k: macs(f, attention=False) for k, f in parts.items()}
    vae_p, bb_p = params(model.vae), params(model.backbone)

    def entry(n_params: int, *keys: str, **extra) -> dict:
        return _entry(n_params, sum(full[k] for k in keys), gmacs_no_attention=sum(lin[k] for k in keys) / 1e9,
                      **extra)

    return {"vae": entry(vae_p, "enc", "dec", encode_gmacs=full["enc"] / 1e9, decode_gmacs=full["dec"] / 1e9),
            "backbone": entry(bb_p, "step", blocks=len(model.backbone.transformer_blocks)),
            "total": entry(vae_p + bb_p, "enc", "step", "dec"), "latent": list(z.shape[1:])}


def plan(transformer_config: dict = SD3_MEDIUM_TRANSFORMER, vae_config: dict = SD3_MEDIUM_VAE,
         keep: list[int] | None = None, mask: list[int] | None = None, size: int = 512,
         text_tokens: int = TSDSR_TEXT_TOKENS, tiny_vae: dict | None = TINY_VAE, image_only: bool = True,
         build: Builder | None = None, device: str | torch.device = "meta") -> dict:
    """Teacher and student costs at ``size``×``size`` (see the module docstring); ``keep`` (block indices) or
    ``mask`` (0/1 per block) chooses the student's blocks; ``build`` (teacher, mask) → student replaces the
    default student (image-only, streamlined, ``tiny_vae``). Returns plain JSON-able data."""
    teacher = build_teacher(transformer_config, vae_config, text_tokens, device)
    n = len(teacher.backbone.transformer_blocks)
    if (keep is None) == (mask is None):
        raise ValueError("plan: give exactly one of keep (block indices) or mask (0/1 per block)")
    if keep is not None and any(not 0 <= int(k) < n for k in keep):
        raise ValueError(f"plan: kept block indices must lie in [0, {n}), got {sorted(keep)}")
    mask = keep_to_mask(sorted(set(keep)), n) if keep is not None else parse_mask(list(mask), n)
    try:
        check_size(teacher, size)
    except ValueError as exc:
        raise ValueError(f"plan: {exc}") from None
    t = count_model(teacher, size)
    student = build_planned_student(teacher, mask, tiny_vae, image_only=image_only, build=build)
    s = count_model(student, size)
    ratio = {"params": t["total"]["params"] / s["total"]["params"], "gmacs": t["total"]["gmacs"] / s["total"]["gmacs"]}
    return {"size": size, "latent": t["latent"], "text_tokens": text_tokens, "blocks": n,
            "kept": [i for i, v in enumerate(mask) if v], "mask": mask,
            "teacher": t["total"], "student": s["total"],
            "teacher_vae": t["vae"], "teacher_transformer": t["backbone"],
            "student_backbone": {**s["backbone"], "streamlined": student.streamlined, "image_only": student.image_only},
            "student_vae": {**s["vae"], "tiny": student.tiny_vae, "compressed": student.compressed_vae,
                            **({"config": _vae_config(student.vae)} if student.tiny_vae else {}),
                            **({"config": _compressed_config(student.vae)} if student.compressed_vae else {})},
            "reduction": ratio, "tinysr_reported": dict(TINYSR_REPORTED),
            "protocol": f"FlopCounterMode FLOPs/2 (math SDPA), batch 1, one untiled pass, on {torch.device(device)}; "
                        "gmacs_no_attention leaves out the attention matmuls (TinySR's counter)"}


def _compressed_config(vae: nn.Module) -> dict:
    cfg = dict(vae.config)
    return {"widths": [int(c) for c in cfg["block_out_channels"]],
            "attention": bool(cfg["mid_block_add_attention"]), "separable_encoder": bool(cfg["separable_encoder"])}


def _vae_config(vae: nn.Module) -> dict:
    cfg = dict(vae.config)
    return {"width": int(cfg["encoder_block_out_channels"][0]), "blocks": int(cfg["num_encoder_blocks"][-1]),
            "separable": bool(cfg.get("separable", True))}
