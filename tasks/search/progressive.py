"""``search.method: pgp_progressive`` — PGP-DiffSR's coarse-to-fine pruning inside the search step
(docs/methods.md §7.3; the rules are ``models/pruning/progressive.py``).

The driver turns the redundancy report into the coarse mask and a plan (``coarse_plan``) and logs the coarse
stage as round 0; the ranks then train the LoRA under that fixed mask and, every ``search.pgp.round_steps``
micro-steps while the mask keeps more blocks than N:M allows, rank 0 re-scores the pruned model, prunes the
``prune_per_round`` least important decoder units and hands the new mask to every rank (``Rounds``). After the
last round ``search.steps`` more micro-steps recover the final mask. Each round is a nested MLflow run under
the search step's run, with its scores, what it pruned and the recovered quality. The result is an ordinary
mask manifest: the student build and the distillation use it unchanged.
"""

from __future__ import annotations

import math

import torch

from srcompress.models.metrics import psnr_y
from srcompress.models.pruning.progressive import (block_stages, coarse_mask, fine_choice, fine_units,
                                                   masked_importance)
from srcompress.tasks.search.config import SearchConfig

DEFAULT_SIGMAS = [0.25, 0.5, 0.75, 1.0]  # a multi-step teacher's report has no σ grid; re-scoring uses this one


def coarse_plan(report: dict, cfg: SearchConfig) -> dict:
    """The coarse mask from the teacher's report (over its blocks, ``report["blocks"]``) and what the fine stage
    must still prune; refused, before any rank starts, when N:M keeps fewer blocks than the coarse stage leaves
    outside the decoder. The ranks check the report's blocks against the teacher they load (``Rounds``)."""
    names = list(report["blocks"])
    score = report["scores"][cfg.pgp.score]
    importance = torch.tensor(score["mean"]) * score["importance_sign"]
    stages = block_stages(names, cfg.m)
    mask = coarse_mask(names, importance, stages, cfg.pgp.coarse_threshold)
    target = cfg.n * len(names) // cfg.m
    kept, decoder = int(mask.sum()), fine_units(names, mask, stages)
    if kept - decoder > target:
        raise ValueError(f"search.method=pgp_progressive: N:M {cfg.n}:{cfg.m} keeps {target} of {len(names)} "
                         f"blocks, but the coarse stage alone keeps {kept - decoder} outside the decoder "
                         f"(one per encoder stage and bottleneck); keep more blocks (search.n) or lower "
                         f"search.pgp.coarse_threshold")
    rounds = math.ceil(max(0, kept - target) / cfg.pgp.prune_per_round)
    record = {"round": 0, "stage": "coarse", "pruned": [n for n, v in zip(names, mask.tolist()) if v < 0.5],
              "kept": [n for n, v in zip(names, mask.tolist()) if v > 0.5],
              "importance": dict(zip(names, importance.tolist())), "recovered_l1": None, "psnr_y": None}
    return {"mask": mask.tolist(), "target": target, "rounds": rounds, "score": cfg.pgp.score,
            "sigmas": report.get("sigmas") or DEFAULT_SIGMAS, "stages": {n: stages[n].key for n in names},
            "coarse": record}


def log_round(tracker, parent_run_id: str, record: dict) -> None:
    """One round as a nested run of the search step's run: what it pruned, the scores it pruned by, and the
    quality the recovered model had before it (None for the coarse stage: nothing was recovered yet)."""
    name = f"pgp-round-{record['round']}"
    params = {"stage": record["stage"], "pruned": ",".join(record["pruned"]) or "-", "kept": len(record["kept"])}
    with tracker.step_run(parent_run_id, name, params, tags={"pgp_round": record["round"],
                                                             "pgp_stage": record["stage"]}) as run_id:
        metrics = {f"score.{n}": v for n, v in record["importance"].items()} | {"kept": len(record["kept"])}
        metrics |= {k: record[k] for k in ("recovered_l1", "psnr_y") if record[k] is not None}
        tracker.log_metrics(run_id, metrics)


class Rounds:
    """The fine stage on a rank: when a round ends, rank 0 measures and re-scores the recovered model, prunes
    decoder units, and every rank adopts the new mask (``torch.distributed`` broadcast)."""

    def __init__(self, plan: dict, cfg: SearchConfig, names: list[str]):
        if list(plan["stages"]) != list(names):
            raise ValueError("search.method=pgp_progressive: the redundancy report's blocks are not the teacher's")
        self.plan, self.cfg, self.names = plan, cfg, names
        self.stages = block_stages(names, cfg.m)
        self.records: list[dict] = [plan["coarse"]]

    @property
    def steps(self) -> int:
        """Micro-steps of the rounds (before the final ``search.steps``)."""
        return self.plan["rounds"] * self.cfg.pgp.round_steps

    def ends_round(self, done: int) -> bool:
        """Whether ``done`` micro-steps complete a round."""
        return done <= self.steps and done % self.cfg.pgp.round_steps == 0

    @torch.no_grad()
    def prune(self, model, lq: torch.Tensor, hq: torch.Tensor, target: torch.Tensor, rank: int,
              dtype: torch.dtype, tracker=None, run_id: str | None = None) -> None:
        import torch.distributed as dist

        payload = [None]
        if rank == 0:
            payload = [self._decide(model, lq, hq, target, dtype)]
            if tracker is not None:
                log_round(tracker, run_id, payload[0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(payload, src=0)
        record = payload[0]
        self.records.append(record)
        mask = torch.tensor([1.0 if n in record["kept"] else 0.0 for n in self.names])
        model.fixed_mask.copy_(mask.to(model.fixed_mask))

    def _decide(self, model, lq, hq, target, dtype) -> dict:
        device = model.fixed_mask.device
        mask = model.fixed_mask.detach().float().cpu()
        n = min(len(lq), self.cfg.pgp.rescore_size)
        lq, hq, target = (t[:n].to(device=device, dtype=dtype) for t in (lq, hq, target))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            z = model(lq, mask=mask)
            l1 = float((z.float() - target.float()).abs().mean())
            psnr = float(psnr_y(model.teacher.decode(z).float(), model.teacher.decode(target).float()).mean())
            importance = masked_importance(model.teacher, model.masker, mask, lq, hq, self.plan["sigmas"],
                                           self.plan["score"]).float().cpu()
        left = int(mask.sum()) - self.plan["target"]
        drop = fine_choice(self.names, importance, mask, self.stages, min(self.cfg.pgp.prune_per_round, left))
        kept = [nm for nm, v in zip(self.names, mask.tolist()) if v > 0.5 and nm not in drop]
        return {"round": len(self.records), "stage": "fine", "pruned": drop, "kept": kept,
                "importance": dict(zip(self.names, importance.tolist())), "recovered_l1": l1, "psnr_y": psnr}
