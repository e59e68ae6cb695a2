"""TinySR streamlining: with the timestep and the prompt fixed, an SD3 transformer's conditioning is constant,
so it is computed once and cached (docs/methods.md §8.2).

    fast = StreamlinedSD3(transformer, prompt_embeds, pooled_prompt_embeds, timestep=1000.0)
    v = fast(z)                                  # == transformer(z, prompt, pooled, t).sample
    back = fast.to_diffusers()                   # an SD3Transformer2DModel computing exactly ``fast``

What is cached (TinySR ``models/tinysr/tinysd3.py``, reimplemented): ``temb = time_text_embed(t, pooled)``
feeds every adaLN; each block's ``norm1.linear(silu(temb))`` / ``norm1_context.linear(silu(temb))`` and the
final ``norm_out.linear(silu(temb))`` become parameters (``CachedModulation``: trainable in distillation,
like TinySR's buffers but learnable), and ``context_embedder(prompt)`` becomes a buffer. ``time_text_embed``
and ``context_embedder`` are removed.

Deviation from TinySR, on purpose: TinySR also drops the text stream (image-only attention), which changes
the function; here the context tokens stay (as one cached buffer), so the streamlined model equals the
un-streamlined one and can be folded back into the diffusers class: ``to_diffusers`` writes each cached
modulation as a ``Linear`` with zero weight and the modulation as bias — exact for any timestep input.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

Tensor = torch.Tensor


class CachedModulation(nn.Module):
    """Stands in for an adaLN ``linear``: returns its cached output for any input (one row per batch item)."""

    def __init__(self, value: Tensor):
        super().__init__()
        self.value = nn.Parameter(value.detach().clone().reshape(1, -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.value.to(x.dtype).expand(x.shape[0], -1)


class StreamlinedSD3(nn.Module):
    """An SD3 transformer with cached conditioning: ``forward(z)`` → velocity, no timestep or prompt inputs."""

    def __init__(self, transformer: nn.Module, prompt_embeds: Tensor, pooled_prompt_embeds: Tensor,
                 timestep: float = 1000.0):
        super().__init__()
        tr = copy.deepcopy(transformer)
        p = next(tr.parameters())
        with torch.no_grad():
            t = torch.full((1,), float(timestep), dtype=p.dtype, device=p.device)
            temb = tr.time_text_embed(t, pooled_prompt_embeds.to(p))
            context = tr.context_embedder(prompt_embeds.to(p))
            act = nn.functional.silu(temb)
            for block in tr.transformer_blocks:
                block.norm1.linear = CachedModulation(block.norm1.linear(act))
                block.norm1_context.linear = CachedModulation(block.norm1_context.linear(act))
            tr.norm_out.linear = CachedModulation(tr.norm_out.linear(act))
        self.config = tr.config  # patch size / pos-embed limits, read by tiling and efficiency code
        self.pos_embed, self.transformer_blocks = tr.pos_embed, tr.transformer_blocks
        self.norm_out, self.proj_out = tr.norm_out, tr.proj_out
        self.out_channels = tr.out_channels
        self.register_buffer("context", context.detach().clone())
        # What ``to_diffusers`` needs to rebuild the removed modules (kept off the module tree: not weights
        # of the streamlined model, not counted in its parameters).
        keep = lambda v: v.detach() if v.is_meta else v.detach().cpu().clone()  # noqa: E731 (meta: plan's counts)
        self._removed = {name: {k: keep(v) for k, v in getattr(tr, name).state_dict().items()}
                         for name in ("time_text_embed", "context_embedder")}

    def forward(self, hidden_states: Tensor) -> Tensor:
        b, _, height, width = hidden_states.shape
        x = self.pos_embed(hidden_states).contiguous()
        ctx = self.context.to(x.dtype).expand(b, -1, -1)
        dummy = x.new_zeros(b, 1)  # the cached modulations only read its batch size
        for block in self.transformer_blocks:
            ctx, x = block(hidden_states=x, encoder_hidden_states=ctx, temb=dummy)
        x = self.proj_out(self.norm_out(x, dummy))
        p = self.config.patch_size
        x = x.reshape(b, height // p, width // p, p, p, self.out_channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, self.out_channels, height, width)

    def to_diffusers(self) -> nn.Module:
        """The equivalent ``SD3Transformer2DModel`` (cached modulations as zero-weight Linear biases)."""
        from diffusers import SD3Transformer2DModel

        cfg = {k: v for k, v in dict(self.config).items() if not k.startswith("_")}
        cfg["num_layers"] = len(self.transformer_blocks)
        p = next(self.parameters())
        out = SD3Transformer2DModel.from_config(cfg).to(device=p.device)
        if p.dtype != torch.float32:
            out = out.to(dtype=p.dtype)
        state = {}
        for name, value in self.state_dict().items():
            if name == "context":
                continue
            if name.endswith("linear.value"):
                base = name[: -len(".value")]
                state[f"{base}.bias"] = value.reshape(-1)
                state[f"{base}.weight"] = value.new_zeros(out.get_submodule(base).weight.shape)
            else:
                state[name] = value
        for part, sd in self._removed.items():
            state.update({f"{part}.{k}": v.to(p) for k, v in sd.items()})
        out.load_state_dict(state, strict=True)
        return out.eval()
