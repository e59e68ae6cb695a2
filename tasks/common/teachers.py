"""Teacher folders ↔ the artifact store, and the one way later steps obtain a teacher from its manifest.

A published teacher is a set of files (the diffusers folder) plus an index object listing each file's key and
sha256; the teacher's digest is a digest over (relative path, sha256) pairs. A user's local folder is not
copied: its manifest points at the folder and carries the same digest. ``materialize_teacher`` turns a
manifest back into a loaded teacher on any worker (downloading and verifying when it lives in a store).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch

from srcompress.infra.manifest import Manifest, digest_of_digests
from srcompress.infra.store import ArtifactStore, InvalidKeyError, sha256_file
from srcompress.models.teachers import OneStepTeacher, load_teacher
from srcompress.models.teachers.loader import NO_LORA, PROMPT_FILE
from srcompress.tasks.common.teacher_config import TeacherConfig


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def folder_digest(folder: Path) -> tuple[str, dict[str, str]]:
    """(digest, {relative path: sha256}) of a teacher folder."""
    files = {rel: sha256_file(p) for rel, p in folder_files(folder)}
    if not files:
        raise FileNotFoundError(f"teacher folder {folder} is empty")
    return digest_of_digests(f"{rel}:{sha}" for rel, sha in sorted(files.items())), files


def vae_digest(shas: dict[str, str]) -> str:
    """Digest of the VAE files alone (recorded with latent caches: latents are only comparable under one VAE)."""
    return digest_of_digests(f"{rel}:{sha}" for rel, sha in sorted(shas.items()) if rel.startswith("vae/"))


def publish_folder(store: ArtifactStore, folder: Path, prefix: str) -> tuple[str, str, dict]:
    """Upload every file under ``prefix/files/`` and an index; returns (index uri, digest, index)."""
    digest, shas = folder_digest(folder)
    entries = {}
    for rel, path in folder_files(folder):
        key = f"{prefix}/files/{rel}"
        info = store.verify(key)
        if info is None or info.sha256 != shas[rel]:
            info = store.put_file(key, path)
        entries[rel] = {"key": info.key, "sha256": info.sha256, "size": info.size}
    index = {"format": "srcompress.teacher-index.v1", "digest": digest, "files": entries}
    idx = store.put_bytes(f"{prefix}/index.json", json.dumps(index, indent=1, sort_keys=True).encode())
    return idx.uri, digest, index


def published_intact(store: ArtifactStore, manifest: Manifest) -> bool:
    """A published teacher's index and every file it lists are in the store with matching content."""
    try:
        key = store.key_from_uri(manifest.uri)
    except InvalidKeyError:
        return False
    info = store.verify(key)
    if info is None or info.sha256 != manifest.extra.get("index_sha256", info.sha256):
        return False
    try:
        files = json.loads(store.get_bytes(key))["files"]
    except (ValueError, KeyError, TypeError):
        return False
    return all((i := store.verify(e["key"])) is not None and i.sha256 == e["sha256"] for e in files.values())


def local_folder_of(uri: str) -> Path | None:
    """The folder of a ``file://`` teacher manifest whose uri is a directory (an imported local teacher)."""
    if uri.startswith("file://"):
        path = Path(unquote(urlparse(uri).path))
        return path if path.is_dir() else None
    return None


def fetch_teacher_folder(store: ArtifactStore, manifest: Manifest, cache_root: Path) -> Path:
    """Local folder holding the manifest's teacher, downloaded and verified once per machine.

    Several actors may fetch the same teacher at once. Each downloads into its own temporary folder and
    publishes it with one ``rename``; the loser of the race finds the winner's complete folder and drops its
    own copy. A folder that is complete is never deleted or replaced, so a sibling loading from it is safe.
    """
    local = local_folder_of(manifest.uri)
    if local is not None:
        return local
    dest = cache_root / manifest.digest[:24]
    if _complete(dest, manifest.digest):
        return dest
    index = json.loads(store.get_bytes(store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256")))
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".teacher-", dir=cache_root))
    try:
        for rel, ent in index["files"].items():
            store.get_file(ent["key"], tmp / rel, expected_sha256=ent["sha256"])
        (tmp / COMPLETE).write_text(manifest.digest)
        if dest.exists() and not _complete(dest, manifest.digest):
            # Left by an older layout or a foreign process: nobody loads an incomplete folder, so it can go.
            stale = cache_root / f".stale-{uuid.uuid4().hex}"
            with contextlib.suppress(OSError):
                os.rename(dest, stale)
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, dest)  # atomic publish; fails if a sibling published first
        except OSError:
            if not _complete(dest, manifest.digest):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


