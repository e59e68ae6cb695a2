"""The ``eval_data`` step: turn ``--data`` (folder, paired folder, LR-only folder, pairs manifest, s3:// prefix)
into an evaluation set in the store — LR (and HR) PNGs plus an index — cached by the sources' content digest.

    manifest = run_eval_data(ctx, cfg, "s3://bucket/photos", degrade_cfg)

The set records how every LR was made (bicubic or seeded degradation), and which files were skipped and why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from srcompress.infra.config import canonical_hash, redact
from srcompress.infra.context import RunContext
from srcompress.infra.dryrun import key_tags
from srcompress.infra.manifest import Manifest, cache_key, code_version, digest_of_digests
from srcompress.infra.store import IntegrityError, InvalidKeyError, ObjectNotFoundError, atomic_write_bytes, sha256_file
from srcompress.models.degradations import DegradationConfig
from srcompress.tasks.common.pairs import iter_pairs
from srcompress.tasks.common.sources import DataConfig, list_sources, read_source
from srcompress.tasks.evaluate.config import EvaluateConfig
from srcompress.tasks.evaluate.datasets import EvalItem, detect_kind, image_files, load_items, png_bytes, png_decode

STEP = "eval_data"


def step_code_version() -> str:
    """Derived from this module's import closure (docs/architecture.md §3)."""
    return code_version(__name__)


def materialize_s3(ctx: RunContext, uri: str, cfg: EvaluateConfig) -> Path:
    """Copy an s3:// prefix (or one .json object) into the work dir; returns the local folder or file."""
    from srcompress.infra.store.s3 import S3Store

    scfg = ctx.store.model_copy(update={"uri": uri.rstrip("/") if not uri.endswith(".json") else uri.rsplit("/", 1)[0],
                                        "endpoint_url": cfg.data.endpoint_url or ctx.store.endpoint_url})
    store = S3Store(scfg.uri, scfg)
    dest = ctx.scratch("eval_src", hashlib.sha256(uri.encode()).hexdigest()[:16])
    limit = int(cfg.data.max_file_mb * 2**20)
    if uri.endswith(".json"):
        name = uri.rsplit("/", 1)[1]
        atomic_write_bytes(dest / name, store.get_raw(name, max_bytes=limit))
        return dest / name
    n = 0
    for key, size in store.list_raw():
        if any(p.startswith(".") for p in key.split("/")) or size > limit:
            continue
        atomic_write_bytes(dest / key, store.get_raw(key, max_bytes=limit))
        n += 1
    if n == 0:
        raise FileNotFoundError(f"evaluation data {uri}: no objects under this prefix")
    return dest


def materialize_holdout(ctx: RunContext, data_cfg: DataConfig) -> Path:
    """The pipeline's held-out source images (``data.held_out`` / ``held_out_fraction``), whole, in a local folder.

    The DAG evaluates them as an HR folder — centre-cropped to ``evaluate.data.center_crop`` and degraded like
    any HR dataset — rather than as the small training-size crops the teacher step validates on.
    """
    refs = list_sources(data_cfg, ctx.store, "holdout")
    if not refs:
        raise ValueError("evaluate: no held-out images (set data.held_out or data.held_out_fraction)")
    dest = ctx.scratch("eval_src", "holdout-" + canonical_hash(sorted((r.name, r.size) for r in refs))[:16])
    for ref in refs:
        path = dest / ref.name
        if not (path.is_file() and path.stat().st_size == ref.size):
            atomic_write_bytes(path, read_source(ref, data_cfg, ctx.store))
    return dest


def source_digest(path: Path, kind: str) -> str:
    if kind == "pairs":  # the pairs' content digest, not the manifest file's bytes
        return Manifest.from_json(path.read_bytes()).digest
    base = path / "lr" if kind == "lr" and (path / "lr").is_dir() else path
    return digest_of_digests(f"{name}:{sha256_file(p)}" for name, p in image_files(base))


