"""The standalone evaluation flow: score bicubic, the teacher, pruned models and students on any dataset.

    srcompress evaluate --config configs/tiny.yaml --data ~/photos --models bicubic,teacher --summary S.json

``--data`` is a folder of HR photos, a paired folder (hr/ + lr/), an LR-only folder, a degrade pairs
manifest (.json), or an s3:// prefix of any of these. The teacher comes from the config's ``teacher``
section: an imported folder/URI is hashed and recorded; ``bootstrap`` (the embedded default) reuses the
pipeline's cached degrade → bootstrap_teacher steps, training the tiny teacher only if no run has yet.
Pruned models and students come from the DAG's own steps (``flows/compress.train_steps``): after a
``srcompress run`` with the same config they are all cache hits. The flow only orchestrates: eval_data and
evaluate are step drivers in ``tasks/evaluate/``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from srcompress import __version__
from srcompress.config import STEPS, SrConfig
from srcompress.flows.compress import evaluated_models, last_step_for, train_steps
from srcompress.infra.config import redact
from srcompress.flows.common import has_holdout, reap_stale, register, resolve
from srcompress.infra.context import RunContext
from srcompress.infra.manifest import Manifest, code_version
from srcompress.infra.ray_cluster import ray_scope
from srcompress.infra.store import atomic_write_bytes
from srcompress.tasks.degrade.step import run_degrade
from srcompress.tasks.evaluate.data_step import run_eval_data
from srcompress.tasks.evaluate.step import registered_manifest, run_evaluate
from srcompress.tasks.teacher.step import run_teacher


def _teacher(ctx: RunContext, cfg: SrConfig) -> Manifest:
    if cfg.teacher.source != "bootstrap":
        return run_teacher(ctx, cfg.teacher, None, None)
    pairs = run_degrade(ctx, cfg.data, cfg.degrade, cfg.run.max_workers)
    holdout = run_degrade(ctx, cfg.data, cfg.degrade, cfg.run.max_workers, "holdout") if has_holdout(cfg) else None
    return run_teacher(ctx, cfg.teacher, pairs, holdout)


@flow(name="srcompress-evaluate", log_prints=True, validate_parameters=False)
def evaluate(config: dict[str, Any] | str, workdir: str, data: str, overrides: list[str] | None = None,
             config_ref: str | None = None) -> dict[str, Any]:
    """Evaluate ``config['evaluate']['models']`` on ``data``; returns the summary (table paths, metrics).

    ``config`` is a resolved config dict, or (for deployments, see prefect.yaml) a YAML path / preset name
    with optional ``section.key=value`` overrides.
    """
    from prefect.runtime import flow_run

    log = get_run_logger()
    cfg, ctx = resolve(config, workdir, overrides, config_ref)
    ctx.get_store().check()  # fail fast, before any MLflow run is opened
    tracker = ctx.get_tracker()
    reap_stale(tracker)
    parent = tracker.start_pipeline_run(f"{cfg.run.name}-evaluate", {
        "kind": "evaluation", "prefect_flow_run_id": flow_run.get_id() or "", "config_hash": cfg.config_hash(), "code_version": code_version(__name__),
        "package_version": __version__, "host": socket.gethostname(), "data": redact(data, "uri"),
        "models": ",".join(cfg.evaluate.models)}, {"evaluate": cfg.evaluate.model_dump(mode="json"), "data": data})
    ctx = ctx.model_copy(update={"parent_run_id": parent})
    manifests: dict[str, Manifest] = {}
    try:
        with ray_scope():  # one Ray for the run's steps, stopped when they are done
            models = {}
            trained = last_step_for(cfg.evaluate.models)
            if trained is not None:  # pruned / searched / students: the DAG's steps (cached after `srcompress run`)
                manifests.update(train_steps(ctx, cfg, STEPS.index(trained)))
                models = evaluated_models(manifests)
            elif "teacher" in cfg.evaluate.models:
                manifests["teacher"] = models["teacher"] = _teacher(ctx, cfg)
            for ref in (m for m in cfg.evaluate.models if m.startswith("models:/")):  # registered versions
                models[ref] = registered_manifest(ctx, ref)
            manifests["eval_data"] = run_eval_data(ctx, cfg.evaluate, data, cfg.degrade)
            manifests["evaluate"] = run_evaluate(ctx, cfg.evaluate, manifests["eval_data"], models, cfg.teacher)
    except BaseException:
        tracker.end_run(parent, "FAILED")
        raise
    ev = manifests["evaluate"]
    tracker.set_tags(parent, {f"step.{k}.digest": m.digest for k, m in manifests.items()})
    tracker.log_metrics(parent, ev.extra.get("metrics", {}))
    tracker.end_run(parent, "FINISHED")
    log.info("evaluation table: %s", ev.extra["table_path"])
    return {"parent_run_id": parent, "experiment_id": tracker.experiment_id, "tracking_uri": redact(tracker.uri),
            "outcomes": tracker.step_outcomes(parent),
            "store": ctx.get_store().root_uri, "data": redact(data, "uri"), "models": cfg.evaluate.models,
            "table": ev.extra["table_path"], "table_uri": ev.extra["table_uri"],
            "per_image_uri": ev.extra["per_image_uri"], "report_uri": ev.uri, "metrics": ev.extra.get("metrics", {}),
            "unavailable": ev.extra.get("unavailable", {}),
            "steps": {k: m.model_dump(mode="json") for k, m in manifests.items()}}


def run_evaluation(cfg: SrConfig, workdir: str | Path, data: str, summary: str | Path | None = None) -> dict[str, Any]:
    """Entry point used by the CLI and tests."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    runner = ThreadPoolTaskRunner(max_workers=cfg.run.max_workers)
    shown, ref = register(cfg)  # Prefect stores parameters: the redacted config and a reference, no secret
    result = evaluate.with_options(task_runner=runner, flow_run_name=f"{cfg.run.name}-evaluate")(
        config=shown, workdir=str(workdir), data=str(data), config_ref=ref)
    if summary is not None:
        atomic_write_bytes(Path(summary).resolve(), json.dumps(result, indent=2, sort_keys=True).encode())
    return result
