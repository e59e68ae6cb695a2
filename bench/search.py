"""Depth-mask search vs the baselines it must beat, under the same LoRA recovery, in one run.

    .venv/bin/python bench/search.py [--search-steps N] [--recovery-steps 40] [--workdir DIR]

On the embedded default (bundled photos, the bootstrapped tiny teacher, its latent cache and redundancy
report — computed once, cached in the work dir) it takes the mask of every method: ``learned`` (the TinyFusion /
TinySR Gumbel search) and the baselines ``block_influence``, ``pgp_cos``, ``pgp_kl``, ``removal``, ``uniform``,
``random_min``. Every mask then gets the *same* LoRA recovery (``search.method=given``: same steps, seed, data)
and is measured: calibration latent L1 to the teacher before and after recovery, and on the held-out pairs
PSNR-Y and ST-LPIPS of the recovered model's output against the teacher's output. Then steps/s of the search
at 1 vs 2 DeepSpeed ranks (same global batch) and the gate overhead (search step / plain LoRA step).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

METHODS = ("learned", "block_influence", "pgp_cos", "pgp_kl", "removal", "uniform", "random_min")


def _result(store, manifest: dict) -> dict:
    return json.loads(store.get_bytes(store.key_from_uri(manifest["uri"])))


def measure(work: Path, summary: dict, cfg, mask_result: dict, lora_result: dict | None) -> dict:
    """Calibration L1 and held-out PSNR-Y / ST-LPIPS (vs the teacher's output) of mask (+ recovered LoRA)."""
    import torch
    from safetensors.torch import load

    from srcompress.infra.manifest import Manifest
    from srcompress.infra.store import LocalStore
    from srcompress.models.iqa import build_metric
    from srcompress.models.metrics import bicubic_to, psnr_y
    from srcompress.tasks.common.latents import calibration_subset
    from srcompress.tasks.common.pairs import load_all_pairs
    from srcompress.tasks.search.worker import build, center_tile
    from srcompress.infra.context import RunContext

    store = LocalStore(work / "store")
    steps = summary["steps"]
    ctx = RunContext(workdir=str(work), store=cfg.store, tracking=cfg.tracking)
    scfg = cfg.search.model_copy(update={"lora_rank": cfg.search.lora_rank if lora_result else 0})
    model = build(ctx, scfg, cfg.teacher, Manifest.model_validate(steps["bootstrap_teacher"]),
                  mask_result["mask"], torch.device("cpu"))
    if lora_result:
        state = load(store.get_bytes(lora_result["lora"]["key"], lora_result["lora"]["sha256"]))
        missing = model.teacher.backbone.load_state_dict(state, strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
    model.eval()
    cal = calibration_subset(store, Manifest.model_validate(steps["encode_latents"]), cfg.search.calibration_size,
                             cfg.search.seed)
    tile = model.teacher.tile
    with torch.no_grad():
        l1 = float((model(center_tile(cal["lq"], tile)) - center_tile(cal["teacher"], tile)).abs().mean())
        lq, hq = load_all_pairs(store, Manifest.model_validate(steps["degrade_holdout"]))
        up = bicubic_to(lq, hq.shape[-2:])
        z = model.teacher.encode(up)
        with model.masker.masked(model.fixed_mask):
            pruned = model.teacher.decode(model.teacher.restore_latent(z))
    # the reference: the unpruned teacher without any LoRA (the LoRA was injected into `model`'s own copy)
    ref_model = build(ctx, scfg.model_copy(update={"lora_rank": 0}), cfg.teacher,
                      Manifest.model_validate(steps["bootstrap_teacher"]), mask_result["mask"], torch.device("cpu"))
    with torch.no_grad():
        full = ref_model.teacher.decode(ref_model.teacher.restore_latent(z))
    lp = build_metric("st_lpips")
    return {"cal_l1": l1, "psnr_y": float(psnr_y(pruned, full).mean()),
            "st_lpips": float(lp.score((pruned * 255).round() / 255, (full * 255).round() / 255).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--search-steps", type=int, default=None, help="default: the tiny preset's search.steps")
    ap.add_argument("--recovery-steps", type=int, default=40)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-search-"))
    from srcompress.infra.orchestration import configure_prefect

    configure_prefect(work)
    from srcompress.config import load_config
    from srcompress.flows.compress import run_pipeline
    from srcompress.infra.store import LocalStore

    base = ["search.checkpoint_every=0"] + ([f"search.steps={args.search_steps}"] if args.search_steps else [])
    store = LocalStore(work / "store")
    masks, rows = {}, []
    for method in METHODS:
        cfg = load_config("tiny", base + [f"search.method={method}"])
        t0 = time.perf_counter()
        s = run_pipeline(cfg, work, until="search_pruning")
        masks[method] = (_result(store, s["steps"]["search_pruning"]), time.perf_counter() - t0, s, cfg)
    for method, (res, secs, s, cfg) in masks.items():
        rec_cfg = load_config("tiny", ["search.checkpoint_every=0", "search.method=given",
                                       f"search.given_mask={res['mask']}", f"search.steps={args.recovery_steps}"])
        t0 = time.perf_counter()
        r = run_pipeline(rec_cfg, work, until="search_pruning")
        rec = _result(store, r["steps"]["search_pruning"])
        before = measure(work, r, rec_cfg, res, None)
        after = measure(work, r, rec_cfg, res, rec)
        rows.append((method, "".join(str(v) for v in res["mask"]), before["cal_l1"], after["cal_l1"],
                     after["psnr_y"], after["st_lpips"], secs, time.perf_counter() - t0))
    print(f"\nLoRA recovery: {args.recovery_steps} steps for every mask (learned search: "
          f"{load_config('tiny', base).search.steps} steps)")
    print(f"{'method':16s} {'mask':10s} {'cal L1 before':>13s} {'after':>8s} {'PSNR-Y vs T':>11s} {'ST-LPIPS':>9s} "
          f"{'search s':>8s} {'recover s':>9s}")
    for m, mask, b, a, p, lp, s1, s2 in sorted(rows, key=lambda r: r[3]):
        print(f"{m:16s} {mask:10s} {b:13.5f} {a:8.5f} {p:11.2f} {lp:9.4f} {s1:8.1f} {s2:9.1f}")
    best = min((r for r in rows if r[0] != "learned"), key=lambda r: r[3])
    learned = next(r for r in rows if r[0] == "learned")
    print(f"learned recovered L1 / best baseline ({best[0]}) recovered L1: {learned[3] / best[3]:.3f}")

    # speed: 1 vs 2 ranks at the same global batch; gate overhead = search step time / plain LoRA step time
    speed = {}
    for name, extra in (("search x1", ["search.num_workers=1", "search.batch_size=4"]),
                        ("search x2", ["search.num_workers=2", "search.batch_size=2"]),
                        ("lora x1", ["search.num_workers=1", "search.batch_size=4", "search.method=uniform"])):
        cfg = load_config("tiny", base + extra + ["search.seed=7"])
        timing = run_pipeline(cfg, work, until="search_pruning")["steps"]["search_pruning"]["extra"]["timing"]
        speed[name] = timing["steps_run"] / timing["train_seconds"]
    print(f"\nsteps/s (global batch 4): 1 rank {speed['search x1']:.2f}, 2 ranks {speed['search x2']:.2f} "
          f"(ratio {speed['search x2'] / speed['search x1']:.2f}); plain LoRA step {speed['lora x1']:.2f}/s; "
          f"gate overhead (search step / LoRA step time) {speed['lora x1'] / speed['search x1']:.2f}")
    print(f"work dir: {work}")


if __name__ == "__main__":
    main()
