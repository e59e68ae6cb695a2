"""The end-to-end srcompress DAG as one Prefect flow.

    srcompress run --config configs/tiny.yaml --workdir runs/tiny [--until degrade] [--summary S.json]

The body reads like the DAG (docs/architecture.md §1). It only orchestrates: each step's driver lives in
``tasks/<step>/step.py`` and returns a manifest; this flow threads manifests from step to step, owns the
MLflow parent run, and stops after ``until``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from srcompress import __version__
from srcompress.config import STEPS, SrConfig
from srcompress.tasks.evaluate.config import VARIANT
from srcompress.infra.config import redact
from srcompress.flows.common import has_holdout, reap_stale, register, resolve
from srcompress.infra.context import RunContext
from srcompress.infra.manifest import code_version
from srcompress.infra.ray_cluster import ray_scope
from srcompress.infra.store import atomic_write_bytes


def _open_parent_run(cfg: SrConfig, ctx: RunContext) -> str:
    from prefect.runtime import flow_run

    ctx.get_store().check()  # fail fast, before any MLflow run is opened
    tracker = ctx.get_tracker()
    reap_stale(tracker)
    tags = {"config_hash": cfg.config_hash(), "code_version": code_version(__name__),
            "package_version": __version__, "prefect_flow_run_id": flow_run.get_id() or "",
            "host": socket.gethostname(), "store": ctx.get_store().root_uri, "kind": "pipeline"}
    run_id = tracker.start_pipeline_run(cfg.run.name, tags, cfg.model_dump(mode="json"))
    try:
        tracker.log_text(run_id, yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False),
                         "config/resolved.yaml")
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    return run_id


def train_steps(ctx: RunContext, cfg: SrConfig, last: int, manifests: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every step before ``evaluate`` up to ``STEPS[last]``, in DAG order; returns their manifests. Also used by
    the evaluation flow to obtain (from the cache, after a run) the models it is asked to score. ``manifests``
    (filled in place) keeps what finished when a later step raises: a dry run reports it.

    Each step's module is imported when the step is reached: a cached ``--until degrade`` never loads torch or
    diffusers (docs/architecture.md §1, start-up)."""
    from srcompress.tasks.degrade.step import run_degrade

    manifests = {} if manifests is None else manifests
    manifests["degrade"] = run_degrade(ctx, cfg.data, cfg.degrade, cfg.run.max_workers)
    if has_holdout(cfg):  # evaluation images, degraded the same way, never trained on
        manifests["degrade_holdout"] = run_degrade(ctx, cfg.data, cfg.degrade, cfg.run.max_workers, "holdout")
    if last >= STEPS.index("bootstrap_teacher"):
        from srcompress.tasks.search.step import check_groups
        from srcompress.tasks.teacher.step import run_teacher

        manifests["bootstrap_teacher"] = run_teacher(ctx, cfg.teacher, manifests["degrade"],
                                                     manifests.get("degrade_holdout"))
        if last >= STEPS.index("search_pruning"):
            check_groups(cfg.search, manifests["bootstrap_teacher"])  # before the encode step's work
    if last >= STEPS.index("compress_vae") and cfg.vae.enabled:
        from srcompress.tasks.vae.step import run_compress_vae

        manifests["compress_vae"] = run_compress_vae(ctx, cfg.vae, cfg.teacher, manifests["degrade"],
                                                     manifests["bootstrap_teacher"], manifests.get("degrade_holdout"))
    if last >= STEPS.index("train_mmle") and cfg.adaptive.enabled:
        from srcompress.tasks.adaptive.step import run_mmle

        manifests["train_mmle"] = run_mmle(ctx, cfg.adaptive, cfg.teacher, manifests["degrade"],
                                           manifests["bootstrap_teacher"])
    if last >= STEPS.index("encode_latents"):
        from srcompress.tasks.encode.step import run_encode

        manifests["encode_latents"] = run_encode(ctx, cfg.encode, cfg.teacher, manifests["degrade"],
                                                 manifests["bootstrap_teacher"],
                                                 manifests.get("train_mmle") if cfg.encode.teacher_steps == "adaptive"
                                                 else None)
    if last >= STEPS.index("analyse_redundancy"):
        from srcompress.tasks.redundancy.step import run_redundancy

        manifests["analyse_redundancy"] = run_redundancy(ctx, cfg.redundancy, cfg.teacher,
                                                         manifests["encode_latents"], manifests["bootstrap_teacher"])
    if last >= STEPS.index("search_pruning"):
        from srcompress.tasks.search.step import run_search

        shape = cfg.student_shape(manifests["bootstrap_teacher"].extra.get("kind", ""))
        for method, suffix in search_routes(cfg):  # the main route, then search.compare_methods
            route = cfg.search if not suffix else cfg.search.model_copy(update={"method": method,
                                                                                "compare_methods": []})
            manifests[f"search_pruning{suffix}"] = run_search(ctx, route, cfg.teacher, manifests["encode_latents"],
                                                              manifests["bootstrap_teacher"],
                                                              manifests["analyse_redundancy"], ctx.ray_address, shape,
                                                              variant=suffix)
    if last >= STEPS.index("distill_latent"):
        distill(ctx, cfg, manifests, last >= STEPS.index("distill_pixel"))
    return manifests


