"""Artifact store interface: one API over a local directory and S3.

Guarantees every backend gives:
- **atomic publish**: a reader sees either no object or the whole object, never a partial one;
- **integrity**: the sha256 of every object is recorded at write time and verified on read;
- **confinement**: keys are relative, ``/``-separated and cannot escape the store's prefix (no ``..``);
- **clear failures**: an unreachable or misconfigured backend raises ``StoreUnavailableError`` after bounded
  retries, naming the endpoint but never credentials.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from pydantic import Field

from srcompress.infra.config import StrictModel

log = logging.getLogger("srcompress.store")

CHUNK = 1 << 20
META_DIR = ".srmeta"  # local backend: digest records live in a parallel hidden tree


class StoreError(RuntimeError):
    """Base class for artifact-store failures."""


class StoreUnavailableError(StoreError):
    """The backend could not be reached (after retries) or refused our credentials."""


class ObjectNotFoundError(StoreError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "object not found"


class IntegrityError(StoreError):
    """An object's bytes do not match the sha256 recorded for it."""


class InvalidKeyError(StoreError, ValueError):
    """A key that is absolute, empty, or escapes the store prefix."""


class StoreConfig(StrictModel):
    """Where artifacts live: a local directory (default) or an S3 prefix."""

    uri: str | None = Field(None, description="file:///abs/dir, a directory, or s3://bucket/prefix; default $SRCOMPRESS_STORE_URI, else <workdir>/store.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, …); default AWS. Env: SRCOMPRESS_S3_ENDPOINT_URL.")
    region: str | None = Field(None, description="S3 region; default from the AWS chain, else us-east-1.")
    profile: str | None = Field(None, description="AWS profile name (credentials always come from the standard AWS chain).")
    multipart_threshold_mb: int = Field(64, ge=5, description="Objects at least this large are uploaded in parts.")
    multipart_chunk_mb: int = Field(16, ge=5, description="Part size of multipart uploads.")
    max_attempts: int = Field(4, ge=1, le=20, description="Attempts per S3 call (connection errors, timeouts, 5xx, throttling) before the endpoint is declared unreachable; each retry is logged with the time budget left.")
    connect_timeout_s: float = Field(5.0, gt=0, description="S3 connect timeout per attempt.")
    read_timeout_s: float = Field(20.0, gt=0, description="S3 read timeout per attempt (an endpoint that accepts but never answers fails after at most max_attempts × (connect + 2 × this) + backoff).")
    retry_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles per attempt.")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    uri: str
    sha256: str
    size: int


_BAD_KEY = re.compile(r"[\x00-\x1f\\]")


def normalize_key(key: str) -> str:
    """Validate and normalise a store key. Rejects anything that could leave the store's prefix."""
    if not isinstance(key, str) or not key.strip("/"):
        raise InvalidKeyError(f"empty store key: {key!r}")
    if _BAD_KEY.search(key):
        raise InvalidKeyError(f"store key has control characters or backslashes: {key!r}")
    if key.startswith("/") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", key):
        raise InvalidKeyError(f"store key must be relative to the store prefix: {key!r}")
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        raise InvalidKeyError(f"store key may not contain '.' or '..' segments: {key!r}")
    norm = posixpath.normpath(key)
    if norm.startswith("..") or norm.startswith("/"):
        raise InvalidKeyError(f"store key escapes its prefix: {key!r}")
    if parts[0] == META_DIR or ".srtmp-" in key:
        raise InvalidKeyError(f"store key uses a reserved name ({META_DIR}/ or .srtmp-): {key!r}")
    return norm


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore(ABC):
    """The one interface every step writes through. ``uri(key)`` is what manifests record."""

    root_uri: str

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        """Publish a local file atomically under ``key``; records its sha256."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Publish bytes atomically under ``key``; records their sha256."""

    @abstractmethod
    def get_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        """Read an object, verifying the recorded sha256 (and ``expected_sha256`` if given)."""

    @abstractmethod
    def get_file(self, key: str, dest: str | Path, expected_sha256: str | None = None) -> Path:
        """Download to ``dest`` atomically, verifying the digest."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Recorded digest and size, or None if absent. Cheap: does not rehash."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a folder-style prefix), sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (no error if absent)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Absolute URI of ``key`` (file://… or s3://…)."""

    @abstractmethod
    def check(self) -> None:
        """Fail fast with ``StoreUnavailableError`` if the store cannot be reached or written."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def _require(self, key: str) -> ObjectInfo:
        info = self.stat(key)
        if info is None:
            raise ObjectNotFoundError(f"no object {key!r} in {self.root_uri}")
        return info

    def verify(self, key: str) -> ObjectInfo | None:
        """The object's info if it is present *and* its content matches the recorded sha256, else None.

        A mismatch is logged as corruption, naming the object, and reported as absent so that the producer
        recomputes it and the run heals itself. Backends override this with a cheaper check where they have one.
        """
        info = self.stat(key)
        if info is None:
            return None
        try:
            self.get_bytes(key)
        except IntegrityError as exc:
            log.warning("corrupt object %s: %s; treating it as missing", self.uri(key), exc)
            return None
        return info

    def open_read(self, key: str) -> BinaryIO:
        import io

        return io.BytesIO(self.get_bytes(key))

    def key_from_uri(self, uri: str) -> str:
        """Inverse of ``uri``: the key of an absolute URI inside this store."""
        root = self.root_uri.rstrip("/") + "/"
        if not uri.startswith(root):
            raise InvalidKeyError(f"{uri} is not inside this store ({self.root_uri})")
        return normalize_key(uri[len(root):])

    @staticmethod
    def _verify(key: str, actual: str, recorded: str | None, expected: str | None) -> None:
        for label, want in (("recorded", recorded), ("expected", expected)):
            if want is not None and want != actual:
                raise IntegrityError(f"{key}: sha256 {actual[:12]}… does not match the {label} {want[:12]}…")