SHAPE_FILES = ("transformer/config.json", "vae/config.json", PROMPT_FILE)


def fetch_teacher_shapes(store: ArtifactStore, manifest: Manifest, dest: Path) -> Path:
    """The files that fix an SD3 teacher's shapes (its two configs and the prompt embedding), not its weights:
    all a meta-device count needs (``models/student/plan.py: teacher_from_folder``). A local teacher folder is
    read in place; otherwise the files are downloaded, verified, into ``dest``."""
    local = local_folder_of(manifest.uri)
    if local is not None:
        return local
    index = json.loads(store.get_bytes(store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256")))
    for rel in SHAPE_FILES:
        ent = index["files"].get(rel)
        if ent is None:
            raise ValueError(f"the teacher at {manifest.uri} has no {rel}: only SD3-transformer teachers have a "
                             "per-block cost model")
        store.get_file(ent["key"], dest / rel, expected_sha256=ent["sha256"])
    return dest


COMPLETE = ".complete"


def _complete(folder: Path, digest: str) -> bool:
    marker = folder / COMPLETE
    try:
        return marker.read_text() == digest
    except OSError:
        return False


def load_settings(cfg: TeacherConfig) -> dict:
    """Every teacher setting that changes what a step computes with the teacher, for its cache key.

    An explicit LoRA folder is identified by its content digest (a LoRA outside the teacher folder is not
    covered by the teacher's digest); ``null`` (the folder's own lora/, covered by the teacher digest) and
    ``'none'`` are recorded as such. Placement (device) is not a setting: results do not depend on it.
    """
    lora: str | dict
    if cfg.lora is None or cfg.lora == NO_LORA:
        lora = "folder-default" if cfg.lora is None else NO_LORA
    else:
        path = Path(cfg.lora).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"teacher.lora: {cfg.lora} is not a folder")
        lora = {"digest": folder_digest(path)[0]}
    return {"kind": cfg.kind, "latent_mode": cfg.latent_mode, "use_shift_factor": cfg.use_shift_factor,
            "timestep": cfg.timestep, "lq_upsample": cfg.lq_upsample, "lora": lora, "steps": cfg.steps,
            "scheduler": cfg.scheduler}


@lru_cache(maxsize=2)
def _load_cached(folder: str, cfg_json: str, digest: str, device: str) -> OneStepTeacher:
    cfg = TeacherConfig.model_validate_json(cfg_json)
    return load_teacher(folder, **load_kwargs(cfg), device=device)


def load_kwargs(cfg: TeacherConfig, one_step: bool = False) -> dict:
    """``load_teacher``'s arguments from the teacher config (one place: every step loads the same teacher)."""
    return dict(kind=cfg.kind, latent_mode=cfg.latent_mode, use_shift_factor=cfg.use_shift_factor,
                timestep=cfg.timestep, lora=cfg.lora, steps=cfg.steps, scheduler=cfg.scheduler, one_step=one_step)


def materialize_teacher(store: ArtifactStore, manifest: Manifest, cfg: TeacherConfig, cache_root: Path,
                        device: torch.device | str = "cpu") -> OneStepTeacher:
    """The teacher of a ``teacher`` manifest, loaded with ``cfg``'s load settings on ``device`` (memoised)."""
    if manifest.kind != "teacher":
        raise ValueError(f"expected a teacher manifest, got {manifest.kind!r}")
    folder = fetch_teacher_folder(store, manifest, cache_root)
    return _load_cached(str(folder), cfg.model_dump_json(exclude={"bootstrap", "source"}), manifest.digest,
                        str(device))
