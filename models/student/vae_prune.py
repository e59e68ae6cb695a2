"""TinySR's VAE compression, derived from the teacher's own VAE (docs/methods.md §8.6):

1. **channel pruning** — every channel space of the teacher's ``AutoencoderKL`` wider than ``width`` keeps its
   ``width`` most important channels, the weights of the kept channels copied from the teacher;
2. **attention removed** — the mid-blocks lose their self-attention (``mid_block_add_attention=False``);
3. **SepConv in the encoder only** — every k×k convolution of the encoder becomes depthwise k×k + pointwise 1×1
   (TinySR §3.2: the same change in the decoder hurt its reconstruction).

    vae, report = prune_vae(teacher.vae, width=64)     # PrunedAutoencoderKL, same latent API as the teacher's
    vae.save_pretrained(folder); PrunedAutoencoderKL.from_pretrained(folder)

**Pruning criterion (ours; TinySR names the width, not the criterion).** A *channel space* is a set of
channels that must be kept together: the output of one convolution, or a residual stream that identity
shortcuts carry unchanged through several resnets (those resnets share one kept set, or the residual sums would
add unrelated channels). A channel's importance is the sum of |γ| over every GroupNorm that normalises its
space — the network-slimming criterion (Liu et al., ICCV 2017): in these pre-norm resnets γ is the gain with
which a channel enters the next convolution. Spaces the model's interface fixes (RGB, the latent moments) are
never pruned.

**SepConv initialisation (ours).** A dense kernel W[o, i, :, :] becomes pointwise P[o, i] times depthwise
D[i, :, :]; for each input channel the best such factorisation in the Frobenius norm is the rank-1 SVD of the
(out × k²) slice, so the separable encoder starts as the closest separable map to the pruned dense one.

With ``width`` at least the teacher's widest block, attention kept and no SepConv, the result computes exactly
what the teacher's VAE computes (tested).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from torch import nn

from srcompress.models.student.tiny_vae import SeparableConv2d

Tensor = torch.Tensor


class PrunedAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` whose encoder convolutions are depthwise-separable when ``separable_encoder``."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
                 up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",), block_out_channels: tuple[int, ...] = (64,),
                 layers_per_block: int = 1, act_fn: str = "silu", latent_channels: int = 4, norm_num_groups: int = 32,
                 sample_size: int = 32, scaling_factor: float = 0.18215, shift_factor: float | None = None,
                 latents_mean: tuple[float] | None = None, latents_std: tuple[float] | None = None,
                 force_upcast: bool = True, use_quant_conv: bool = True, use_post_quant_conv: bool = True,
                 mid_block_add_attention: bool = True, separable_encoder: bool = False):
        super().__init__(in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
                         up_block_types=up_block_types, block_out_channels=block_out_channels,
                         layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
                         norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, latents_mean=latents_mean, latents_std=latents_std,
                         force_upcast=force_upcast, use_quant_conv=use_quant_conv,
                         use_post_quant_conv=use_post_quant_conv, mid_block_add_attention=mid_block_add_attention)
        if separable_encoder:
            _separate(self.encoder, None)


def _separate(module: nn.Module, dense: nn.Module | None) -> None:
    """Replace every k×k dense conv under ``module`` by a SepConv; with ``dense`` (the same tree, dense), the
    SepConv is initialised from it by the per-input-channel rank-1 SVD."""
    for name, child in list(module.named_children()):
        src = getattr(dense, name) if dense is not None else None
        if isinstance(child, nn.Conv2d) and max(child.kernel_size) > 1 and child.groups == 1:
            sep = SeparableConv2d(child)
            if src is not None:
                _rank1_init(sep, src)
            setattr(module, name, sep)
        else:
            _separate(child, src)


@torch.no_grad()
def _rank1_init(sep: SeparableConv2d, conv: nn.Conv2d) -> None:
    o, i, kh, kw = conv.weight.shape
    w = conv.weight.detach().float().permute(1, 0, 2, 3).reshape(i, o, kh * kw)  # per input channel: (out × k²)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:, :1].sqrt()                                                          # (i, 1)
    sep.pointwise.weight.copy_((u[:, :, 0] * root).T.reshape(o, i, 1, 1))
    sep.depthwise.weight.copy_((vh[:, 0, :] * root).reshape(i, 1, kh, kw))
    if conv.bias is not None:
        sep.pointwise.bias.copy_(conv.bias)


@dataclass
class _Space:
    size: int
    fixed: bool = False
    block: int = 0  # the VAE block (index into block_out_channels) whose width cap applies
    gammas: list[Tensor] = field(default_factory=list)
    keep: Tensor | None = None


class _Plan:
    """Which channel space every parameter's output and input dimensions live in."""

    def __init__(self):
        self.spaces: list[_Space] = []
        self.params: dict[str, tuple[_Space | None, _Space | None]] = {}  # name -> (dim-0 space, dim-1 space)

    def space(self, size: int, fixed: bool = False, block: int = 0) -> _Space:
        self.spaces.append(_Space(int(size), fixed, block))
        return self.spaces[-1]

    def layer(self, prefix: str, module: nn.Module, out: _Space, inp: _Space | None) -> None:
        for pname, _ in module.named_parameters(recurse=False):
            self.params[f"{prefix}.{pname}"] = (out, inp if pname == "weight" else None)

    def norm(self, prefix: str, gn: nn.GroupNorm, sp: _Space) -> None:
        if gn.weight is not None:
            sp.gammas.append(gn.weight.detach().abs().float())
        self.layer(prefix, gn, sp, None)


