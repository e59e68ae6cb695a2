"""The ``register`` DAG step (last): the final student becomes an MLflow registered model version.

    srcompress run --config configs/tiny.yaml            # … → evaluate → register
    srcompress lineage models:/srcompress-student@candidate [--verify]

The version is a pyfunc (``infra/pyfunc_model.py``: images in, upscaled images out; its artifact is the
student's safetensors folder) whose tags name every upstream digest and run (``lineage.<step>.*``), the
evaluation's headline metrics and retention, the code version and config hash. Alias ``candidate`` always;
alias ``champion`` only through the promotion gate (``registry.gate``), whose decision and numbers are
logged on the version and the step run. Idempotent: a rerun with the same student and evaluation finds the
version it registered (tag ``srcompress.register_key``) instead of adding one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import get_run_logger

from srcompress.infra import registry
from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version
from srcompress.tasks.common.teachers import fetch_teacher_folder
from srcompress.tasks.register.config import RegisterConfig
from srcompress.tasks.register.gate import gate_decision

STEP = "register"
# The lineage chain, in DAG order: tag prefix → the step whose manifest it records.
CHAIN = ("degrade", "bootstrap_teacher", "encode_latents", "analyse_redundancy", "search_pruning",
         "distill_latent", "distill_pixel", "eval_data", "evaluate")


def step_code_version() -> str:
    return code_version(__name__)


def lineage_tags(manifests: dict[str, Manifest], store_root: str, pipeline_run: str, config_hash: str) -> dict:
    tags = {"lineage.format": "srcompress.lineage.v1", "lineage.store": store_root,
            "lineage.pipeline_run_id": pipeline_run, "lineage.config_hash": config_hash,
            "lineage.steps": ",".join(s for s in CHAIN if s in manifests)}
    if "degrade" in manifests:
        tags["lineage.dataset.digest"] = manifests["degrade"].inputs.get("sources", "")
    for step in CHAIN:
        m = manifests.get(step)
        if m is None:
            continue
        p = f"lineage.{step}"
        tags.update({f"{p}.kind": m.kind, f"{p}.digest": m.digest, f"{p}.uri": m.uri,
                     f"{p}.object_sha256": m.extra.get("index_sha256") or m.digest,
                     f"{p}.config_hash": m.config_hash, f"{p}.code_version": m.code_version,
                     f"{p}.run_id": m.run_id or "", f"{p}.inputs": json.dumps(m.inputs, sort_keys=True)})
    if "bootstrap_teacher" in manifests:
        tags["lineage.bootstrap_teacher.vae_digest"] = manifests["bootstrap_teacher"].extra.get("vae_digest", "")
    return tags


def evaluation_numbers(ctx: RunContext, evaluation: Manifest | None) -> tuple[dict, dict]:
    """(flat metrics of the report, retention.json or {})."""
    if evaluation is None:
        return {}, {}
    store = ctx.get_store()
    report = json.loads(store.get_bytes(store.key_from_uri(evaluation.uri), evaluation.digest))
    entry = report["files"].get("retention.json")
    ret = json.loads(store.get_bytes(store.key_from_uri(entry["uri"]), entry["sha256"])) if entry else {}
    return dict(evaluation.extra.get("metrics", {})), ret


def headline_tags(metrics: dict, ret: dict) -> dict:
    tags = {f"metrics.{k}": f"{v:.6g}" for k, v in metrics.items()
            if k.startswith(("student.", "teacher.", "bicubic.")) and not k.endswith(".std")}
    for row in ret.get("rows", []):
        if row["model"] == "student":
            tags[f"retention.{row['metric']}"] = f"{row['retention']:.4f}"
    for metric, info in ret.get("metrics", {}).items():
        tags[f"lower_better.{metric}"] = str(bool(info["lower_better"]))
    return tags


def run_register(ctx: RunContext, cfg: RegisterConfig, manifests: dict[str, Manifest], scale: int,
                 inference: dict, config_hash: str) -> Manifest:
    log = get_run_logger()
    tracker, store = ctx.get_tracker(), ctx.get_store()
    student, evaluation = manifests["distill_pixel"], manifests.get("evaluate")
    code_ver = step_code_version()
    chash = canonical_hash({"register": cfg.model_dump(mode="json"), "scale": scale, "inference": inference})
    inputs = {"student": student.digest} | ({"evaluate": evaluation.digest} if evaluation else {})
    key = cache_key(STEP, chash, inputs, code_ver)
    with tracker.step_run(ctx.parent_run_id, STEP, {"register": cfg.model_dump(mode="json")},
                          tags={"cache_key": key, "model_name": cfg.model_name} | key_tags(STEP, chash, inputs, code_ver)) as run_id:
        for m in manifests.values():
            tracker.log_manifest(run_id, m, context="lineage")
        metrics, ret = evaluation_numbers(ctx, evaluation)
        tags = lineage_tags(manifests, store.root_uri, ctx.parent_run_id or "", config_hash) | headline_tags(metrics, ret)
        tags |= {"srcompress.register_key": key, "srcompress.code_version": code_ver}
        version = registry.find_version(tracker.uri, cfg.model_name, "srcompress.register_key", key)
        if version is None:
            with tempfile.TemporaryDirectory(dir=ctx.scratch("register")) as tmp:
                folder = fetch_teacher_folder(store, student, Path(tmp))
                model_config = {"scale": scale, **inference}
                version = registry.register_student(tracker.uri, run_id, cfg.model_name, folder, model_config, tags,
                                                    description=f"student {student.digest[:12]} of pipeline run "
                                                                f"{ctx.parent_run_id}")
            log.info("register: %s version %s", cfg.model_name, version)
        else:
            log.info("register: %s version %s already holds this student and evaluation", cfg.model_name, version)
        registry.move_alias(tracker.uri, cfg.model_name, cfg.candidate_alias, version, "candidate",
                            f"registered by pipeline run {ctx.parent_run_id or run_id}")
        champion = registry.alias_version(tracker.uri, cfg.model_name, cfg.champion_alias)
        champ_tags = registry.version_info(tracker.uri, cfg.model_name, champion)["tags"] if champion else None
        decision = gate_decision(cfg.gate, tags, champ_tags, champion, version)
        if decision["promote"]:  # recorded in the alias history, so `srcompress models rollback` can undo it
            registry.move_alias(tracker.uri, cfg.model_name, cfg.champion_alias, version, "gate", decision["reason"])
        registry.set_version_tags(tracker.uri, cfg.model_name, version,
                                  {"gate.decision": "champion" if decision["promote"] else "candidate",
                                   "gate.reason": decision["reason"], "gate.compared_to": champion or ""})
        tracker.log_text(run_id, json.dumps(decision, indent=1, sort_keys=True), "register/gate.json")
        tracker.set_tags(run_id, {"model_version": version, "gate": "champion" if decision["promote"] else "candidate"})
        # the headline numbers the version was registered with, as metrics of the step run (the UI charts them)
        tracker.log_metrics(run_id, {"version": float(version), "promoted_to_champion": float(decision["promote"]),
                                     **{k: float(v) for k, v in metrics.items()
                                        if k.startswith("student.") and not k.endswith(".std")},
                                     **{f"retention.{r['metric']}": float(r["retention"]) for r in ret.get("rows", [])
                                        if r["model"] == "student"}})
        log.info("register: gate — %s (%s)", "champion" if decision["promote"] else "candidate only", decision["reason"])
        return Manifest(kind="model_version", step=STEP, uri=f"models:/{cfg.model_name}/{version}",
                        digest=student.digest, config_hash=chash, inputs=inputs, code_version=code_ver, cache_key=key,
                        run_id=run_id, counts={"version": int(version)},
                        extra={"name": cfg.model_name, "version": version, "gate": decision,
                               "aliases": [cfg.candidate_alias] + ([cfg.champion_alias] if decision["promote"] else [])})
