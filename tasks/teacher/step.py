"""The ``bootstrap_teacher`` DAG step: produce the ``teacher`` manifest every later step loads the teacher from.

    srcompress run --config configs/tiny.yaml --until bootstrap_teacher

- ``teacher.source: bootstrap`` (embedded default): train the tiny SD3-style teacher on the train pairs,
  publish its diffusers folder to the store, and measure it against bicubic on the held-out pairs.
- a local folder: hash it and record it (no copy); a store URI of a published teacher index: verify and record.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version
from srcompress.infra.store import ArtifactStore, atomic_write_bytes
from srcompress.models.device import module_device, resolve_device
from srcompress.models.metrics import bicubic_to, psnr_y
from srcompress.models.teachers import OneStepTeacher, load_teacher, save_teacher
from srcompress.models.teachers.bootstrap import train_tiny_teacher
from srcompress.models.teachers.bootstrap_multistep import train_tiny_multistep
from srcompress.models.teachers.bootstrap_unet import train_tiny_unet
from srcompress.tasks.common.pairs import iter_pairs, load_all_pairs
from srcompress.tasks.common.plots import png_bytes, pyplot
from srcompress.tasks.common.teacher_config import TeacherConfig
from srcompress.tasks.common.teachers import folder_digest, load_kwargs, publish_folder, published_intact, vae_digest
from srcompress.tasks.common.threads import use_threads

STEP = "bootstrap_teacher"


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def step_config_hash(cfg: TeacherConfig) -> str:
    """Bootstrap: the training recipe only — load settings (timestep, LoRA, …) apply when later steps load the
    teacher and are in *their* keys, so changing them never retrains. Import: the whole teacher section."""
    if cfg.source == "bootstrap":
        recipe = cfg.bootstrap.model_dump(mode="json", exclude={"checkpoint_every", "max_seconds"})  # not results
        return canonical_hash({"bootstrap": recipe, "lq_upsample": cfg.lq_upsample})
    return cfg.config_hash()


@torch.no_grad()
def psnr_vs_bicubic(teacher: OneStepTeacher, store: ArtifactStore, pairs: Manifest, batch: int = 8) -> dict[str, float]:
    """Mean PSNR-Y (BT.601, crop 0) of the teacher and of bicubic upsampling, over a pairs manifest."""
    ours, bic, n = 0.0, 0.0, 0
    device = module_device(teacher)
    for _, lq, hq, _ in iter_pairs(store, pairs):
        hq_f = hq.float() / 255
        up = bicubic_to(lq.float() / 255, hq.shape[-2:])
        for i in range(0, len(hq_f), batch):
            sr = teacher(up[i : i + batch].to(device)).cpu()
            ours += psnr_y(sr, hq_f[i : i + batch]).sum().item()
            bic += psnr_y(up[i : i + batch], hq_f[i : i + batch]).sum().item()
            n += len(sr)
    return {"psnr_y_teacher": ours / n, "psnr_y_bicubic": bic / n, "eval_pairs": float(n)}


def training_plot(curves: dict, best_step: float | None) -> bytes:
    """PNG: the restorer's loss per step and the validation PSNR-Y (the kept step marked)."""
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(9, 3))
    a.plot(curves["restorer_loss"], lw=0.6)
    a.set_yscale("log")
    a.set_xlabel("restorer step")
    a.set_ylabel("latent loss")
    if curves["val_psnr_y"]:
        steps, psnr = zip(*curves["val_psnr_y"])
        b.plot(steps, psnr, marker=".")
        if best_step is not None:
            b.axvline(best_step, color="grey", ls="--", lw=0.8, label=f"kept: step {int(best_step)}")
            b.legend(fontsize=7)
    b.set_xlabel("restorer step")
    b.set_ylabel("validation PSNR-Y (dB)")
    return png_bytes(fig)


