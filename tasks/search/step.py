"""The ``search_pruning`` DAG step: which blocks the student keeps — learned, or a baseline — plus its LoRA.

    srcompress run --config configs/tiny.yaml --until search_pruning [--set search.num_workers=2]

The Prefect task is the driver: it computes a baseline mask if one is asked for, starts (or joins) Ray and
runs ``tasks/search/worker.py`` on ``search.num_workers`` DeepSpeed ranks as Ray actors
(``infra/ray_cluster.py: train_on_ray``), then turns rank 0's published result into the ``mask`` manifest, plots and MLflow records.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version
from srcompress.infra.ray_cluster import train_on_ray
from srcompress.models.device import resolve_device
from srcompress.models.pruning.masks import nm_options
from srcompress.models.pruning.redundancy import top_k_mask
from srcompress.models.student.budget import budget_choice, fmt_cost
from srcompress.models.student.plan import teacher_from_folder
from srcompress.models.student.shape import StudentShape
from srcompress.tasks.common.latents import calibration_subset, center_tile
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import fetch_teacher_shapes, load_settings
from srcompress.tasks.search.config import SearchConfig
from srcompress.tasks.search.plots import write_plots
from srcompress.tasks.search.progressive import coarse_plan, log_round
from srcompress.tasks.search.worker import build, search_loop

STEP = "search_pruning"
SCORE_OF = {"block_influence": "block_influence", "pgp_cos": "pgp_cos", "pgp_kl": "pgp_kl", "removal": "removal_l1"}


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def step_config_hash(cfg: SearchConfig, teacher_cfg: TeacherConfig, shape: StudentShape | None = None) -> str:
    """The search settings (N:M as run) and the teacher's load settings; with a budget also the student shape
    it counted (another shape can choose another N:M)."""
    doc = {"search": cfg.model_dump(mode="json", exclude=set(cfg.NOT_RESULTS)), "teacher": load_settings(teacher_cfg)}
    if shape is not None:
        doc["student_shape"] = shape.to_dict()
    return canonical_hash(doc)


def per_group_top(importance: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` most important blocks of every group of ``m`` (baselines respect the N:M structure)."""
    return torch.cat([top_k_mask(importance[g : g + m], n) for g in range(0, len(importance), m)])


def read_report(ctx: RunContext, cfg: SearchConfig, redundancy: Manifest | None) -> dict:
    if redundancy is None:
        raise ValueError(f"search.method={cfg.method} needs the analyse_redundancy report")
    return json.loads(ctx.get_store().get_bytes(ctx.get_store().key_from_uri(redundancy.uri), redundancy.digest))


def pgp_plan(ctx: RunContext, cfg: SearchConfig, redundancy: Manifest | None) -> dict:
    """pgp_progressive's coarse stage, from the redundancy report (``progressive.coarse_plan``)."""
    return coarse_plan(read_report(ctx, cfg, redundancy), cfg)


