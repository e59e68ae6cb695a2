"""TinySR's image-only student transformer: an SD3 (MMDiT) backbone without its text stream, conditioning cached.

    backbone = TinySRTransformer.from_sd3(teacher.transformer, prompt, pooled, timestep=1000.0, keep=[0, 2, 5, 7])
    v = backbone(z)                                        # velocity; no timestep, no prompt
    backbone.save_pretrained(folder)                       # diffusers ModelMixin: config.json + safetensors
    TinySRTransformer.from_pretrained(folder)              # the same model, nothing else in the folder

What TinySR removes (paper §3.3, "model streamlining"; Table 4 rows "w/o text" and "pre-cache modulation"):
with one fixed timestep and one fixed prompt, a one-step SR transformer needs neither input. The prompt's
tokens are dropped altogether — every kept block loses its context stream (``add_q/k/v_proj``, ``to_add_out``,
``norm_added_q/k``, ``ff_context``, ``norm1_context``, ``norm2_context``) and its joint attention becomes
self-attention over the image tokens — and every adaLN modulation (``norm1.linear(silu(temb))`` of each block,
``norm_out.linear(silu(temb))``) is computed once from the fixed (t, pooled prompt) and kept as a parameter
(trainable, as the rest of the student). ``time_text_embed`` and ``context_embedder`` are gone.

Unlike the context-keeping ``StreamlinedSD3`` this changes the function: the image tokens no longer attend to
the prompt's tokens. The prompt's effect is learned back in distillation (TinySR does the same). The kept
image-stream weights are copied unchanged, so the student starts from the teacher's blocks.

The class is a diffusers ``ModelMixin`` + ``ConfigMixin``: the published folder holds exactly the runtime
parameters (the sin-cos position table is recomputed from the config, so it is not stored: with SD3's
192×192 table it would be 57M numbers that nothing learns). SD3.5's dual-attention blocks are not supported
(TSD-SR and TinySR are SD3-medium, which has none).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

Tensor = torch.Tensor
# The image stream's attention parameters; everything else in an SD3 joint attention belongs to the context.
_IMAGE_ATTN = ("to_q.", "to_k.", "to_v.", "to_out.", "norm_q.", "norm_k.")


class ImageOnlyBlock(nn.Module):
    """The image stream of SD3's ``JointTransformerBlock`` with its adaLN-Zero modulation as a parameter:
    ``x + g_msa·Attn(LN(x)(1+s_msa)+b_msa)``, then ``x + g_mlp·FF(LN(x)(1+s_mlp)+b_mlp)``."""

    def __init__(self, dim: int, heads: int, head_dim: int, qk_norm: str | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        # (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp): AdaLayerNormZero's chunk order
        self.modulation = nn.Parameter(torch.zeros(1, 6 * dim))
        self.attn = Attention(query_dim=dim, cross_attention_dim=None, dim_head=head_dim, heads=heads, out_dim=dim,
                              bias=True, qk_norm=qk_norm, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def forward(self, x: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation.to(x.dtype).chunk(6, dim=1)
        h = self.norm1(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x = x + gate_msa[:, None] * self.attn(h)
        h = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class TinySRTransformer(ModelMixin, ConfigMixin):
    """Image-only, condition-free SD3 backbone (module docstring): ``forward(z) → velocity`` on latents."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, sample_size: int = 128, patch_size: int = 2, in_channels: int = 16,
                 out_channels: int | None = None, num_layers: int = 12, attention_head_dim: int = 64,
                 num_attention_heads: int = 24, pos_embed_max_size: int | None = 192, qk_norm: str | None = None):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim
        self.out_channels = out_channels or in_channels
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=in_channels, embed_dim=dim, pos_embed_max_size=pos_embed_max_size)
        # deterministic from the config: recomputed at load, never stored (module docstring)
        self.pos_embed.register_buffer("pos_embed", self.pos_embed.pos_embed, persistent=False)
        self.transformer_blocks = nn.ModuleList(
            [ImageOnlyBlock(dim, num_attention_heads, attention_head_dim, qk_norm) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Parameter(torch.zeros(1, 2 * dim))  # AdaLayerNormContinuous: (scale, shift)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * self.out_channels, bias=True)

    def forward(self, hidden_states: Tensor) -> Tensor:
        b, _, height, width = hidden_states.shape
        x = self.pos_embed(hidden_states)
        for block in self.transformer_blocks:
            x = block(x)
        scale, shift = self.out_modulation.to(x.dtype).chunk(2, dim=1)
        x = self.proj_out(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])
        p = self.config.patch_size
        x = x.reshape(b, height // p, width // p, p, p, self.out_channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, self.out_channels, height, width)

    @classmethod
    @torch.no_grad()
    def from_sd3(cls, transformer: nn.Module, prompt_embeds: Tensor, pooled_prompt_embeds: Tensor,
                 timestep: float = 1000.0, keep: list[int] | None = None) -> TinySRTransformer:
        """The blocks ``keep`` (teacher indices, ascending; None = all) of an ``SD3Transformer2DModel``, text
        stream removed, modulations cached at (``timestep``, pooled prompt). ``prompt_embeds`` is accepted for
        the interface's sake and only checked: the image-only model never reads the prompt's tokens."""
        cfg = transformer.config
        if cfg.get("dual_attention_layers"):
            raise ValueError("image-only student: SD3.5 dual-attention blocks are not supported "
                             f"(layers {tuple(cfg.dual_attention_layers)}); keep the text stream for this teacher")
        n = len(transformer.transformer_blocks)
        keep = list(range(n)) if keep is None else list(keep)
        if sorted(set(keep)) != keep or not keep or keep[0] < 0 or keep[-1] >= n:
            raise ValueError(f"keep must be ascending distinct block indices in [0, {n}), got {keep}")
        if prompt_embeds.dim() != 3:
            raise ValueError(f"prompt_embeds must be (1, L, D), got {tuple(prompt_embeds.shape)}")
        p = next(transformer.parameters())
        with torch.device(p.device):
            model = cls(sample_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels,
                        out_channels=cfg.out_channels, num_layers=len(keep), attention_head_dim=cfg.attention_head_dim,
                        num_attention_heads=cfg.num_attention_heads, pos_embed_max_size=cfg.pos_embed_max_size,
                        qk_norm=cfg.get("qk_norm"))
        if p.dtype != torch.float32:
            model = model.to(dtype=p.dtype)
        t = torch.full((1,), float(timestep), dtype=p.dtype, device=p.device)
        act = nn.functional.silu(transformer.time_text_embed(t, pooled_prompt_embeds.to(p)))
        state = {f"pos_embed.{k}": v for k, v in transformer.pos_embed.state_dict().items() if k != "pos_embed"}
        state |= {f"proj_out.{k}": v for k, v in transformer.proj_out.state_dict().items()}
        state["out_modulation"] = transformer.norm_out.linear(act)
        for new, old in enumerate(keep):
            block = transformer.transformer_blocks[old]
            state[f"transformer_blocks.{new}.modulation"] = block.norm1.linear(act)
            state |= {f"transformer_blocks.{new}.attn.{k}": v for k, v in block.attn.state_dict().items()
                      if k.startswith(_IMAGE_ATTN)}
            state |= {f"transformer_blocks.{new}.ff.{k}": v for k, v in block.ff.state_dict().items()}
        model.load_state_dict(state, strict=True)
        theirs = transformer.pos_embed.pos_embed
        if not theirs.is_meta and not torch.equal(theirs.to(model.pos_embed.pos_embed), model.pos_embed.pos_embed):
            raise ValueError("image-only student: the teacher's position table is not SD3's sin-cos table; "
                             "this student recomputes it from the config and would change the function")
        return model.eval()