def step_config_hash(cfg: EvaluateConfig, degrade_cfg: DegradationConfig, kind: str) -> str:
    parts = {"data": cfg.data.model_dump(mode="json"), "kind": kind}
    if kind == "hr" and cfg.data.lq == "degrade":
        # only the degradation parameters: the pipeline's crop/shard settings do not change evaluation LQs
        parts["degrade"] = canonical_hash(degrade_cfg.model_dump(mode="json", include=set(DegradationConfig.model_fields)))
    return canonical_hash(parts)


def _pairs_reader(ctx: RunContext):
    def read(path: Path):
        manifest = Manifest.from_json(path.read_bytes())
        store = ctx.get_store()
        if not manifest.uri.startswith(store.root_uri.rstrip("/") + "/"):
            raise ValueError(f"pairs manifest {path} points at {manifest.uri}, outside the configured store "
                             f"{store.root_uri} (set store.uri to the store that holds it)")
        for _, lq, hq, meta in iter_pairs(store, manifest):
            yield lq, hq, meta
    return read


def publish_items(ctx: RunContext, items: list[EvalItem], skipped: dict[str, str], prefix: str, info: dict) -> dict:
    store = ctx.get_store()
    entries = []
    for i, it in enumerate(items):
        lr = store.put_bytes(f"{prefix}/lr/{i:05d}.png", png_bytes(it.lr))
        hr = store.put_bytes(f"{prefix}/hr/{i:05d}.png", png_bytes(it.hr)) if it.hr is not None else None
        entries.append({"name": it.name, "lr": lr.key, "lr_sha256": lr.sha256, "hr": hr.key if hr else None,
                        "hr_sha256": hr.sha256 if hr else None, "source_sha256": it.source_sha256, "note": it.note})
    index = {"format": "srcompress.evalset.v1", **info, "items": entries, "skipped": skipped}
    obj = store.put_bytes(f"{prefix}/index.json", json.dumps(index, indent=1, sort_keys=True).encode())
    return {"index": index, "key": obj.key, "sha256": obj.sha256}