def search_routes(cfg: SrConfig) -> list[tuple[str, str]]:
    """(method, step suffix): the main search, then every ``search.compare_methods`` route (``_route_<method>``)."""
    return [(cfg.search.method, "")] + [(m, f"_route_{m}") for m in cfg.search.compare_methods]


def distill(ctx: RunContext, cfg: SrConfig, manifests: dict[str, Any], pixel: bool) -> dict[str, Any]:
    """Stage 1 then (``pixel``) stage 2 of the main student; then of each ``distill.phase_ablation`` setting
    (``_phase_<setting>``, same mask) and of each ``search.compare_methods`` route (``_route_<method>``, its
    mask, the main distillation settings). Each stage's manifest is added to ``manifests`` as it finishes;
    returns the new ones."""
    from srcompress.tasks.distill.step import run_distill

    common = dict(latents=manifests["encode_latents"], pairs=manifests["degrade"],
                  teacher=manifests["bootstrap_teacher"], ray_address=ctx.ray_address)
    new: dict[str, Any] = {}
    variants = [("", cfg.distill.phase_adapter, "search_pruning")]
    variants += [(f"_phase_{p}", p, "search_pruning") for p in cfg.distill.phase_ablation]
    variants += [(s, cfg.distill.phase_adapter, f"search_pruning{s}") for _, s in search_routes(cfg)[1:]]
    for suffix, phase, mask in variants:
        s1 = run_distill(ctx, cfg.distill, cfg.teacher, "stage1", phase=phase, mask=manifests[mask],
                         variant=suffix, **common)
        new[f"distill_latent{suffix}"] = manifests[f"distill_latent{suffix}"] = s1
        if pixel:
            s2 = run_distill(ctx, cfg.distill, cfg.teacher, "stage2", stage1=s1, phase=phase, mask=manifests[mask],
                             vae=manifests.get("compress_vae"), variant=suffix, **common)
            new[f"distill_pixel{suffix}"] = manifests[f"distill_pixel{suffix}"] = s2
    return new


# Table name → the step whose manifest the evaluate step loads it from (docs/architecture.md §1); the variant
# rows student_phase_<setting> / student_route_<method> come from distill_pixel_phase_… / distill_pixel_route_….
MODEL_STEPS = {"teacher": "bootstrap_teacher", "teacher_adaptive": "train_mmle", "pruned": "search_pruning",
               "searched": "search_pruning",
               "student_stage1": "distill_latent", "student": "distill_pixel"}


def evaluated_models(manifests: dict[str, Any]) -> dict[str, Any]:
    rows = {name: manifests[step] for name, step in MODEL_STEPS.items() if step in manifests}
    variants = {"student" + k.removeprefix("distill_pixel"): m for k, m in manifests.items()
                if k.startswith("distill_pixel_")}
    return rows | {name: m for name, m in variants.items() if VARIANT.match(name)}


def last_step_for(models: list[str]) -> str | None:
    """The last training step the requested models need (None: bicubic and the teacher only)."""
    needed = [MODEL_STEPS.get(m, "distill_pixel" if VARIANT.match(m) else None) for m in models if m != "teacher"]
    needed = [s for s in needed if s is not None]
    return max(needed, key=STEPS.index) if needed else None


def all_steps(ctx: RunContext, cfg: SrConfig, last: int, manifests: dict[str, Any]) -> None:
    """Every step up to ``STEPS[last]`` in DAG order, their manifests added to ``manifests`` as they finish."""
    train_steps(ctx, cfg, last, manifests)
    if last >= STEPS.index("evaluate"):
        from srcompress.tasks.evaluate.data_step import run_eval_data
        from srcompress.tasks.evaluate.step import run_evaluate

        if "degrade_holdout" in manifests:  # every model on the held-out images, never trained on
            manifests["eval_data"] = run_eval_data(ctx, cfg.evaluate, cfg.data, cfg.degrade)
            manifests["evaluate"] = run_evaluate(ctx, cfg.evaluate, manifests["eval_data"],
                                                 evaluated_models(manifests), cfg.teacher,
                                                 manifests.get("compress_vae"))
        else:
            get_run_logger().warning("evaluate: skipped, no held-out images (set data.held_out or "
                                     "data.held_out_fraction, or use `srcompress evaluate --data …`)")
    if last >= STEPS.index("register") and cfg.registry.enabled:
        from srcompress.tasks.register.step import run_register

        inference = cfg.evaluate.inference.model_dump(mode="json", include={"tile", "tile_overlap", "color_fix"})
        manifests["register"] = run_register(ctx, cfg.registry, manifests, cfg.degrade.scale, inference,
                                             cfg.config_hash())


