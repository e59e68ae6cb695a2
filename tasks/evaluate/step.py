"""The ``evaluate`` step: score bicubic and every requested model on an evaluation set, publish the report.

    manifest = run_evaluate(ctx, cfg, eval_set, {"teacher": teacher_manifest}, teacher_cfg)

Outputs (store ``evaluate/<key>/`` and the MLflow step run's artifacts): ``per_image.csv``, ``summary.md``,
``summary.csv``, ``efficiency.json``, ``grids/*.png``, ``report.json`` (the index: files + digests + the
summary numbers). MLflow gets ``<model>.<metric>`` (mean), ``<model>.<metric>.std``, the efficiency numbers
and every convention as params. Cached by (eval set digest, model digests, config hash, code version).
"""

from __future__ import annotations

import json
import time
import uuid
from functools import partial
from pathlib import Path

from safetensors.torch import load as safetensors_load
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.assets import AssetUnavailable, niqe_params_path
from srcompress.infra import registry
from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version
from srcompress.infra.store import atomic_write_bytes
from srcompress.models.device import resolve_device
from srcompress.models.iqa import MetricEnv
from srcompress.models.student.student import build_student, load_student
from srcompress.models.upscalers import Bicubic, DiffusionSR
from srcompress.tasks.evaluate.cluster import ClusterScorer
from srcompress.tasks.evaluate.config import EvaluateConfig
from srcompress.tasks.evaluate.data_step import read_eval_set
from srcompress.tasks.evaluate.datasets import png_bytes
from srcompress.tasks.evaluate.report import grid_indices, write_reports
from srcompress.tasks.evaluate.runner import Deferred, evaluate_models
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import fetch_teacher_folder, load_settings, materialize_teacher
from srcompress.tasks.common.threads import threads_for, use_threads

STEP = "evaluate"


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def metric_env(cfg: EvaluateConfig, log=None, assets: bool = True) -> MetricEnv:
    """The metric conventions of ``cfg``; ``assets`` also locates (fetching once) NIQE's parameters."""
    niqe = None
    if assets and {"niqe", "niqe_pyiqa"} & set(cfg.metrics):
        try:
            niqe = niqe_params_path()
        except AssetUnavailable as exc:  # reported by the niqe builder as unavailable, never fatal
            if log:
                log.warning("niqe: %s", exc)
    return MetricEnv(crop_border=cfg.crop_border, color_space=cfg.color_space, niqe_color_space=cfg.niqe_color_space,
                     ssim_downsample=cfg.ssim_downsample, ms_ssim_method=cfg.ms_ssim_method,
                     st_lpips_net=cfg.st_lpips_net, niqe_params=niqe)


def step_config_hash(cfg: EvaluateConfig, teacher_cfg: TeacherConfig) -> str:
    """The evaluation settings (not the device) and how the teacher is loaded (timestep, LoRA, …)."""
    return canonical_hash({"evaluate": cfg.model_dump(mode="json", exclude={"device", "items_per_task"}),
                           "teacher": load_settings(teacher_cfg)})


