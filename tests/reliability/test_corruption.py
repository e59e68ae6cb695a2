"""Corrupt, delete or truncate an object of each kind in the store (one fault per kind, each fault on at
least three kinds): the next run notices (content is verified, not just present), recomputes exactly that, and ends with
the same digests — the run heals itself."""

from __future__ import annotations

import json

import pytest

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from srcompress.infra.store import LocalStore
from tests.tasks.test_distill import TWO_STAGE, shared_run
from tests.upstream import seed_workdir

# The test's store starts as a copy of the session's two-stage distillation (tests/conftest.py `two_stage`: the
# session upstream, the search and both stages on TWO_STAGE), so the reference run computes only the evaluation
# and every fault is healed by recomputing its step on exactly this config. It runs on that run's xdist worker.
pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("module_ray"), pytest.mark.slow, shared_run]

CFG = TWO_STAGE + ["evaluate.metrics=[psnr, ssim]", "evaluate.data.center_crop=128",
                   "evaluate.efficiency.enabled=false", "evaluate.grid_images=1",
                   "evaluate.models=[bicubic, teacher, student]"]
FAULTS = ("corrupt", "truncate", "delete")


def _apply(store: LocalStore, key: str, fault: str) -> None:
    path = store.root / key
    data = path.read_bytes()
    if fault == "corrupt":  # same size, record untouched: only a content check can tell
        b = bytearray(data)
        b[len(b) // 2] ^= 0x5A
        path.write_bytes(bytes(b))
    elif fault == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


def _index(store: LocalStore, manifest: dict) -> dict:
    return json.loads(store.get_bytes(store.key_from_uri(manifest["uri"])))


def _victims(store: LocalStore, steps: dict) -> dict[str, str]:
    """One object of every kind the pipeline writes: object kind → store key."""
    teacher = _index(store, steps["bootstrap_teacher"])
    weights = next(e["key"] for rel, e in teacher["files"].items() if rel.startswith("transformer/")
                   and rel.endswith(".safetensors"))
    evalset = _index(store, steps["eval_data"])
    report = _index(store, steps["evaluate"])
    student = _index(store, steps["distill_pixel"])
    return {
        "student weights": next(e["key"] for rel, e in student["files"].items()
                                if rel.startswith("transformer/") and rel.endswith(".safetensors")),
        "student index": store.key_from_uri(steps["distill_pixel"]["uri"]),
        "degrade shard": _index(store, steps["degrade"])["shards"][1]["key"],
        "pairs index": store.key_from_uri(steps["degrade"]["uri"]),
        "cache manifest": f"cache/encode_latents/{steps['encode_latents']['cache_key']}.json",
        "teacher weights": weights,
        "teacher index": store.key_from_uri(steps["bootstrap_teacher"]["uri"]),
        "latent shard": _index(store, steps["encode_latents"])["shards"][0]["key"],
        "latents index": store.key_from_uri(steps["encode_latents"]["uri"]),
        "eval-set image": evalset["items"][0]["hr"],
        "evaluation table": store.key_from_uri(report["files"]["summary.md"]["uri"]),
        "digest record": ".srmeta/" + _index(store, steps["degrade"])["shards"][0]["key"] + ".json",
    }


# The step whose run must notice each kind's fault (its outcome "ran", not "cached").
OWNER = {"student weights": "distill_pixel", "student index": "distill_pixel", "degrade shard": "degrade",
         "pairs index": "degrade", "cache manifest": "encode_latents", "teacher weights": "bootstrap_teacher",
         "teacher index": "bootstrap_teacher", "latent shard": "encode_latents", "latents index": "encode_latents",
         "eval-set image": "eval_data", "evaluation table": "evaluate", "digest record": "degrade"}


def batches(plan: list[tuple[str, str, str]]) -> list[list[tuple[str, str, str]]]:
    """Faults grouped so that no two in a batch belong to the same step: each step notices its own fault
    independently (a healed object has its old digest, so nothing downstream reruns), and one rerun checks a
    whole batch — 3 reruns instead of 12."""
    out: list[list[tuple[str, str, str]]] = []
    for fault in plan:
        target = next((b for b in out if OWNER[fault[0]] not in {OWNER[f[0]] for f in b}), None)
        if target is None:
            out.append(target := [])
        target.append(fault)
    return out


@pytest.mark.timeout(1800)  # a small DAG run, then one rerun per batch of faults
def test_every_object_kind_heals_after_corrupt_truncate_delete(tmp_path, two_stage):
    cfg = load_config("tiny", CFG)
    work = seed_workdir(two_stage[1] / "store", tmp_path / "w")  # every step to distill_pixel: verified cache hits
    ref = run_pipeline(cfg, work)
    seeded = ("degrade", "bootstrap_teacher", "encode_latents", "analyse_redundancy", "search_pruning",
              "distill_latent", "distill_pixel")
    assert all(ref["outcomes"][s] == "cached" for s in seeded), ref["outcomes"]  # seeded, not recomputed
    store = LocalStore(work / "store")
    quality = {k: v for k, v in ref["steps"]["evaluate"]["extra"]["metrics"].items() if k.split(".")[-1] in ("psnr", "ssim")}
    failures = []
    victims = _victims(store, ref["steps"])
    assert set(victims) == set(OWNER)
    # Every kind gets one fault and every fault hits at least three kinds, rotating: detection is per object
    # (content hash or absence), the same code whatever damaged it.
    plan = [(kind, key, FAULTS[i % len(FAULTS)]) for i, (kind, key) in enumerate(victims.items())]
    # a deleted record is the plain "object missing" case: the record gets a content fault instead
    plan = [(k, key, "truncate" if k == "digest record" and f == "delete" else f) for k, key, f in plan]
    assert {f for _, _, f in plan} == set(FAULTS) and len(plan) == 12
    groups = batches(plan)
    assert sum(map(len, groups)) == 12 and len(groups) <= 4, groups
    for group in groups:
        for kind, key, fault in group:
            _apply(store, key, fault)
        out = run_pipeline(cfg, work)
        what = "+".join(f"{kind}/{fault}" for kind, _, fault in group)
        for step, m in ref["steps"].items():
            if step != "evaluate" and out["steps"][step]["digest"] != m["digest"]:
                failures.append(f"{what}: {step} digest changed")
        got = out["steps"]["evaluate"]["extra"]["metrics"]
        if any(abs(got[k] - v) > 1e-6 for k, v in quality.items()):
            failures.append(f"{what}: evaluation numbers changed")
        for kind, key, fault in group:
            target = key.removeprefix(".srmeta/").removesuffix(".json") if kind == "digest record" else key
            if kind == "evaluation table":  # each evaluation publishes under its own prefix: the new one is intact
                target = store.key_from_uri(_index(store, out["steps"]["evaluate"])["files"]["summary.md"]["uri"])
                if target == key:
                    failures.append(f"{kind}/{fault}: the damaged report was reused")
            if store.verify(target) is None:
                failures.append(f"{kind}/{fault}: {target} not healed")
            if out["outcomes"].get(OWNER[kind]) != "ran":  # its own step must have noticed, not a neighbour's
                failures.append(f"{kind}/{fault}: {OWNER[kind]} did not notice ({out['outcomes']})")
    assert not failures, failures
