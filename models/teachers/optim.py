"""The optimiser step the tiny teacher's training phases share (bootstrap restorer and VAE, the pca VAE's fit)."""

from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int, pct_start: float = 0.1):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=pct_start)


def update(opt, sched, loss: Tensor, losses: list[float], step: int, total: int, name: str,
           log: Callable[[str], None]) -> None:
    """One optimiser step + the running-loss log line every fifth of the phase."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
    if (step + 1) % max(1, total // 5) == 0:
        log(f"{name} {step + 1}/{total}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