def eval_set_present(ctx: RunContext, manifest: Manifest) -> bool:
    """Every image of the set is in the store and its content matches the recorded digest."""
    store = ctx.get_store()
    try:
        index = json.loads(store.get_bytes(store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256")))
    except (ObjectNotFoundError, IntegrityError, InvalidKeyError):
        return False
    for entry in index["items"]:
        for kind in ("lr", "hr"):
            if entry[kind] is not None:
                info = store.verify(entry[kind])
                if info is None or info.sha256 != entry[f"{kind}_sha256"]:
                    return False
    return True


def read_eval_set(ctx: RunContext, manifest: Manifest, indices: list[int] | None = None) -> tuple[list[EvalItem], dict]:
    """The set's items (or only those at ``indices``: a scoring task reads its own slice), verified."""
    store = ctx.get_store()
    index = json.loads(store.get_bytes(store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256")))
    entries = index["items"] if indices is None else [index["items"][i] for i in indices]
    items = [EvalItem(e["name"], png_decode(store.get_bytes(e["lr"], e["lr_sha256"])),
                      png_decode(store.get_bytes(e["hr"], e["hr_sha256"])) if e["hr"] else None,
                      e["source_sha256"], e["note"]) for e in entries]
    return items, index


@task(name="build-eval-set", cache_policy=NO_CACHE, retries=0)  # bad data is not transient
def build_eval_set(ctx: RunContext, cfg: EvaluateConfig, path: Path, kind: str, degrade_cfg: DegradationConfig,
                   prefix: str, info: dict) -> dict:
    """Read the dataset (skipping bad files with a reason), make the LR where needed, publish PNGs + index."""
    log = get_run_logger()
    items, skipped = load_items(path, kind, cfg.data, degrade_cfg, _pairs_reader(ctx))
    for name, why in skipped.items():
        log.warning("eval_data: skipped %s: %s", name, why)
    if not items:
        raise ValueError(f"evaluation data {info['source']}: no usable images ({len(skipped)} skipped: "
                         f"{'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:3])})")
    return publish_items(ctx, items, skipped, prefix, info)


def run_eval_data(ctx: RunContext, cfg: EvaluateConfig, data: str | Manifest | DataConfig,
                  degrade_cfg: DegradationConfig) -> Manifest:
    """``data``: a path / s3:// URI (any dataset kind), a pairs manifest of this run, or the run's ``DataConfig``
    (the DAG: its held-out source images, evaluated as an HR folder)."""
    log = get_run_logger()
    tracker, cache = ctx.get_tracker(), ctx.get_cache()
    source_manifest = data if isinstance(data, Manifest) else None
    if isinstance(data, DataConfig):  # in-DAG: the held-out source images, whole
        path, kind = materialize_holdout(ctx, data), "hr"
        data = f"held-out images of {redact(data.source, 'uri')}"
    elif source_manifest is not None:  # a pairs manifest of this run, already in this store
        path = ctx.scratch("eval_src") / f"{source_manifest.digest[:16]}.json"
        atomic_write_bytes(path, source_manifest.to_json().encode())
        data = f"manifest:{source_manifest.step}:{source_manifest.digest[:16]}"
        kind = "pairs"
    else:
        path = materialize_s3(ctx, data, cfg) if data.startswith("s3://") else Path(data).expanduser().resolve()
        kind = detect_kind(path) if cfg.data.kind == "auto" else cfg.data.kind
    if kind == "hr" and cfg.data.lq == "degrade" and degrade_cfg.scale != cfg.data.scale:
        raise ValueError(f"evaluate.data.lq=degrade needs degrade.scale == evaluate.data.scale "
                         f"({degrade_cfg.scale} vs {cfg.data.scale})")
    digest, code_ver, chash = source_digest(path, kind), step_code_version(), step_config_hash(cfg, degrade_cfg, kind)
    key = cache_key(STEP, chash, {"source": digest}, code_ver)
    hit = cache.get(STEP, key)
    if hit is not None and not eval_set_present(ctx, hit):
        hit = None
    with tracker.step_run(ctx.parent_run_id, STEP, {"data": cfg.data.model_dump(mode="json"), "source": data,
                                                   "kind": kind}, tags={"cache_key": key, "cache_hit": hit is not None}
                          | key_tags(STEP, chash, {"source": digest}, code_ver)) as run_id:
        if source_manifest is not None:
            tracker.log_manifest(run_id, source_manifest, context="source")
        if hit is not None:
            log.info("eval_data: cache hit %s (%s images)", key[:12], hit.counts.get("images"))
            tracker.set_tags(run_id, {"source_run_id": hit.run_id or ""})
            return hit
        info = {"source": redact(data, "uri"), "kind": kind, "scale": cfg.data.scale,
                "lq": cfg.data.lq if kind == "hr" else kind, "source_digest": digest}
        pub = build_eval_set(ctx, cfg, path, kind, degrade_cfg, f"eval_data/{key[:24]}", info)
        entries, skipped = pub["index"]["items"], pub["index"]["skipped"]
        set_digest = digest_of_digests(f"{e['lr_sha256']}:{e['hr_sha256']}" for e in entries)
        manifest = Manifest(kind="eval_set", step=STEP, uri=ctx.get_store().uri(pub["key"]), digest=set_digest,
                            config_hash=chash, inputs={"source": digest}, code_version=code_ver, cache_key=key,
                            run_id=run_id, counts={"images": len(entries), "skipped": len(skipped),
                                                   "with_hr": sum(1 for e in entries if e["hr"] is not None)},
                            extra={"index_sha256": pub["sha256"], **info})
        if skipped:
            tracker.log_text(run_id, json.dumps(skipped, indent=2), "eval_data/skipped.json")
        tracker.log_manifest_output(run_id, manifest)
        cache.put(manifest)
        return manifest
