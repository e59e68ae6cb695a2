"""AdaDiffSR's Dynamic Timestep Sampling Strategy (DTSS): each region's next step size from its gain trends.

Seed (AdaDiffSR §3.3): regions are *stable* (FR rises, NR flat → large skips), *growth* (FR and NR rise →
small steps) or *saturated* (NR drops markedly → keep the best result and exit); a step-skip codebook of four
intervals (5, 10, 15, 20) over T_max = 1000 with a gain threshold τ = 5e-3; labels may change at every step;
NR gains count only in the second half of the trajectory.

Ours (the seed gives the labels and the codebook, not the rule between them): growth takes the smallest
interval; a stable region takes the second, third or fourth by how much its FR gain still moves (> 4τ, > τ,
≤ τ); saturated exits with the estimate *before* the step that lowered NR ("save the best results").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Label = Literal["growth", "stable", "saturated"]


@dataclass(frozen=True)
class DTSSConfig:
    intervals: tuple[int, ...] = (5, 10, 15, 20)
    tau: float = 5e-3
    t_max: int = 1000

    def __post_init__(self):
        if len(self.intervals) != 4 or any(i < 1 for i in self.intervals) or list(self.intervals) != sorted(self.intervals):
            raise ValueError(f"DTSS: intervals must be 4 increasing positive step sizes, got {self.intervals}")
        if self.tau <= 0 or self.t_max < self.intervals[-1]:
            raise ValueError(f"DTSS: tau must be > 0 and t_max >= the largest interval (tau={self.tau}, "
                             f"t_max={self.t_max})")


def late(t: int, cfg: DTSSConfig) -> bool:
    """Second half of the trajectory (t below T_max / 2): where NR metrics are trusted."""
    return t < cfg.t_max / 2


def decide(g_fr: float, g_nr: float, t: int, cfg: DTSSConfig) -> tuple[Label, int | None]:
    """(label, next interval) for a region whose last step at timestep ``t`` had gains (FR, NR); saturated
    regions get no interval (they exit)."""
    if late(t, cfg):
        if g_nr < -cfg.tau:
            return "saturated", None
        if g_nr > cfg.tau and g_fr > cfg.tau:
            return "growth", cfg.intervals[0]
    if g_fr > 4 * cfg.tau:
        return "stable", cfg.intervals[1]
    if g_fr > cfg.tau:
        return "stable", cfg.intervals[2]
    return "stable", cfg.intervals[3]
