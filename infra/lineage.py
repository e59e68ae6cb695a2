"""Lineage of a registered model version (or any pipeline/step run), read from MLflow alone, and its check
against the artifact store.

    chain = lineage("models:/srcompress-student@candidate", tracking_uri)   # dict: version, steps in DAG order
    print(render_tree(chain))
    problems = verify(chain, store)                                         # [] when every digest matches

The chain comes from the version's ``lineage.<step>.*`` tags (written by the ``register`` step); for a run id,
from the pipeline run's ``step.<name>.digest`` tags and its step runs. ``verify`` re-hashes what each step
recorded: the object at its URI (an index for sharded / folder outputs) and, for indexed outputs, every
object the index lists.
"""

from __future__ import annotations

import json
from typing import Any

from srcompress.infra import registry

LABELS = {"degrade": "pairs (Real-ESRGAN degradation)", "bootstrap_teacher": "teacher",
          "encode_latents": "latent cache", "analyse_redundancy": "redundancy report",
          "search_pruning": "depth mask + search LoRA", "distill_latent": "student, stage 1 (latent)",
          "distill_pixel": "student, stage 2 (pixel)", "eval_data": "evaluation set", "evaluate": "evaluation report"}


def lineage(ref: str, tracking_uri: str) -> dict[str, Any]:
    info = registry.resolve(ref, tracking_uri)
    tags = info["tags"]
    if "lineage.format" not in tags:
        raise LookupError(f"{ref}: no srcompress lineage tags (is it a version registered by the register step?)")
    steps = []
    for step in [s for s in tags.get("lineage.steps", "").split(",") if s]:
        p = f"lineage.{step}."
        entry = {k[len(p):]: v for k, v in tags.items() if k.startswith(p)}
        entry["step"] = step
        entry["inputs"] = json.loads(entry.get("inputs", "{}"))
        steps.append(entry)
    metrics = {k.removeprefix("metrics."): float(v) for k, v in tags.items() if k.startswith("metrics.")}
    retention = {k.removeprefix("retention."): float(v) for k, v in tags.items() if k.startswith("retention.")}
    return {"ref": ref, "name": info.get("name"), "version": info.get("version"), "aliases": info.get("aliases", []),
            "run_id": info.get("run_id"), "dataset_digest": tags.get("lineage.dataset.digest"),
            "store": tags.get("lineage.store"), "pipeline_run_id": tags.get("lineage.pipeline_run_id"),
            "config_hash": tags.get("lineage.config_hash"), "code_version": tags.get("srcompress.code_version"),
            "gate": {"decision": tags.get("gate.decision"), "reason": tags.get("gate.reason")},
            "steps": steps, "metrics": metrics, "retention": retention}


def render_tree(chain: dict[str, Any]) -> str:
    head = f"{chain['name']} v{chain['version']}" if chain.get("version") else chain["ref"]
    if chain.get("aliases"):
        head += f"  @{', @'.join(chain['aliases'])}"
    lines = [head, f"  dataset {str(chain.get('dataset_digest'))[:16]}"]
    for i, s in enumerate(chain["steps"]):
        last = i == len(chain["steps"]) - 1
        branch = "└─" if last else "├─"
        lines.append(f"  {branch} {s['step']:<19s} {LABELS.get(s['step'], s.get('kind', ''))}: "
                     f"{s.get('digest', '')[:16]}  run {s.get('run_id', '')[:12]}  config {s.get('config_hash', '')[:10]}")
        ins = ", ".join(f"{k}={v[:10]}" for k, v in s["inputs"].items())
        if ins:
            lines.append(f"  {'  ' if last else '│ '}   from {ins}")
    head_metrics = {k: v for k, v in chain["metrics"].items() if k.startswith("student.")}
    if head_metrics:
        lines.append("  metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(head_metrics.items())))
    if chain["retention"]:
        lines.append("  retention: " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(chain["retention"].items())))
    if chain["gate"]["decision"]:
        lines.append(f"  gate: {chain['gate']['decision']} ({chain['gate']['reason']})")
    lines.append(f"  code {str(chain.get('code_version'))[:12]}  config {str(chain.get('config_hash'))[:12]}  "
                 f"pipeline run {chain.get('pipeline_run_id')}  store {chain.get('store')}")
    return "\n".join(lines)


def verify(chain: dict[str, Any], store) -> list[str]:
    """Every recorded object re-hashed in the store; returns one line per missing or changed object."""
    problems = []
    for s in chain["steps"]:
        uri, sha = s.get("uri", ""), s.get("object_sha256", "")
        try:
            key = store.key_from_uri(uri)
        except Exception as exc:
            problems.append(f"{s['step']}: {uri} is not in the store {store.root_uri} ({exc})")
            continue
        info = store.verify(key)
        if info is None:
            # the store reports an object whose bytes no longer match its record as absent (it heals on rerun)
            problems.append(f"{s['step']}: missing or altered {uri}")
            continue
        if info.sha256 != sha:
            problems.append(f"{s['step']}: changed {uri} (sha256 {info.sha256[:12]}, recorded {sha[:12]})")
            continue
        try:
            index = json.loads(store.get_bytes(key))
        except (ValueError, UnicodeDecodeError):
            continue  # not a JSON index: the object itself was the record
        listed = []
        if isinstance(index, dict):
            for entry in (index.get("files") or {}).values():
                if isinstance(entry, dict) and "sha256" in entry:
                    listed.append((entry.get("key") or store.key_from_uri(entry["uri"]), entry["sha256"]))
            for entry in index.get("shards") or []:
                listed.append((entry["key"], entry["sha256"]))
        for k, want in listed:
            got = store.verify(k)
            if got is None:
                problems.append(f"{s['step']}: missing or altered {store.uri(k)} (listed by {uri})")
            elif got.sha256 != want:
                problems.append(f"{s['step']}: changed {store.uri(k)} (listed by {uri})")
    return problems
