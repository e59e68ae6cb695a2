"""Local-directory backend of the artifact store.

Objects live at ``<root>/<key>``; their digest record at ``<root>/.srmeta/<key>.json``. Publishing writes a
temporary file in the destination folder, fsyncs it and renames it into place (``os.replace`` is atomic on
POSIX), digest record first, data last — so a reader never sees a partial object, and a crash between the
two renames is detected on read as a digest mismatch rather than served silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from srcompress.infra.store.base import (
    CHUNK,
    META_DIR,
    ArtifactStore,
    ObjectInfo,
    ObjectNotFoundError,
    log,
    normalize_key,
    sha256_bytes,
    sha256_file,
)


@contextlib.contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A temp file beside ``dest``, fsynced and renamed over it on success, removed on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.srtmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` via temp file + fsync + rename (also used outside the store)."""
    with _atomic_file(dest) as f:
        f.write(data)


def atomic_copy(src: Path, dest: Path) -> None:
    with _atomic_file(dest) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, CHUNK)


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root_uri = self.root.as_uri()

    def check(self) -> None:
        from srcompress.infra.store.base import StoreUnavailableError

        probe = self.root / META_DIR / ".probe"
        try:
            atomic_write_bytes(probe, b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailableError(f"local store {self.root} is not writable: {exc}") from None

    # -- paths ---------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        key = normalize_key(key)
        path = (self.root / key).resolve()
        if self.root not in path.parents:  # symlinks inside the store may not lead out of it
            raise ObjectNotFoundError(f"{key}: resolves outside the store")
        return path

    def _meta(self, key: str) -> Path:
        return self.root / META_DIR / f"{normalize_key(key)}.json"

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    # -- writes --------------------------------------------------------------------------------------
    def _publish_meta(self, key: str, digest: str, size: int) -> None:
        atomic_write_bytes(self._meta(key), json.dumps({"sha256": digest, "size": size}).encode())

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        path = self._path(key)
        digest = sha256_bytes(data)
        self._publish_meta(key, digest, len(data))
        atomic_write_bytes(path, data)
        return ObjectInfo(normalize_key(key), path.as_uri(), digest, len(data))

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        src = Path(path)
        dest = self._path(key)
        digest = sha256_file(src)
        size = src.stat().st_size
        self._publish_meta(key, digest, size)
        atomic_copy(src, dest)
        return ObjectInfo(normalize_key(key), dest.as_uri(), digest, size)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        self._meta(key).unlink(missing_ok=True)

    # -- reads ---------------------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo | None:
        path, meta = self._path(key), self._meta(key)
        if not path.is_file() or not meta.is_file():
            return None
        try:
            rec = json.loads(meta.read_text())
            digest, size = str(rec["sha256"]), int(rec["size"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("unreadable digest record %s (%s); treating %s as missing", meta, type(exc).__name__,
                        path.as_uri())
            return None
        if path.stat().st_size != size:
            return None  # torn overwrite: treat as absent so the producer redoes it
        return ObjectInfo(normalize_key(key), path.as_uri(), digest, size)

    def verify(self, key: str) -> ObjectInfo | None:
        """Re-hash the file against its record (cost: one sequential read of the object)."""
        info = self.stat(key)
        if info is None:
            return None
        actual = sha256_file(self._path(key))
        if actual != info.sha256:
            log.warning("corrupt object %s: content sha256 %s… does not match the recorded %s…; "
                        "treating it as missing", info.uri, actual[:12], info.sha256[:12])
            return None
        return info

    def get_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        info = self._require(key)
        data = self._path(key).read_bytes()
        self._verify(key, sha256_bytes(data), info.sha256, expected_sha256)
        return data

    def get_file(self, key: str, dest: str | Path, expected_sha256: str | None = None) -> Path:
        info = self._require(key)
        dest = Path(dest)
        atomic_copy(self._path(key), dest)
        try:
            self._verify(key, sha256_file(dest), info.sha256, expected_sha256)
        except Exception:
            dest.unlink(missing_ok=True)
            raise
        return dest

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / normalize_key(prefix) if prefix.strip("/") else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and not rel.startswith(META_DIR + "/") and ".srtmp-" not in path.name:
                info = self.stat(rel)
                if info is not None:
                    yield info
