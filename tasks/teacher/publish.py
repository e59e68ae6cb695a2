"""Teacher folders ↔ the artifact store, and the one way later steps obtain a teacher from its manifest.

A published teacher is a set of files (the diffusers folder) plus an index object listing each file's key and
sha256; the teacher's digest is a digest over (relative path, sha256) pairs. A user's local folder is not
copied: its manifest points at the folder and carries the same digest. ``materialize_teacher`` turns a
manifest back into a loaded teacher on any worker (downloading and verifying when it lives in a store).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from srcompress.infra.manifest import Manifest, digest_of_digests
from srcompress.infra.store import ArtifactStore, sha256_file
from srcompress.models.teachers import OneStepTeacher, load_teacher
from srcompress.tasks.teacher.config import TeacherConfig


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
        info = store.stat(key)
        if info is None or info.sha256 != shas[rel]:
            info = store.put_file(key, path)
        entries[rel] = {"key": info.key, "sha256": info.sha256, "size": info.size}
    index = {"format": "srcompress.teacher-index.v1", "digest": digest, "files": entries}
    idx = store.put_bytes(f"{prefix}/index.json", json.dumps(index, indent=1, sort_keys=True).encode())
    return idx.uri, digest, index


def local_folder_of(uri: str) -> Path | None:
    """The folder of a ``file://`` teacher manifest whose uri is a directory (an imported local teacher)."""
    if uri.startswith("file://"):
        path = Path(unquote(urlparse(uri).path))
        return path if path.is_dir() else None
    return None


def fetch_teacher_folder(store: ArtifactStore, manifest: Manifest, cache_root: Path) -> Path:
    """Local folder holding the manifest's teacher, downloaded and verified once per machine."""
    local = local_folder_of(manifest.uri)
    if local is not None:
        return local
    dest = cache_root / manifest.digest[:24]
    marker = dest / ".complete"
    if marker.is_file() and marker.read_text() == manifest.digest:
        return dest
    index = json.loads(store.get_bytes(store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256")))
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".teacher-", dir=cache_root))
    try:
        for rel, ent in index["files"].items():
            store.get_file(ent["key"], tmp / rel, expected_sha256=ent["sha256"])
        (tmp / ".complete").write_text(manifest.digest)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)  # atomic: a folder appears complete or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


@lru_cache(maxsize=2)
def _load_cached(folder: str, cfg_json: str, digest: str) -> OneStepTeacher:
    cfg = TeacherConfig.model_validate_json(cfg_json)
    return load_teacher(folder, kind=cfg.kind, latent_mode=cfg.latent_mode, use_shift_factor=cfg.use_shift_factor,
                        timestep=cfg.timestep, lora=cfg.lora)


def materialize_teacher(store: ArtifactStore, manifest: Manifest, cfg: TeacherConfig, cache_root: Path) -> OneStepTeacher:
    """The teacher of a ``teacher`` manifest, loaded (memoised per process)."""
    if manifest.kind != "teacher":
        raise ValueError(f"expected a teacher manifest, got {manifest.kind!r}")
    folder = fetch_teacher_folder(store, manifest, cache_root)
    # Bootstrapped teachers carry their conventions in teacher.json; config overrides only apply to imports.
    return _load_cached(str(folder), cfg.model_dump_json(exclude={"bootstrap"}), manifest.digest)