@task(name="bootstrap-teacher", cache_policy=NO_CACHE, retries=0)
def bootstrap(ctx: RunContext, cfg: TeacherConfig, pairs: Manifest, holdout: Manifest | None, key: str,
              config_hash: str, code_ver: str, run_id: str) -> Manifest:
    log = get_run_logger()
    use_threads(ctx)
    store, tracker = ctx.get_store(), ctx.get_tracker()
    bc = cfg.bootstrap
    lq, hq = load_all_pairs(store, pairs)
    lq = bicubic_to(lq, hq.shape[-2:])  # teacher input convention: LQ at HQ size (sr_bicubic)
    device = resolve_device(ctx.device, "run.device")
    log.info("bootstrap_teacher: training on %d pairs (%dpx) on %s, budget %.0fs", len(lq), hq.shape[-1], device,
             bc.max_seconds)
    ckpt_key = f"teacher/checkpoints/{key}.pt"
    resume = _load_checkpoint(store, ckpt_key, device, log)

    def save_checkpoint(state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        store.put_bytes(ckpt_key, buf.getvalue())  # atomic: a kill leaves the previous checkpoint intact

    train = train_tiny_multistep if bc.multistep is not None else train_tiny_unet if bc.unet is not None \
        else train_tiny_teacher
    teacher, stats = train(lq, hq, bc, log=log.info, device=device, checkpoint=save_checkpoint, resume=resume)
    stats["resumed_at_step"] = float(resume["step"]) if resume else 0.0
    if stats["seconds_total"] > bc.max_seconds:
        log.warning("bootstrap_teacher: took %.0fs, over the %.0fs budget", stats["seconds_total"], bc.max_seconds)
    # Published from an emptied folder: whatever an earlier attempt left there would become part of the teacher
    folder = ctx.scratch("teachers", key[:24])
    shutil.rmtree(folder)
    folder = save_teacher(teacher, folder)
    curves = stats.pop("curves")
    metrics = dict(stats)
    if holdout is not None:
        reloaded = load_teacher(folder, device=device)  # measure what later steps will load, not the in-memory object
        metrics.update(psnr_vs_bicubic(reloaded, store, holdout))
        log.info("bootstrap_teacher: held-out PSNR-Y teacher %.3f dB vs bicubic %.3f dB over %d pairs",
                 metrics["psnr_y_teacher"], metrics["psnr_y_bicubic"], metrics["eval_pairs"])
    uri, digest, index = publish_folder(store, folder, f"teacher/{key}")
    tracker.log_metrics(run_id, metrics)
    # every optimisation step's loss, as metric histories: what golden-curve tests and MLflow's charts read
    tracker.log_curves(run_id, {"vae_loss": curves["vae_loss"], "restorer_loss": curves["restorer_loss"]})
    tracker.log_text(run_id, json.dumps(metrics, indent=1), "teacher/metrics.json")
    plot = ctx.scratch("teacher-plots", key[:24]) / "training.png"  # beside the published folder, never in it
    atomic_write_bytes(plot, training_plot(curves, metrics.get("best_step")))
    tracker.log_artifact(run_id, plot, "teacher")
    inputs = {"pairs": pairs.digest} | ({"holdout": holdout.digest} if holdout else {})
    manifest = Manifest(kind="teacher", step=STEP, uri=uri, digest=digest, config_hash=config_hash, inputs=inputs,
                        code_version=code_ver, cache_key=key, run_id=run_id,
                        counts={"files": len(index["files"]), "train_pairs": len(lq)},
                        extra={"index_sha256": store.stat(store.key_from_uri(uri)).sha256, "mode": "bootstrap",
                               "vae_digest": vae_digest({k: v["sha256"] for k, v in index["files"].items()}),
                               **teacher.describe(), "metrics": metrics})
    ctx.get_cache().put(manifest)
    store.delete(ckpt_key)  # the finished teacher supersedes it
    return manifest


def _load_checkpoint(store: ArtifactStore, key: str, device, log) -> dict | None:
    """The last checkpoint of an interrupted bootstrap (verified; tensors only: ``weights_only`` loading)."""
    if store.verify(key) is None:
        return None
    try:
        state = torch.load(io.BytesIO(store.get_bytes(key)), map_location=device, weights_only=True)
    except Exception as exc:  # unreadable: start over rather than fail
        log.warning("bootstrap_teacher: ignoring unreadable checkpoint %s (%s)", store.uri(key), exc)
        return None
    log.info("bootstrap_teacher: resuming from checkpoint %s (step %d)", store.uri(key), state["step"])
    return state


def import_teacher(ctx: RunContext, cfg: TeacherConfig, key: str, config_hash: str, code_ver: str,
                   run_id: str) -> Manifest:
    """A user's teacher: a local folder (hashed, not copied) or a published index in a store."""
    store = ctx.get_store()
    folder = Path(cfg.source).expanduser()
    if folder.is_dir():
        digest, shas = folder_digest(folder)
        teacher = load_teacher(folder, **load_kwargs(cfg))
        uri, extra, files = folder.resolve().as_uri(), {"vae_digest": vae_digest(shas)}, len(shas)
    elif "://" in cfg.source:
        index = json.loads(store.get_bytes(store.key_from_uri(cfg.source)))
        uri, digest, files = cfg.source, index["digest"], len(index["files"])
        extra = {"index_sha256": store.stat(store.key_from_uri(cfg.source)).sha256,
                 "vae_digest": vae_digest({k: v["sha256"] for k, v in index["files"].items()})}
        teacher = None
    else:
        raise FileNotFoundError(f"teacher.source: {cfg.source} is neither 'bootstrap', a folder, nor a store URI")
    if teacher is not None:
        extra.update(teacher.describe())
    return Manifest(kind="teacher", step=STEP, uri=uri, digest=digest, config_hash=config_hash, inputs={},
                    code_version=code_ver, cache_key=key, run_id=run_id, counts={"files": files},
                    extra={"mode": "import", **extra})


def run_teacher(ctx: RunContext, cfg: TeacherConfig, pairs: Manifest | None, holdout: Manifest | None) -> Manifest:
    """Step driver: cached by (teacher config, pairs digests, code version) in one nested MLflow run.

    ``pairs`` may be None for an imported teacher (the evaluation flow needs no training data).
    """
    tracker, cache = ctx.get_tracker(), ctx.get_cache()
    code_ver, config_hash = step_code_version(), step_config_hash(cfg)
    boot = cfg.source == "bootstrap"
    if boot and pairs is None:
        raise ValueError("teacher.source=bootstrap needs the degrade pairs to train on")
    inputs = ({"pairs": pairs.digest} | ({"holdout": holdout.digest} if holdout else {})) if boot else {"source": cfg.source}
    key = cache_key(STEP, config_hash, inputs, code_ver)
    # Imports are never served from the cache: the folder behind a path may have changed, so its files are
    # re-hashed every run (that hash is the step's input digest, as the scan is for degrade).
    hit = cache.get(STEP, key) if boot else None
    if hit is not None and not published_intact(ctx.get_store(), hit):  # missing or corrupted: retrain
        hit = None
    t0 = time.perf_counter()
    with tracker.step_run(ctx.parent_run_id, STEP, {"teacher": cfg.model_dump(mode="json")},
                          tags={"cache_key": key, "cache_hit": hit is not None,
                                "mode": "bootstrap" if boot else "import", **key_tags(STEP, config_hash, inputs, code_ver)}) as run_id:
        if pairs is not None:
            tracker.log_manifest(run_id, pairs, context="training")
        if hit is not None:
            get_run_logger().info("bootstrap_teacher: cache hit %s; nothing to do", key[:12])
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            tracker.log_metrics(run_id, {k: v for k, v in hit.extra.get("metrics", {}).items()
                                         if isinstance(v, (int, float))})
            manifest = hit
        elif boot:
            manifest = bootstrap(ctx, cfg, pairs, holdout, key, config_hash, code_ver, run_id)
        else:
            manifest = import_teacher(ctx, cfg, key, config_hash, code_ver, run_id)
        tracker.log_metrics(run_id, {"step_seconds": time.perf_counter() - t0})
        tracker.log_manifest_output(run_id, manifest)
        return manifest