def _resnet(plan: _Plan, prefix: str, r: nn.Module, inp: _Space, block: int) -> _Space:
    inner = plan.space(r.conv1.out_channels, block=block)
    out = plan.space(r.conv2.out_channels, block=block) if r.conv_shortcut is not None else inp  # identity: one stream
    plan.norm(f"{prefix}.norm1", r.norm1, inp)
    plan.layer(f"{prefix}.conv1", r.conv1, inner, inp)
    plan.norm(f"{prefix}.norm2", r.norm2, inner)
    plan.layer(f"{prefix}.conv2", r.conv2, out, inner)
    if r.conv_shortcut is not None:
        plan.layer(f"{prefix}.conv_shortcut", r.conv_shortcut, out, inp)
    return out


def _mid(plan: _Plan, prefix: str, mid: nn.Module, cur: _Space, block: int) -> _Space:
    cur = _resnet(plan, f"{prefix}.resnets.0", mid.resnets[0], cur, block)
    for k in range(len(mid.resnets) - 1):
        attn = mid.attentions[k] if k < len(mid.attentions) else None  # None where a VAE was built without
        if attn is not None:
            plan.norm(f"{prefix}.attentions.{k}.group_norm", attn.group_norm, cur)
            for lin in ("to_q", "to_k", "to_v"):
                plan.layer(f"{prefix}.attentions.{k}.{lin}", getattr(attn, lin), cur, cur)
            plan.layer(f"{prefix}.attentions.{k}.to_out.0", attn.to_out[0], cur, cur)
        cur = _resnet(plan, f"{prefix}.resnets.{k + 1}", mid.resnets[k + 1], cur, block)
    return cur


def _stages(plan: _Plan, prefix: str, blocks: nn.ModuleList, samplers: str, cur: _Space, reverse: bool) -> _Space:
    """Down- or up-blocks: their resnets, then the resampling conv (a new space: no shortcut carries it).
    ``reverse``: the decoder's up-blocks run through ``block_out_channels`` backwards."""
    for b, block in enumerate(blocks):
        idx = len(blocks) - 1 - b if reverse else b
        for j, r in enumerate(block.resnets):
            cur = _resnet(plan, f"{prefix}.{b}.resnets.{j}", r, cur, idx)
        for j, rs in enumerate(getattr(block, samplers) or []):
            nxt = plan.space(rs.conv.out_channels, block=idx)
            plan.layer(f"{prefix}.{b}.{samplers}.{j}.conv", rs.conv, nxt, cur)
            cur = nxt
    return cur


def _plan(vae: AutoencoderKL) -> _Plan:
    plan = _Plan()
    enc, dec = vae.encoder, vae.decoder
    last = len(vae.config.block_out_channels) - 1
    cur = plan.space(enc.conv_in.out_channels, block=0)
    plan.layer("encoder.conv_in", enc.conv_in, cur, plan.space(enc.conv_in.in_channels, fixed=True))
    cur = _stages(plan, "encoder.down_blocks", enc.down_blocks, "downsamplers", cur, reverse=False)
    cur = _mid(plan, "encoder.mid_block", enc.mid_block, cur, last)
    plan.norm("encoder.conv_norm_out", enc.conv_norm_out, cur)
    moments = plan.space(enc.conv_out.out_channels, fixed=True)
    plan.layer("encoder.conv_out", enc.conv_out, moments, cur)
    if vae.quant_conv is not None:
        plan.layer("quant_conv", vae.quant_conv, moments, moments)
    latent = plan.space(dec.conv_in.in_channels, fixed=True)
    if vae.post_quant_conv is not None:
        plan.layer("post_quant_conv", vae.post_quant_conv, latent, latent)
    cur = plan.space(dec.conv_in.out_channels, block=last)
    plan.layer("decoder.conv_in", dec.conv_in, cur, latent)
    cur = _mid(plan, "decoder.mid_block", dec.mid_block, cur, last)
    cur = _stages(plan, "decoder.up_blocks", dec.up_blocks, "upsamplers", cur, reverse=True)
    plan.norm("decoder.conv_norm_out", dec.conv_norm_out, cur)
    plan.layer("decoder.conv_out", dec.conv_out, plan.space(dec.conv_out.out_channels, fixed=True), cur)
    return plan