def load_model(ctx: RunContext, name: str, models: dict[str, Manifest], teacher_cfg: TeacherConfig, device):
    """A model of the table from its manifest: a teacher, a student folder, or the teacher under a mask."""
    if name not in models:
        raise ValueError(f"model {name!r} requested but no {name} manifest was produced")
    m, cache = models[name], Path(ctx.workdir)
    if m.kind == "teacher":
        return materialize_teacher(ctx.get_store(), m, teacher_cfg, cache / "teachers", device)
    if m.kind == "student":
        return load_student(fetch_teacher_folder(ctx.get_store(), m, cache / "students"), device=device)
    if m.kind == "model_version":  # a registered version: its pyfunc's student folder, from MLflow
        info = registry.resolve(m.uri, ctx.get_tracker().uri)
        folder = registry.download_student(info, ctx.get_tracker().uri, cache / "registered" / m.digest[:24])
        return load_student(folder, device=device)
    if m.kind == "regressor":  # teacher_adaptive: the teacher under AdaDiffSR's sampler, trained regressor
        from srcompress.tasks.common.adaptive import adaptive_teacher

        if "teacher" not in models:
            raise ValueError(f"model {name!r} needs the teacher manifest")
        teacher = materialize_teacher(ctx.get_store(), models["teacher"], teacher_cfg, cache / "teachers", device)
        return adaptive_teacher(ctx.get_store(), teacher, m)
    if m.kind == "mask":  # pruned / searched: built from the teacher, nothing trained beyond the search
        if "teacher" not in models:
            raise ValueError(f"model {name!r} needs the teacher manifest")
        teacher = materialize_teacher(ctx.get_store(), models["teacher"], teacher_cfg, cache / "teachers", device)
        store = ctx.get_store()
        result = json.loads(store.get_bytes(store.key_from_uri(m.uri), m.digest))
        lora = {}
        if name == "searched":
            raw = store.get_bytes(result["lora"]["key"], expected_sha256=result["lora"]["sha256"])
            lora = {k: v for k, v in safetensors_load(raw).items() if "lora_" in k}
        return build_student(teacher, result["mask"], lora, int(result["lora"]["rank"]), int(result["lora"]["alpha"]))
    raise ValueError(f"model {name!r}: cannot evaluate a {m.kind!r} manifest")


def registered_manifest(ctx: RunContext, ref: str) -> Manifest:
    """A ``models:/name@alias`` (or ``/version``) reference as a manifest: the version it resolves to now, and
    the student digest its lineage records (so the evaluation's cache key follows the alias)."""
    info = registry.resolve(ref, ctx.get_tracker().uri)
    digest = info["tags"].get("lineage.distill_pixel.digest")
    if not digest:
        raise ValueError(f"{ref}: version {info['version']} has no srcompress lineage (not registered by srcompress)")
    return Manifest(kind="model_version", step="register", uri=f"models:/{info['name']}/{info['version']}",
                    digest=digest, config_hash="", inputs={}, code_version="", cache_key="", run_id=info.get("run_id"),
                    extra={"ref": ref, "version": info["version"]})


def build_upscaler(ctx: RunContext, cfg: EvaluateConfig, scale: int, name: str, models: dict[str, Manifest],
                   teacher_cfg: TeacherConfig):
    """One model of the table, wrapped as the evaluation runs it (tiles, colour fix) on the step's device."""
    if name == "bicubic":
        return Bicubic(scale)
    inf = cfg.inference
    device = resolve_device(cfg.device or ctx.device, "evaluate.device" if cfg.device else "run.device")
    net = load_model(ctx, name, models, teacher_cfg, device)
    return DiffusionSR(net.eval(), scale=scale, name=name, tile=inf.tile, tile_overlap=inf.tile_overlap,
                       vae_tiling=inf.vae_tiling, vae_tile=inf.vae_tile, color_fix=inf.color_fix, seed=inf.seed,
                       channels_last=inf.channels_last)


def conventions(ctx: RunContext, cfg: EvaluateConfig, env: MetricEnv, eval_set: Manifest) -> dict:
    return {"metrics": env.conventions(), "inference": cfg.inference.model_dump(mode="json"),
            "data": {k: eval_set.extra.get(k) for k in ("source", "kind", "scale", "lq")},
            "outputs": "quantised to 8 bit before scoring", "std": "population (ddof=0)",
            "torch_threads": threads_for(ctx)}


