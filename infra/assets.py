"""Offline metric assets: files some metrics need that no installed wheel provides directly.

    srcompress assets fetch            # once, on a machine that can reach the package registry
    srcompress assets show             # where each asset is and whether it is present

NIQE's official parameters (the MATLAB release's ``modelparameters.mat``, re-saved by BasicSR as
``niqe_pris_params.npz``) ship inside the ``basicsr`` *source distribution*. We never import basicsr: the
sdist is fetched from the package registry (the only network these deployments allow), its sha256 checked
against the pin below, the one ``.npz`` member extracted (read with ``allow_pickle=False``) and kept in the
asset directory. Air-gapped sites point ``SRCOMPRESS_BASICSR_SDIST`` at a local copy of the same sdist.
``basicsr_sdist_members`` reads other members of that sdist (the reference tests load BasicSR's degradation
source from it) and keeps the sdist itself in the asset directory, so later reads need no network.

Asset directory: ``$SRCOMPRESS_ASSETS`` or ``~/.cache/srcompress/assets``.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from srcompress.infra.store import atomic_write_bytes, sha256_bytes

log = logging.getLogger(__name__)

# basicsr 1.4.2 sdist on PyPI (the version BasicSR's NIQE port and pyiqa's were made from).
BASICSR_SDIST_URL = ("https://files.pythonhosted.org/packages/86/41/00a6b000f222f0fa4c6d9e1d6dcc9811a374cabb8abb9d408b77de39648c/"
                     "basicsr-1.4.2.tar.gz")
BASICSR_SDIST_SHA256 = "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"
NIQE_MEMBER = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"
NIQE_FILE = "niqe_pris_params.npz"
BASICSR_SDIST_FILE = "basicsr-1.4.2.tar.gz"


class AssetUnavailable(RuntimeError):
    """An asset is missing and could not be obtained; the message says which file and where."""


@dataclass(frozen=True)
class AssetStatus:
    name: str
    path: Path
    present: bool
    source: str


def assets_dir() -> Path:
    return Path(os.environ.get("SRCOMPRESS_ASSETS") or Path.home() / ".cache" / "srcompress" / "assets").expanduser()


def _read_sdist(source: str, timeout: float) -> bytes:
    if "://" not in source:
        return Path(source).expanduser().read_bytes()
    with urllib.request.urlopen(source, timeout=timeout) as resp:  # noqa: S310 - pinned https URL or user's choice
        return resp.read()


def _pinned_sdist(src: str, timeout: float, missing: str) -> bytes:
    """The basicsr sdist from ``src``, refused unless its sha256 is the pinned one; ``missing`` opens the error."""
    try:
        sdist = _read_sdist(src, timeout)
    except OSError as exc:
        raise AssetUnavailable(f"{missing} and the basicsr sdist could not be read from {src}: {exc}") from None
    digest = sha256_bytes(sdist)
    if digest != BASICSR_SDIST_SHA256:
        raise AssetUnavailable(f"basicsr sdist from {src} has sha256 {digest[:16]}…, expected "
                               f"{BASICSR_SDIST_SHA256[:16]}… (basicsr 1.4.2)")
    return sdist


def basicsr_sdist_members(members: Sequence[str], source: str | None = None, timeout: float = 60.0) -> dict[str, bytes]:
    """Bytes of ``members`` (paths inside the tarball, e.g. ``basicsr-1.4.2/basicsr/utils/diffjpeg.py``) of the
    pinned basicsr sdist. The sdist is read from the asset directory when a copy with the pinned digest is
    there; otherwise from ``source`` / ``$SRCOMPRESS_BASICSR_SDIST`` / PyPI, and then kept there."""
    cached = assets_dir() / BASICSR_SDIST_FILE
    sdist = cached.read_bytes() if cached.is_file() else b""
    if sha256_bytes(sdist) != BASICSR_SDIST_SHA256:  # absent or damaged: fetch again
        src = source or os.environ.get("SRCOMPRESS_BASICSR_SDIST") or BASICSR_SDIST_URL
        sdist = _pinned_sdist(src, timeout, f"{BASICSR_SDIST_FILE} not in {cached.parent}")
        atomic_write_bytes(cached, sdist)
        log.info("assets: wrote %s (from %s)", cached, src)
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        for name in members:
            try:
                member = tar.extractfile(name)  # regular members only; nothing is extracted to disk
            except KeyError:
                member = None
            if member is None:
                raise AssetUnavailable(f"{name} missing from the basicsr sdist")
            out[name] = member.read()
    return out


def check_niqe_params(data: bytes) -> dict[str, np.ndarray]:
    """Load the npz without pickle and check it has the official shapes (36-d MVG + 7×7 window)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: np.asarray(npz[k]) for k in npz.files}
    shapes = {k: v.shape for k, v in arrays.items()}
    if shapes.get("mu_pris_param") not in ((1, 36), (36,)) or shapes.get("cov_pris_param") != (36, 36):
        raise AssetUnavailable(f"{NIQE_FILE}: unexpected contents {shapes}")
    return arrays


def fetch_niqe_params(dest_dir: Path | None = None, source: str | None = None, timeout: float = 60.0) -> Path:
    """Obtain ``niqe_pris_params.npz`` from the basicsr sdist (digest-pinned) into the asset directory."""
    dest = (dest_dir or assets_dir()) / NIQE_FILE
    src = source or os.environ.get("SRCOMPRESS_BASICSR_SDIST") or BASICSR_SDIST_URL
    sdist = _pinned_sdist(src, timeout, f"{NIQE_FILE} not in {dest.parent}")
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        member = tar.extractfile(NIQE_MEMBER)  # read one regular member; nothing is extracted to disk
        if member is None:
            raise AssetUnavailable(f"{NIQE_MEMBER} missing from the basicsr sdist")
        data = member.read()
    check_niqe_params(data)
    atomic_write_bytes(dest, data)
    log.info("assets: wrote %s (from %s)", dest, src)
    return dest


def niqe_params_path(fetch: bool = True) -> Path:
    """Path of the official NIQE parameters; fetched on first use unless ``fetch`` is False."""
    path = assets_dir() / NIQE_FILE
    if path.is_file():
        return path
    if not fetch:
        raise AssetUnavailable(f"{NIQE_FILE} not in {path.parent} (run `srcompress assets fetch`)")
    return fetch_niqe_params(path.parent)


def status() -> list[AssetStatus]:
    path = assets_dir() / NIQE_FILE
    src = os.environ.get("SRCOMPRESS_BASICSR_SDIST") or BASICSR_SDIST_URL
    return [AssetStatus(NIQE_FILE, path, path.is_file(), f"{NIQE_MEMBER} in {src} (sha256 {BASICSR_SDIST_SHA256})")]