def width_caps(teacher_vae: AutoencoderKL, width: int | Sequence[int]) -> list[int]:
    """The channel cap of each VAE block: ``width`` for all (TinySR: 64), or one per block (``[16, 16, 33]``).

    Blocks of equal teacher width share a residual stream (identity shortcuts carry it from one block into the
    next), so per-block caps must keep them equal: a ValueError says which blocks otherwise."""
    teacher = [int(c) for c in teacher_vae.config.block_out_channels]
    caps = [int(width)] * len(teacher) if isinstance(width, (int, float)) else [int(w) for w in width]
    if len(caps) != len(teacher) or min(caps) < 1:
        raise ValueError(f"VAE compression: width must be a positive channel count or one per block of the "
                         f"teacher's VAE {teacher}, got {width}")
    kept = [min(c, w) for c, w in zip(teacher, caps)]
    for b in range(len(teacher) - 1):
        if teacher[b] == teacher[b + 1] and kept[b] != kept[b + 1]:
            raise ValueError(f"VAE compression: blocks {b} and {b + 1} of the teacher's VAE {teacher} share a "
                             f"residual stream ({teacher[b]} channels); give them the same width, got {list(width)}")
    return caps


def pruned_config(teacher_vae: AutoencoderKL, width: int | Sequence[int], remove_attention: bool = True) -> dict:
    """The compressed VAE's diffusers config (dense encoder): block widths capped at ``width`` (see
    :func:`width_caps`)."""
    cfg = {k: v for k, v in dict(teacher_vae.config).items() if not k.startswith("_")}
    widths = [min(int(c), w) for c, w in zip(cfg["block_out_channels"], width_caps(teacher_vae, width))]
    groups = int(cfg["norm_num_groups"])
    if any(w % groups for w in widths):  # GroupNorm needs groups dividing every width
        groups = math.gcd(groups, *widths)
    cfg.update(block_out_channels=tuple(widths), norm_num_groups=groups,
               mid_block_add_attention=bool(cfg.get("mid_block_add_attention", True)) and not remove_attention,
               separable_encoder=False)
    return cfg


def pruned_architecture(teacher_vae: AutoencoderKL, width: int | Sequence[int] = 64, remove_attention: bool = True,
                        separable_encoder: bool = True) -> PrunedAutoencoderKL:
    """The compressed VAE's architecture without the teacher's weights (built on the current device, ``meta``
    included): what ``srcompress plan`` and the budget count."""
    cfg = pruned_config(teacher_vae, width, remove_attention)
    return PrunedAutoencoderKL(**(cfg | {"separable_encoder": bool(separable_encoder)}))


@torch.no_grad()
def prune_vae(teacher_vae: AutoencoderKL, width: int | Sequence[int] = 64, remove_attention: bool = True,
              separable_encoder: bool = True) -> tuple[PrunedAutoencoderKL, dict]:
    """The teacher's VAE compressed as TinySR: returns the model (teacher's weights on the kept channels) and a
    report (widths before/after, channels kept per space, parameters). ``width``: one cap for every block, or
    one per block (:func:`width_caps`)."""
    caps = width_caps(teacher_vae, width)
    plan = _plan(teacher_vae)
    for sp in plan.spaces:
        k = sp.size if sp.fixed else min(sp.size, caps[sp.block])
        if k == sp.size:
            sp.keep = torch.arange(sp.size)
        else:
            score = torch.stack(sp.gammas).sum(0) if sp.gammas else torch.zeros(sp.size)
            # stable: ties keep the lower index, so the choice does not depend on the sort implementation
            order = sorted(range(sp.size), key=lambda c: (-float(score[c]), c))
            sp.keep = torch.tensor(sorted(order[:k]))
    student = PrunedAutoencoderKL(**pruned_config(teacher_vae, width, remove_attention))
    src = teacher_vae.state_dict()
    state = {}
    for name, target in student.state_dict().items():
        t = src[name]
        out, inp = plan.params.get(name, (None, None))
        if out is not None:
            t = t.index_select(0, out.keep.to(t.device))
        if inp is not None and t.dim() > 1:
            t = t.index_select(1, inp.keep.to(t.device))
        if t.shape != target.shape:
            raise RuntimeError(f"VAE compression: {name} sliced to {tuple(t.shape)}, expected {tuple(target.shape)}")
        state[name] = t.to(target.dtype)
    student.load_state_dict(state)
    if separable_encoder:
        separate_encoder(student)
    report = {"width": width if isinstance(width, int) else list(width), "teacher_widths": list(teacher_vae.config.block_out_channels),
              "widths": list(student.config.block_out_channels), "attention_removed": bool(remove_attention),
              "separable_encoder": bool(separable_encoder), "criterion": "sum of |GroupNorm gamma| per channel space",
              "spaces_pruned": sum(1 for s in plan.spaces if len(s.keep) < s.size),
              "params_teacher": sum(p.numel() for p in teacher_vae.parameters()),
              "params": sum(p.numel() for p in student.parameters())}
    return student.to(next(teacher_vae.parameters()).device), report