def report_intact(ctx: RunContext, manifest: Manifest) -> bool:
    """The report object and every file it lists are in the store with matching content."""
    store = ctx.get_store()
    key = store.key_from_uri(manifest.uri)
    info = store.verify(key)
    if info is None or info.sha256 != manifest.digest:
        return False
    try:
        listing = json.loads(store.get_bytes(key))["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return ctx.get_cache().listed_intact(listing)


def _publish(ctx: RunContext, files: dict[str, Path], out: Path, prefix: str, summary: dict) -> tuple[str, str, dict]:
    store = ctx.get_store()
    listing = {}
    for path in files.values():
        rel = path.relative_to(out).as_posix()
        info = store.put_file(f"{prefix}/{rel}", path)
        listing[rel] = {"sha256": info.sha256, "uri": store.uri(info.key)}
    report = {"format": "srcompress.evaluation.v1", "files": listing, "summary": summary}
    obj = store.put_bytes(f"{prefix}/report.json", json.dumps(report, indent=1, sort_keys=True).encode())
    return store.uri(obj.key), obj.sha256, listing


def metric_prefix(model: str) -> str:
    """The model's name in metric keys: MLflow metric names may not contain '@' (registered aliases)."""
    return model.replace("@", "/alias/")


def _flat_metrics(result) -> dict[str, float]:
    """``<model>.<metric>`` means, ``.std``, and the efficiency numbers: what MLflow and the manifest carry."""
    metrics, name_of = {}, {}
    for model, summ in result.summary.items():
        name_of[metric_prefix(model)] = model
        model = metric_prefix(model)
        for metric, s in summ.items():
            if s.mean is not None:
                metrics[f"{model}.{metric}"] = s.mean
            if s.std is not None:
                metrics[f"{model}.{metric}.std"] = s.std
        for k, v in result.efficiency.get(name_of.get(model, model), {}).items():
            if isinstance(v, (int, float)) and k in ("latency_ms", "latency_p90_ms", "latency_min_ms",
                                                   "latency_max_ms", "macs", "params", "peak_mem_mb"):
                metrics[f"{model}.{k}"] = float(v)
    return metrics


def step_map_png(step_map, image: str) -> bytes:
    """The UNet steps each latent region of the last evaluated image took (overlaps: their mean)."""
    from srcompress.tasks.common.plots import png_bytes as figure_png, pyplot

    fig, ax = pyplot().subplots(figsize=(4, 3.4))
    im = ax.imshow(step_map.numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax, label="UNet steps")
    ax.set_title(f"steps per region: {image}", fontsize=8)
    ax.set_axis_off()
    return figure_png(fig)


@task(name="evaluate-models", cache_policy=NO_CACHE, retries=0)
def score_and_report(ctx: RunContext, cfg: EvaluateConfig, eval_set: Manifest, models: dict[str, Manifest],
                     teacher_cfg: TeacherConfig, conv: dict, key: str, vae_report: dict | None = None) -> dict:
    """Run every model on the set, score, write and publish the reports; returns paths, URIs and numbers."""
    use_threads(ctx)
    env = metric_env(cfg, get_run_logger())
    items, index = read_eval_set(ctx, eval_set)
    scale = int(eval_set.extra.get("scale", 4))
    ups = {name: Deferred(partial(build_upscaler, ctx, cfg, scale, name, models, teacher_cfg)) for name in cfg.models}
    keep = set(range(len(items))) if cfg.save_outputs else set(grid_indices([it.name for it in items], cfg.grid_images))
    scorer = None
    if ctx.ray_address:  # every (model, slice of images) a Ray task on the cluster; efficiency stays here
        scorer = ClusterScorer(ctx, cfg, eval_set, models, teacher_cfg, list(ups), len(items), keep, get_run_logger())
    result = evaluate_models(items, ups, cfg.metrics, env, keep, cfg.efficiency, scorer)
    out = Path(ctx.workdir) / "evaluations" / key[:16]
    files = write_reports(result, items, out, conv, cfg.grid_crop, index.get("skipped"), vae_report)
    if cfg.save_outputs:
        for model, outs in result.outputs.items():
            for idx, arr in outs.items():
                path = out / "outputs" / model.replace("models:/", "").replace("/", "-v") / f"{idx:05d}.png"
                atomic_write_bytes(path, png_bytes(arr))
                files[f"output_{model}_{idx}"] = path
    for model, step_map in result.step_maps.items():  # AdaDiffSR: which region got how many steps
        path = out / f"step_map_{model}.png"
        atomic_write_bytes(path, step_map_png(step_map[0], items[-1].name))
        files[f"step_map_{model}"] = path
    metrics = _flat_metrics(result)
    summary = {"metrics": metrics, "unavailable": result.unavailable, "images": len(items)}
    # A report records measured time, so two evaluations of the same inputs differ byte for byte: each one
    # publishes under its own prefix (concurrent runs never write different bytes to one key).
    uri, sha, listing = _publish(ctx, files, out, f"evaluate/{key[:24]}/{uuid.uuid4().hex[:12]}", summary)
    return {"metrics": metrics, "unavailable": result.unavailable, "out": str(out), "uri": uri, "sha256": sha,
            "listing": listing, "images": len(items), "models": len(ups),
            "scored_on": scorer.workers if scorer else {}}


def run_evaluate(ctx: RunContext, cfg: EvaluateConfig, eval_set: Manifest, models: dict[str, Manifest],
                 teacher_cfg: TeacherConfig, vae: Manifest | None = None) -> Manifest:
    """Step driver: cached by (eval-set digest, model digests, config hash, code version), one nested MLflow run.
    With ``vae`` (a compress_vae manifest) the report adds its reconstruction figures beside the teacher VAE's."""
    log = get_run_logger()
    tracker, cache = ctx.get_tracker(), ctx.get_cache()
    code_ver, chash = step_code_version(), step_config_hash(cfg, teacher_cfg)
    inputs = {"eval_set": eval_set.digest} | {n: m.digest for n, m in models.items() if n in cfg.models} | (
        {"compress_vae": vae.digest} if vae is not None else {})
    key = cache_key(STEP, chash, inputs, code_ver)
    hit = cache.get(STEP, key)
    if hit is not None and not report_intact(ctx, hit):
        hit = None
    conv = conventions(ctx, cfg, metric_env(cfg, assets=False), eval_set)
    with tracker.step_run(ctx.parent_run_id, STEP, {"evaluate": cfg.model_dump(mode="json"), "conventions": conv},
                          tags={"cache_key": key, "cache_hit": hit is not None} | key_tags(STEP, chash, inputs, code_ver)) as run_id:
        tracker.log_manifest(run_id, eval_set, context="evaluation")
        for m in models.values():
            tracker.log_manifest(run_id, m, context="model")
        if hit is not None:
            log.info("evaluate: cache hit %s; report at %s", key[:12], hit.extra.get("table_uri"))
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_metrics(run_id, hit.extra.get("metrics", {}))
            return hit
        t0 = time.perf_counter()
        r = score_and_report(ctx, cfg, eval_set, models, teacher_cfg, conv, key,
                             vae.extra["report"] if vae is not None else None)
        metrics, unavailable, out = r["metrics"], r["unavailable"], Path(r["out"])
        uri, sha, listing = r["uri"], r["sha256"], r["listing"]
        tracker.log_metrics(run_id, metrics)
        tracker.log_artifact(run_id, out, "evaluation")
        tracker.set_tags(run_id, {f"unavailable.{k}": v for k, v in unavailable.items()})
        table_uri = listing["summary.md"]["uri"]
        manifest = Manifest(kind="evaluation", step=STEP, uri=uri, digest=sha, config_hash=chash, inputs=inputs,
                            code_version=code_ver, cache_key=key, run_id=run_id,
                            counts={"images": r["images"], "models": r["models"], "metrics": len(cfg.metrics),
                                    "unavailable": len(unavailable)},
                            extra={"table_uri": table_uri, "table_path": str(out / "summary.md"),
                                   "per_image_uri": listing["per_image.csv"]["uri"], "metrics": metrics,
                                   "unavailable": unavailable, "seconds": round(time.perf_counter() - t0, 2),
                                   # Ray workers ("<node id>/<pid>") → scoring tasks run; empty when scored here
                                   "scored_on": r["scored_on"]})
        tracker.log_manifest_output(run_id, manifest)
        cache.put(manifest)
        log.info("evaluate: %d images × %d models in %.1f s; table %s", r["images"], r["models"],
                 time.perf_counter() - t0, out / "summary.md")
        return manifest