def baseline_mask(ctx: RunContext, cfg: SearchConfig, teacher_cfg: TeacherConfig, teacher: Manifest,
                  latents: Manifest, redundancy: Manifest | None, num_blocks: int) -> list[float] | None:
    if cfg.method == "learned":
        return None
    if cfg.method == "pgp_progressive":  # the coarse stage; the ranks run the fine one
        return pgp_plan(ctx, cfg, redundancy)["mask"]
    if cfg.method == "given":
        return given_mask(ctx, cfg.given_mask, teacher, num_blocks)
    if cfg.method == "uniform":  # every other block within each group
        return [float(i % 2 == 0) if cfg.n * 2 == cfg.m else float(i % cfg.m < cfg.n) for i in range(num_blocks)]
    if cfg.method in SCORE_OF:
        report = read_report(ctx, cfg, redundancy)
        score = report["scores"][SCORE_OF[cfg.method]]
        importance = torch.tensor(score["mean"]) * score["importance_sign"]
        return per_group_top(importance, cfg.n, cfg.m).tolist()
    # random_min (TinyFusion): R random N:M masks, the lowest calibration loss without training
    device = resolve_device(cfg.device or ctx.device, "search.device" if cfg.device else "run.device")
    model = build(ctx, cfg.model_copy(update={"lora_rank": 0}), teacher_cfg, teacher, None, device)
    data = calibration_subset(ctx.get_store(), latents, cfg.calibration_size, cfg.seed)
    tile = getattr(model.teacher, "tile", None)
    lq, target = center_tile(data["lq"], tile).to(device), center_tile(data["teacher"], tile).to(device)
    g, options, best = torch.Generator().manual_seed(cfg.seed), nm_options(cfg.n, cfg.m), (float("inf"), None)
    with torch.no_grad():
        for _ in range(cfg.random_candidates):
            mask = torch.cat([options[int(torch.randint(len(options), (1,), generator=g))]
                              for _ in range(num_blocks // cfg.m)])
            loss = float((model(lq, mask=mask) - target).abs().mean())
            best = min(best, (loss, mask.tolist()), key=lambda t: t[0])
    return best[1]


def given_mask(ctx: RunContext, spec: list[int] | str, teacher: Manifest, num_blocks: int) -> list[float]:
    """A user's mask: a literal 0/1 list, or a previous search's result.json (which must be for this teacher)."""
    if isinstance(spec, list):
        mask = [float(v) for v in spec]
    else:
        store = ctx.get_store()
        raw = store.get_bytes(store.key_from_uri(spec)) if "://" in spec else Path(spec).expanduser().read_bytes()
        result = json.loads(raw)
        if result.get("teacher_digest") != teacher.digest:
            raise ValueError(f"search.given_mask: that mask was searched for teacher "
                             f"{str(result.get('teacher_digest'))[:12]}…, this run's teacher is {teacher.digest[:12]}…")
        mask = [float(v) for v in result["mask"]]
    if len(mask) != num_blocks or set(mask) - {0.0, 1.0}:
        raise ValueError(f"search.given_mask: needs {num_blocks} entries of 0/1 (one per prunable block), got {mask}")
    return mask


@task(name="search-pruning", cache_policy=NO_CACHE, retries=0)
def search(ctx: RunContext, cfg: SearchConfig, teacher_cfg: TeacherConfig, latents: Manifest, teacher: Manifest,
           fixed: list[float] | None, key: str, run_id: str, ray_address: str | None,
           pgp: dict | None = None) -> dict:
    """Launch the ranks; returns rank 0's published result. ``pgp``: pgp_progressive's plan (``coarse_plan``)."""
    log = get_run_logger()
    config = {"ctx": ctx.model_dump_json(), "cfg": cfg.model_dump_json(), "teacher_cfg": teacher_cfg.model_dump_json(),
              "latents": latents.to_json(), "teacher": teacher.to_json(), "key": key, "run_id": run_id,
              "fixed_mask": fixed, "pgp": pgp}
    use_gpu = resolve_device(cfg.device or ctx.device, "search.device").type == "cuda"
    log.info("search_pruning: %s, %d DeepSpeed rank(s) on Ray", cfg.method, cfg.num_workers)
    info = train_on_ray(search_loop, config, cfg.num_workers, use_gpu, f"search-{key[:12]}", ray_address)
    log.info("search_pruning: ranks finished on Ray %s", info)
    store = ctx.get_store()
    return json.loads(store.get_bytes(f"search/{key[:24]}/result.json"))


def check_groups(cfg: SearchConfig, teacher: Manifest) -> int:
    """The teacher's prunable blocks, refused unless ``search.m`` divides them (a budget chooses an M that
    does). The flow calls this as soon as the teacher is known (an imported teacher's depth is not known at
    config load), before the encode step."""
    blocks = int(teacher.extra.get("prunable_blocks", 0))
    if blocks and blocks % cfg.m and cfg.budget is None:
        raise ValueError(f"search.m={cfg.m} must divide the teacher's {blocks} prunable blocks")
    return blocks


def budget_nm(ctx: RunContext, cfg: SearchConfig, teacher: Manifest, shape: StudentShape | None) -> dict:
    """``search.budget``: the N:M (and tiny-VAE width) whose student — as ``shape`` builds it from this teacher,
    counted on the meta device — meets the budget (``models/student/budget.py``)."""
    if shape is None:
        raise ValueError("search.budget needs the student's shape (the distillation config) to count students")
    b = cfg.budget
    scratch = Path(ctx.workdir) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        try:
            folder = fetch_teacher_shapes(ctx.get_store(), teacher, Path(tmp))
            return budget_choice(teacher_from_folder(folder), shape, b.metric, b.value, b.size, b.tolerance,
                                 b.vae_widths)
        except ValueError as exc:
            raise ValueError(f"search.budget: {exc}") from None


def run_search(ctx: RunContext, cfg: SearchConfig, teacher_cfg: TeacherConfig, latents: Manifest, teacher: Manifest,
               redundancy: Manifest | None, ray_address: str | None, shape: StudentShape | None = None,
               variant: str = "") -> Manifest:
    """Step driver: (budget → N:M) → step cache → (baseline mask) → DeepSpeed ranks → mask manifest, in one
    nested MLflow run (named ``search_pruning<variant>``: another route's run stands apart). ``shape``: the
    student the distillation builds (``DistillConfig.shape``), which a budget counts."""
    log = get_run_logger()
    tracker, cache, store = ctx.get_tracker(), ctx.get_cache(), ctx.get_store()
    blocks = check_groups(cfg, teacher)
    choice = None
    if cfg.budget is not None:
        choice = budget_nm(ctx, cfg, teacher, shape)
        cfg = cfg.model_copy(update={"n": choice["n"], "m": choice["m"]})
        log.info("search_pruning: budget %s -> %d:%d%s (%s, %.1f%% of the budget)", fmt_cost(choice["metric"],
                 choice["budget"]), choice["n"], choice["m"],
                 f", tiny VAE width {choice['vae_width']}" if choice["vae_width"] is not None else "",
                 fmt_cost(choice["metric"], choice[choice["metric"]]), 100 * choice["of_budget"])
    code_ver = step_code_version()
    chash = step_config_hash(cfg, teacher_cfg, shape if choice is not None else None)
    inputs = {"latents": latents.digest, "teacher": teacher.digest}
    if (cfg.method in SCORE_OF or cfg.method == "pgp_progressive") and redundancy is not None:
        inputs["redundancy"] = redundancy.digest
    key = cache_key(STEP, chash, inputs, code_ver)
    hit = cache.get(STEP, key)
    if hit is not None and not cache.listed_intact(hit.extra["files"]):
        hit = None
    ds = cfg.deepspeed.engine_config(cfg.batch_size)
    with tracker.step_run(ctx.parent_run_id, STEP + variant, {"search": cfg.model_dump(mode="json"), "deepspeed_config": ds,
                                                    "world_size": cfg.num_workers},
                          tags={"cache_key": key, "cache_hit": hit is not None, "method": cfg.method,
                                "nm": f"{cfg.n}:{cfg.m}",
                                **({"budget_choice": _describe(choice)} if choice is not None else {}),
                                **key_tags(STEP, chash, inputs, code_ver)}) as run_id:
        tracker.log_manifest(run_id, latents, context="training")
        tracker.log_manifest(run_id, teacher, context="model")
        if hit is not None:
            log.info("search_pruning: cache hit %s; kept %s", key[:12], ", ".join(hit.extra["kept"]))
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_manifest_output(run_id, hit)
            return hit
        t0 = time.perf_counter()
        plan = None
        if cfg.method == "pgp_progressive":  # the coarse stage here, round 0; the ranks run the fine rounds
            plan = pgp_plan(ctx, cfg, redundancy)
            log_round(tracker, run_id, plan["coarse"])
            log.info("search_pruning: pgp coarse stage kept %d of %d blocks; %d fine round(s) to %d",
                     sum(plan["mask"]), len(plan["mask"]), plan["rounds"], plan["target"])
        fixed = plan["mask"] if plan is not None else baseline_mask(ctx, cfg, teacher_cfg, teacher, latents,
                                                                    redundancy, blocks)
        result = search(ctx, cfg, teacher_cfg, latents, teacher, fixed, key, run_id, ray_address, plan)
        timing = json.loads(store.get_bytes(f"search/{key[:24]}/timing.json"))
        out = Path(ctx.workdir) / "search" / key[:16]
        files = write_plots(result, out)
        listing = {"result.json": {"uri": store.uri(f"search/{key[:24]}/result.json"),
                                   "sha256": store.stat(f"search/{key[:24]}/result.json").sha256},
                   "lora.safetensors": {"uri": store.uri(result["lora"]["key"]), "sha256": result["lora"]["sha256"]}}
        for name, path in files.items():
            obj = store.put_file(f"search/{key[:24]}/{name}", path)
            listing[name] = {"uri": obj.uri, "sha256": obj.sha256}
        tracker.log_artifact(run_id, out, "search")
        tracker.log_text(run_id, json.dumps(result, indent=1), "search/result.json")
        tracker.set_tags(run_id, {"kept_blocks": ",".join(result["kept"]), "world_size": result["world_size"]})
        tracker.log_metrics(run_id, {"seconds": time.perf_counter() - t0, "kept": len(result["kept"]), **timing,
                                     **({"budget_of": choice["of_budget"]} if choice is not None else {})})
        manifest = Manifest(kind="mask", step=STEP, uri=listing["result.json"]["uri"],
                            digest=listing["result.json"]["sha256"], config_hash=chash, inputs=inputs,
                            code_version=code_ver, cache_key=key, run_id=run_id,
                            counts={"blocks": len(result["blocks"]), "kept": len(result["kept"]),
                                    "world_size": result["world_size"]},
                            extra={"method": cfg.method, "kept": result["kept"], "mask": result["mask"],
                                   "blocks": result["blocks"], "teacher_digest": teacher.digest,
                                   "n": cfg.n, "m": cfg.m, "budget": choice, "confidence": result["confidence"],
                                   "ema_logits": result["ema_logits"], "options": result["options"],
                                   "lora_uri": listing["lora.safetensors"]["uri"], "deepspeed": result["deepspeed"],
                                   "engine": result.get("engine", {}),
                                   "rounds": [{k: r[k] for k in ("round", "stage", "pruned", "recovered_l1", "psnr_y")}
                                              for r in result.get("rounds", [])],
                                   "world_size": result["world_size"], "files": listing, "timing": timing})
        tracker.log_manifest_output(run_id, manifest)
        cache.put(manifest)
        log.info("search_pruning: kept %s (%s) in %.0f s", ", ".join(result["kept"]), cfg.method,
                 time.perf_counter() - t0)
        return manifest


def _describe(choice: dict) -> str:
    width = f", tiny VAE {choice['vae_width']}" if choice["vae_width"] is not None else ""
    return (f"{choice['n']}:{choice['m']}{width}: {fmt_cost(choice['metric'], choice[choice['metric']])} for "
            f"{fmt_cost(choice['metric'], choice['budget'])} at {choice['size']} px")
