"""Learnable N:M depth masks (TinyFusion core) with TinySR's dynamic inter-block activation and
expansion-corrosion (docs/methods.md §7).

    gates = NMGumbelGates(num_blocks=8, n=2, m=4)           # 2 groups of 4 blocks, keep 2 in each
    mask = gates.sample(tau=4.0, generator=g)                # (8,) hard 0/1, straight-through gradients
    gates.update_ema(); gates.final_mask("tinysr")           # TinySR's decision (EMA pair gates, then options)

- Options of a group: every binary vector of length M with N ones (``nm_options``), in a fixed order.
- Logits start at ``init`` (0.02) for every option; a sample is ``gumbel_softmax(logits · scaling, τ, hard)``
  (straight-through: the forward value is one-hot, the gradient the soft one), and the mask is
  ``sample @ options``. One sample per batch, as TinySR (not per example).
- Dynamic inter-block activation (TinySR): with the sampled option m, the neighbour n is the highest-logit
  option that overlaps m but differs from it (ties broken by the seeded generator).
- Expansion-corrosion (TinySR): groups are paired (0,1), (2,3), …; a 3-way pair gate samples an index k and
  the first group takes ``[m∩n, m, m∪n][k]`` while the second takes ``[m∪n, m, m∩n][k]`` — when one group
  loses a block the other gains one, so depth moves across group boundaries. The candidate masks are
  combinations of straight-through one-hots, so gradients reach the group logits and the pair gate.
- The decision (``final_mask``). ``tinysr`` (TinySR §3.1, "the pruning decision"): per pair of groups, the
  transformation (∩ / keep / ∪) with the largest EMA pair-gate probability, applied to each group's best EMA
  option and its neighbour — so the searched depth can move across group boundaries (one group keeps N−k,
  its partner N+k). ``group`` (TinyFusion; the ablation): each group's best EMA option, always N of M.
  Without expansion-corrosion (or with one group) both are the same.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def nm_options(n: int, m: int) -> Tensor:
    """All binary vectors of length ``m`` with ``n`` ones, lexicographic by kept positions: (C(m, n), m)."""
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
    rows = []
    for kept in itertools.combinations(range(m), n):
        row = torch.zeros(m)
        row[list(kept)] = 1.0
        rows.append(row)
    return torch.stack(rows)


def gumbel_hard(logits: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """Hard Gumbel-softmax over the last axis with straight-through gradients, drawn from ``generator``.

    Same estimator as ``torch.nn.functional.gumbel_softmax(hard=True)``, with noise from an explicit CPU
    generator so a search is reproducible on any device and resumable from a saved generator state."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp_(1e-10, 1.0 - 1e-10)
    gumbel = -torch.log(-torch.log(u)).to(logits.device)
    soft = F.softmax((logits + gumbel) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def neighbour_index(logits: Tensor, options: Tensor, chosen: int, generator: torch.Generator | None = None) -> int:
    """TinySR's dynamic inter-block activation: among options that share at least one kept block with
    ``options[chosen]`` but differ from it, the one with the highest logit; ties broken at random."""
    cur = options[chosen]
    overlap = (options * cur).sum(-1) > 0
    differ = (options != cur).any(-1)
    cand = torch.nonzero(overlap & differ).flatten()
    if len(cand) == 0:  # N = M or N = 1 with M = 1: no neighbour exists
        return chosen
    vals = logits.detach().cpu()[cand]
    best = cand[vals == vals.max()]
    if len(best) == 1:
        return int(best[0])
    return int(best[torch.randint(len(best), (1,), generator=generator)])


class NMGumbelGates(nn.Module):
    """Learnable N:M masks over ``num_blocks`` consecutive blocks (groups of M), plus the pair gates."""

    def __init__(self, num_blocks: int, n: int, m: int, init: float = 0.02, scaling: float = 1e2,
                 dynamic: bool = True, expansion_corrosion: bool = True, ema: float = 0.999):
        super().__init__()
        if m <= 0 or num_blocks % m:
            raise ValueError(f"groups of M={m} must divide the {num_blocks} prunable blocks")
        self.n, self.m, self.groups = n, m, num_blocks // m
        self.register_buffer("options", nm_options(n, m))
        self.logits = nn.Parameter(torch.full((self.groups, len(self.options)), float(init)))
        self.pair_logits = nn.Parameter(torch.full((self.groups // 2, 3), float(init)))
        self.register_buffer("ema_logits", self.logits.detach().clone())
        self.register_buffer("ema_pair_logits", self.pair_logits.detach().clone())
        self.scaling, self.dynamic, self.expansion_corrosion, self.ema = scaling, dynamic, expansion_corrosion, ema
        self.last_choice: list[int] = []

    @property
    def num_blocks(self) -> int:
        return self.groups * self.m

    def sample(self, tau: float, generator: torch.Generator | None = None) -> Tensor:
        """One (num_blocks,) mask for the current batch; differentiable w.r.t. the logits (straight-through)."""
        onehot = gumbel_hard(self.logits * self.scaling, tau, generator)  # (G, K)
        options = self.options.to(onehot.dtype)  # bf16 engines cast the logits, not this buffer
        masks = onehot @ options  # (G, M), exactly 0/1 in the forward pass
        self.last_choice = [int(i) for i in onehot.argmax(-1)]
        if not (self.dynamic and self.expansion_corrosion) or self.groups < 2:
            return masks.reshape(-1)
        out = list(masks)
        pair = gumbel_hard(self.pair_logits * self.scaling, tau, generator)  # (G/2, 3)
        for p in range(self.groups // 2):
            a, b = 2 * p, 2 * p + 1
            ends = []
            for g in (a, b):
                k = neighbour_index(self.logits[g], self.options, self.last_choice[g], generator)
                nb = options[k] * onehot[g, self.last_choice[g]]  # the neighbour, on m's gradient path
                ends.append((masks[g] * nb, masks[g] + nb - masks[g] * nb))  # (m∩n, m∪n)
            (a_and, a_or), (b_and, b_or) = ends
            out[a] = pair[p, 0] * a_and + pair[p, 1] * masks[a] + pair[p, 2] * a_or
            out[b] = pair[p, 0] * b_or + pair[p, 1] * masks[b] + pair[p, 2] * b_and
        return torch.stack(out).reshape(-1)

    @property
    def pairs_active(self) -> bool:
        return self.dynamic and self.expansion_corrosion and self.groups >= 2

    @torch.no_grad()
    def update_ema(self) -> None:
        self.ema_logits.mul_(self.ema).add_(self.logits.detach(), alpha=1 - self.ema)
        self.ema_pair_logits.mul_(self.ema).add_(self.pair_logits.detach(), alpha=1 - self.ema)

    @torch.no_grad()
    def probabilities(self, ema: bool = True) -> Tensor:
        """(G, K) option probabilities at τ = 1 of the (EMA) logits × scaling."""
        return F.softmax((self.ema_logits if ema else self.logits) * self.scaling, dim=-1)

    @torch.no_grad()
    def pair_probabilities(self) -> Tensor:
        """(G/2, 3) probabilities of (∩, keep, ∪) for the first group of each pair, from the EMA pair gates."""
        return F.softmax(self.ema_pair_logits * self.scaling, dim=-1)

    @torch.no_grad()
    def final_mask(self, decision: str = "tinysr") -> Tensor:
        """The searched mask (num_blocks,) by ``decision`` (module docstring): ``tinysr`` or ``group``."""
        if decision not in ("tinysr", "group"):
            raise ValueError(f"decision {decision!r}: expected tinysr | group")
        best = self.ema_logits.argmax(-1)
        masks = self.options[best].clone()  # (G, M)
        if decision == "group" or not self.pairs_active:
            return masks.reshape(-1)
        ties = torch.Generator().manual_seed(0)  # a fixed tie-break: the decision is a function of the EMA state
        for p, row in enumerate(self.ema_pair_logits.detach().cpu()):
            # 0: first ∩ / second ∪, 1: keep both, 2: first ∪ / second ∩; a tie that includes "keep" keeps
            # (an untrained pair gate must not move depth)
            top = row == row.max()
            k = 1 if top[1] else int(row.argmax())
            ends = []
            for g in (2 * p, 2 * p + 1):
                m = self.options[best[g]]
                n = self.options[neighbour_index(self.ema_logits[g], self.options, int(best[g]), ties)]
                ends.append((m * n, torch.maximum(m, n)))
            (a_and, a_or), (b_and, b_or) = ends
            masks[2 * p] = (a_and, masks[2 * p], a_or)[k]
            masks[2 * p + 1] = (b_or, masks[2 * p + 1], b_and)[k]
        return masks.reshape(-1)


def tau_at(step: int, total: int, start: float = 4.0, end: float = 0.1) -> float:
    """Linear temperature schedule (TinyFusion: 4 → 0.1 over the search)."""
    if total <= 1:
        return end
    return start + (end - start) * min(step, total - 1) / (total - 1)