def look_up_steps(cfg: SrConfig, ctx: RunContext, last: int) -> dict[str, Any]:
    """The steps up to ``STEPS[last]`` looked up, not computed: cached ones with their keys, then the first that
    would run with the reasons (infra/dryrun.py). Nothing is written to MLflow or the store."""
    from srcompress.infra.dryrun import WouldRun, explain
    from srcompress.infra.tracking import resolve_tracking_uri

    manifests: dict[str, Any] = {}
    would = None
    try:
        with ray_scope():
            all_steps(ctx.model_copy(update={"dry_run": True}), cfg, last, manifests)
    except WouldRun as exc:
        would = exc
    out: dict[str, Any] = {"dry_run": True, "until": STEPS[last], "store": ctx.get_store().root_uri,
                           "cached": {k: {"cache_key": m.cache_key, "digest": m.digest} for k, m in manifests.items()},
                           "would_run": None}
    if would is not None:
        uri = resolve_tracking_uri(cfg.tracking, ctx.workdir)
        # the DAG step the stopping run belongs to (degrade-holdout → degrade, eval_data → evaluate, …)
        base = next((s for s in reversed(STEPS) if would.step.startswith(s)), "evaluate")
        planned = [s for s in STEPS[STEPS.index(base) + 1 : last + 1]
                   if (s != "compress_vae" or cfg.vae.enabled) and (s != "train_mmle" or cfg.adaptive.enabled)
                   and (s != "register" or cfg.registry.enabled)]
        out["would_run"] = {"step": would.step, "cache_key": str(would.tags.get("cache_key", "")),
                            "reasons": explain(ctx.get_store(), uri, would), "invalidates": planned}
    return out


@flow(name="srcompress-compress", log_prints=True, validate_parameters=False)
def compress(config: dict[str, Any] | str, workdir: str, until: Literal[STEPS] | None = None,  # type: ignore[valid-type]
             overrides: list[str] | None = None, config_ref: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Run the DAG up to and including ``until`` (default: every step). Returns the run summary; with
    ``dry_run``, which steps are cached and which would run, and why, computing nothing.

    ``config`` is a resolved config dict, or (for deployments, see prefect.yaml) a YAML path / preset name
    with optional ``section.key=value`` overrides.
    """
    log = get_run_logger()
    cfg, ctx = resolve(config, workdir, overrides, config_ref)
    last = STEPS.index(until or STEPS[-1])
    if dry_run:
        return look_up_steps(cfg, ctx, last)
    parent = _open_parent_run(cfg, ctx)
    ctx = ctx.model_copy(update={"parent_run_id": parent})
    tracker = ctx.get_tracker()
    log.info("srcompress: MLflow parent run %s at %s; store %s", parent, redact(tracker.uri),
             ctx.get_store().root_uri)
    manifests: dict[str, Any] = {}
    try:
        with ray_scope():  # one Ray for the run's steps, stopped when they are done
            all_steps(ctx, cfg, last, manifests)
    except BaseException:
        tracker.end_run(parent, "FAILED")
        raise
    tracker.set_tags(parent, {f"step.{k}.digest": m.digest for k, m in manifests.items()})
    tracker.end_run(parent, "FINISHED")
    if "evaluate" in manifests:
        tracker.log_metrics(parent, manifests["evaluate"].extra.get("metrics", {}))
    from prefect.runtime import flow_run

    return {"parent_run_id": parent, "experiment_id": tracker.experiment_id, "tracking_uri": redact(tracker.uri),
            "prefect_flow_run_id": flow_run.get_id() or "",
            "outcomes": tracker.step_outcomes(parent),
            "store": ctx.get_store().root_uri, "config_hash": cfg.config_hash(), "until": until or STEPS[-1],
            "table": manifests["evaluate"].extra["table_path"] if "evaluate" in manifests else None,
            "model_version": manifests["register"].uri if "register" in manifests else None,
            "steps": {k: m.model_dump(mode="json") for k, m in manifests.items()}}


def run_pipeline(cfg: SrConfig, workdir: str | Path, until: str | None = None,
                 summary: str | Path | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Entry point used by the CLI and tests: the flow with the configured task-runner width."""
    if until is not None and until not in STEPS:
        raise ValueError(f"--until must be one of {', '.join(STEPS)}, got {until!r}")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    runner = ThreadPoolTaskRunner(max_workers=cfg.run.max_workers)
    shown, ref = register(cfg)  # Prefect stores parameters: the redacted config and a reference, no secret
    result = compress.with_options(task_runner=runner, flow_run_name=cfg.run.name)(
        config=shown, workdir=str(workdir), until=until, config_ref=ref, dry_run=dry_run)
    if summary is not None:
        atomic_write_bytes(Path(summary).resolve(), json.dumps(result, indent=2, sort_keys=True).encode())
    return result
