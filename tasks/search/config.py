"""Typed config of the ``search_pruning`` step (docs/methods.md §7): method, N:M, schedule, LoRA, DeepSpeed."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN
from srcompress.models.pruning.targets import TINYSR_LORA_TARGETS
from srcompress.tasks.common.training import DeepSpeedConfig

Method = Literal["learned", "pgp_progressive", "block_influence", "pgp_cos", "pgp_kl", "removal", "uniform",
                 "random_min", "given"]


class PGPConfig(StrictModel):
    """PGP-DiffSR's progressive pruning (``search.method: pgp_progressive``; docs/methods.md §7.3, our reading):
    the coarse stage from the redundancy report, then rounds that prune decoder units, recover the LoRA and
    re-score the pruned model, until N:M's share of the blocks (or the budget's) is left."""

    score: Literal["pgp_cos", "pgp_kl"] = Field("pgp_cos", description="The PGP redundancy score both stages rank by: Φ_cos or Ψ_KL (analyse_redundancy's, then re-scored on the pruned model each round).")
    coarse_threshold: float | None = Field(None, gt=0, le=1, description="Also keep an encoder / bottleneck block whose score is at least this fraction of the backbone's highest block score (null: exactly one block per encoder stage and bottleneck).")
    prune_per_round: int = Field(1, ge=1, description="Decoder units pruned per fine round.")
    round_steps: int = Field(20, ge=1, description="LoRA-recovery micro-steps after the coarse stage and after each fine round, before re-scoring; search.steps more follow the last round.")
    rescore_size: int = Field(8, ge=2, description="Calibration pairs (of rank 0's share) the pruned model is re-scored and its recovered quality measured on.")


class BudgetConfig(StrictModel):
    """A cost the student must meet: the search chooses N:M (and, given ``vae_widths``, the tiny VAE's width)
    whose student costs within ``tolerance`` below ``value`` (models/student/budget.py: the rule)."""

    metric: Literal["gmacs", "params"] = Field(description="gmacs: MACs of one untiled encode → step → decode pass at size×size px, attention matmuls included, in GMACs; params: the student's parameters (backbone + VAE), a count (341e6, not 341).")
    value: float = Field(gt=0, description="The budget, in the metric's unit.")
    size: int = Field(512, ge=16, description="Square input in pixels the MACs are counted at (must fit one untiled pass of the teacher's transformer).")
    tolerance: float = Field(0.05, gt=0, lt=1, description="The window below the budget a choice must fall in: (1 − tolerance)·value ≤ cost ≤ value.")
    vae_widths: list[int] | None = Field(None, min_length=1, description="Tiny-VAE widths the budget may choose from (needs distill.tiny_vae.enabled and stage 2); null: the width stays distill.tiny_vae.width.")

    @model_validator(mode="after")
    def _check(self) -> "BudgetConfig":
        if self.vae_widths is not None and min(self.vae_widths) < 4:
            raise ValueError(f"vae_widths must be ≥ 4 channels each, got {self.vae_widths}")
        return self


class SearchConfig(StrictModel):
    """TinyFusion / TinySR depth-mask search, or a baseline mask given the same LoRA recovery."""

    method: Method = Field("learned", description="learned (Gumbel N:M search), pgp_progressive (PGP-DiffSR's coarse-to-fine pruning, search.pgp) or a baseline: block_influence / pgp_cos / pgp_kl / removal (top-N per group by the redundancy report), uniform (every other block), random_min (the best of random N:M masks by calibration loss), given (search.given_mask).")
    compare_methods: list[Method] = Field([], description="Route comparison: also search with each of these methods at the same N:M (or budget), and distil each route's student exactly as the main one (evaluation rows student_route_<method>; the main route's row is student). Not with method=given.")
    pgp: PGPConfig = Field(default_factory=PGPConfig, description="method=pgp_progressive: its settings (changing them for another method is refused).")
    given_mask: list[int] | str | None = Field(None, description="method=given: a 0/1 list ([1,0,1,0,…], one entry per prunable block) or the path / store URI of a search result.json; a mask searched for another teacher is rejected.")
    n: int = Field(2, ge=1, description="Blocks kept per group (with search.budget: chosen by the budget instead).")
    m: int = Field(4, ge=1, description="Group size (consecutive blocks); must divide the teacher's prunable blocks (with search.budget: chosen by the budget instead).")
    budget: BudgetConfig | None = Field(None, description="Choose N:M (and the tiny VAE's width) from a cost budget instead of n and m: {metric: gmacs|params, value, size, tolerance, vae_widths}. The choice is logged, tagged in MLflow and kept in the mask manifest.")
    steps: int = Field(200, ge=1, description="Training micro-steps (search, or LoRA recovery for baselines); the optimiser steps every deepspeed.gradient_accumulation of them, τ follows the micro-steps.")
    batch_size: int = Field(4, ge=1, description="Micro-batch per rank.")
    calibration_size: int = Field(64, ge=2, description="Latent-cache pairs used (seeded), split over the ranks.")
    lr: float = Field(1e-4, gt=0, description="LoRA learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0, description="LoRA weight decay (the gates have none).")
    gate_lr_mult: float = Field(10.0, gt=0, description="Gate lr = this × lr (TinyFusion: 10).")
    tau_start: float = Field(4.0, gt=0, description="Gumbel temperature at the first step (linear schedule).")
    tau_end: float = Field(0.1, gt=0, description="Gumbel temperature at the last step.")
    scaling: float = Field(1e2, gt=0, description="Logit scaling inside the Gumbel softmax (TinyFusion: 1e2).")
    init: float = Field(0.02, description="Initial logit of every option (TinyFusion: 0.02).")
    ema: float = Field(0.999, ge=0, lt=1, description="EMA decay of the logits; the final mask is the argmax of the EMA logits.")
    dynamic: bool = Field(True, description="TinySR dynamic inter-block activation (neighbour option).")
    expansion_corrosion: bool = Field(True, description="TinySR expansion-corrosion across paired groups (needs dynamic).")
    decision: Literal["tinysr", "group"] = Field("tinysr", description="How the final mask is read from the EMA gates: tinysr = per pair of groups the ∩/keep/∪ transformation with the largest EMA pair-gate probability, then each group's option (depth can move across groups); group = each group's best option (TinyFusion, always N of M; the ablation). Same without expansion_corrosion.")
    perceptual_weight: float = Field(0.0, ge=0, description="Weight of ST-LPIPS between the decoded student and decoded teacher latents, added to the L1 (0 = latent L1 only; ST-LPIPS weights ship in stlpips-pytorch).")
    lora_rank: int = Field(8, ge=0, description="LoRA rank on the masked backbone (0 = no LoRA).")
    lora_alpha: int = Field(8, ge=1, description="LoRA alpha.")
    lora_targets: list[str] = Field(list(TINYSR_LORA_TARGETS), min_length=1, description="peft target module names (TinySR's list by default).")
    random_candidates: int = Field(16, ge=1, description="random_min: how many random N:M masks are scored.")
    num_workers: int = Field(1, ge=1, description="DeepSpeed ranks, launched as Ray actors on the encode step's Ray (local, or run.ray_address).")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig, description="DeepSpeed engine settings.")
    log_every: int = Field(10, ge=1, description="Log loss, τ and per-group option probabilities to MLflow every N steps.")
    checkpoint_every: int = Field(50, ge=0, description="DeepSpeed checkpoint (+ gates / EMA / RNG) to the store every N steps; 0 = never.")
    seed: int = Field(0, description="Seed of the calibration draw, LoRA init, batches and Gumbel noise (per rank).")
    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="auto | cpu | cuda; null = run.device (each rank its own GPU, as Ray assigns it).")

    # Change how often things are logged or saved, or where they run — never the result.
    NOT_RESULTS: ClassVar[frozenset[str]] = frozenset({"log_every", "checkpoint_every", "device", "compare_methods"})

    @model_validator(mode="after")
    def _check(self) -> "SearchConfig":
        if self.n > self.m:
            raise ValueError(f"n={self.n} > m={self.m}: an N:M group keeps at most M blocks")
        if (self.method == "given") != (self.given_mask is not None):
            raise ValueError("given_mask is required with method=given, and only then")
        if self.budget is not None and self.method == "given":
            raise ValueError("search.budget chooses N:M for a search or a baseline; method=given takes its mask as is")
        if self.method in self.compare_methods or "given" in self.compare_methods:
            raise ValueError(f"compare_methods {self.compare_methods}: list other routes than method={self.method} "
                             f"(and not given, which needs its own mask)")
        if self.pgp != PGPConfig() and "pgp_progressive" not in (self.method, *self.compare_methods):
            raise ValueError("search.pgp configures method=pgp_progressive only")
        if self.expansion_corrosion and not self.dynamic:
            raise ValueError("expansion_corrosion needs dynamic (the neighbour option it expands into)")
        return self