def separate_encoder(vae: PrunedAutoencoderKL) -> PrunedAutoencoderKL:
    """Every k×k convolution of the encoder becomes a SepConv started from its dense kernel's rank-1 factors."""
    dense = vae.encoder
    vae.encoder = copy.deepcopy(dense)
    _separate(vae.encoder, dense)
    vae.register_to_config(separable_encoder=True)
    return vae


@torch.no_grad()
def refit_output_convs(vae: PrunedAutoencoderKL, teacher_vae: AutoencoderKL, images: Tensor,
                       parts: Sequence[str] = ("encoder", "decoder")) -> dict[str, float]:
    """Least-squares reconstruction of the two layers after the last nonlinearity (ours, after He et al.,
    ICCV 2017, "Channel Pruning…", whose second step re-fits the next layer to the unpruned output); the
    ``compress_vae`` step's ``vae.refit``. Measured on the embedded teacher's constructed VAE it restores the
    pruned encoder (tested); on the identity VAE at width 4 it did not help the untrained reconstruction.

    Pruning changes more than the dropped channels: a one-group GroupNorm's statistics (and so the scale of
    every kept channel) depend on the channels it normalises. The encoder's ``conv_out`` is re-fitted so that the
    pruned encoder's moments match the teacher's on ``images`` (N, 3, H, W in [−1, 1]), and the decoder's so
    that, decoding the teacher's latents, its output matches the teacher decoder's — each a linear least-squares
    problem (normal equations in float64, accumulated image by image). Dense convolutions: call before
    :func:`separate_encoder`. Returns the RMS error of both outputs before and after."""
    out = {}
    lat = teacher_vae.encode(images).latent_dist.mean
    for part, conv, run, reference in (p for p in (
            ("encoder", vae.encoder.conv_out, lambda x: vae.encoder(x), lambda: teacher_vae.encoder(images)),
            ("decoder", vae.decoder.conv_out, lambda z: vae.decode(z).sample, lambda: teacher_vae.decode(lat).sample))
            if p[0] in parts):
        target = reference()
        feats: list[Tensor] = []
        hook = conv.register_forward_hook(lambda m, a, o: feats.append(a[0]))
        inputs = images if part == "encoder" else lat
        before = torch.cat([run(inputs[i:i + 1]) for i in range(len(inputs))])
        hook.remove()
        k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] + 1
        ata = torch.zeros(k, k, dtype=torch.float64, device=images.device)
        aty = torch.zeros(k, conv.out_channels, dtype=torch.float64, device=images.device)
        for f, y in zip(feats, target.split(1)):
            a = F.unfold(f, conv.kernel_size, padding=conv.padding)[0].T.double()     # (L, C·k²)
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)
            yy = y.flatten(2)[0].T.double()                                              # (L, out)
            ata += a.T @ a
            aty += a.T @ yy
        ridge = 1e-9 * ata.diagonal().mean() * torch.eye(k, dtype=ata.dtype, device=ata.device)
        sol = torch.linalg.solve(ata + ridge, aty)
        conv.weight.copy_(sol[:-1].T.reshape(conv.weight.shape).to(conv.weight.dtype))
        conv.bias.copy_(sol[-1].to(conv.bias.dtype))
        after = torch.cat([run(inputs[i:i + 1]) for i in range(len(inputs))])
        out[f"{part}_rms_before"] = float((before - target).pow(2).mean().sqrt())
        out[f"{part}_rms_after"] = float((after - target).pow(2).mean().sqrt())
    return out
