"""Artifact store: ``open_store(cfg, workdir)`` gives a local or S3 backend behind one interface."""

from __future__ import annotations

import os
from pathlib import Path

from srcompress.infra.store.base import (
    ArtifactStore,
    IntegrityError,
    InvalidKeyError,
    ObjectInfo,
    ObjectNotFoundError,
    StoreConfig,
    StoreError,
    StoreUnavailableError,
    normalize_key,
    sha256_bytes,
    sha256_file,
)
from srcompress.infra.store.local import LocalStore, atomic_write_bytes


def open_store(cfg: StoreConfig, workdir: str | Path) -> ArtifactStore:
    """The configured store: ``store.uri``, else ``$SRCOMPRESS_STORE_URI``, else ``<workdir>/store`` on local disk."""
    uri = cfg.uri or os.environ.get("SRCOMPRESS_STORE_URI") or str(Path(workdir) / "store")
    if uri.startswith("s3://"):
        from srcompress.infra.store.s3 import S3Store

        return S3Store(uri, cfg)
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        uri = unquote(urlparse(uri).path)
    elif "://" in uri:
        raise StoreError(f"store.uri: unsupported scheme in {uri!r} (use a directory, file:// or s3://)")
    return LocalStore(uri)


__all__ = [
    "ArtifactStore", "IntegrityError", "InvalidKeyError", "LocalStore", "ObjectInfo", "ObjectNotFoundError",
    "StoreConfig", "StoreError", "StoreUnavailableError", "atomic_write_bytes", "normalize_key", "open_store",
    "sha256_bytes", "sha256_file",
]
