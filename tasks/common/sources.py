"""Where HR images come from: a local folder, an ``s3://`` prefix, or photos that installed packages ship.

``bundled`` is the embedded default (docs/stack.md, offline assets): nothing is downloaded; the photos come from the
scikit-image and scikit-learn wheels, pyiqa's calibration Kodak images and, if installed, Debian's
``mate-backgrounds``. Each set is listed explicitly so the dataset digest is the same on every machine that
has the same package versions.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from srcompress.infra.config import StrictModel
from srcompress.infra.store import StoreConfig

BundledSet = Literal["skimage", "sklearn", "kodak", "mate"]

# skimage/data: the colour photographs (public domain / CC0), not the synthetic or microscopy images.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "retina.jpg", "motorcycle_left.png", "motorcycle_right.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")  # CC-BY-2.0
MATE_DIR = Path("/usr/share/backgrounds/mate/nature")


class DataConfig(StrictModel):
    """The HR image source of a pipeline run and how odd inputs are handled."""

    source: str = Field("bundled", description="A local folder, an s3://bucket/prefix, or 'bundled' (photos shipped in packages).")
    bundled_sets: list[BundledSet] = Field(["skimage", "sklearn", "kodak"], description="Which package-shipped photo sets 'bundled' uses.")
    held_out: list[str] = Field([], description="Source names reserved for evaluation: never degraded into training pairs (must exist in the source).")
    held_out_fraction: float = Field(0.0, ge=0, lt=1, description="Also reserve this fraction of the sources for evaluation, chosen by a seeded hash of their names (works on any dataset; at least one image when > 0).")
    held_out_seed: int = Field(0, description="Seed of the held_out_fraction selection.")
    endpoint_url: str | None = Field(None, description="S3 endpoint for an s3:// source; default: the store's endpoint.")
    max_images: int | None = Field(None, ge=1, description="Use at most this many sources (after sorting by name); None = all.")
    max_pixels: int = Field(100_000_000, ge=1, description="Images with more pixels are quarantined (decompression-bomb guard).")
    max_file_mb: float = Field(512.0, gt=0, description="Files larger than this are quarantined without being read.")
    copy_quarantined_mb: float = Field(64.0, ge=0, description="Quarantined files up to this size are copied into the store.")


@dataclass(frozen=True)
class SourceRef:
    """One candidate input file. ``name`` is stable and unique within the source (relative path or key)."""

    name: str
    origin: Literal["file", "s3"]
    location: str  # absolute path, or key under the s3 prefix
    size: int


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def bundled_files(sets: list[str]) -> list[tuple[str, Path]]:
    """(name, path) of the bundled photos; a requested set that is not installed is a clear error."""
    out: list[tuple[str, Path]] = []
    for name in sets:
        if name == "skimage":
            base = _package_dir("skimage")
            files = [(f"skimage/{f}", base / "data" / f) for f in SKIMAGE_PHOTOS] if base else []
        elif name == "sklearn":
            base = _package_dir("sklearn")
            files = [(f"sklearn/{f}", base / "datasets" / "images" / f) for f in SKLEARN_PHOTOS] if base else []
        elif name == "kodak":
            base = _package_dir("pyiqa")
            ref = base.parent / "ResultsCalibra" / "ref_dir" if base else None
            files = [(f"kodak/{p.name}", p) for p in sorted(ref.glob("*.bmp"))] if ref and ref.is_dir() else []
        elif name == "mate":
            files = [(f"mate/{p.name}", p) for p in sorted(MATE_DIR.glob("*.jpg"))] if MATE_DIR.is_dir() else []
            if not files:
                raise FileNotFoundError(f"bundled set 'mate' needs the Debian package mate-backgrounds ({MATE_DIR})")
        else:
            raise ValueError(f"unknown bundled set {name!r}")
        missing = [str(p) for _, p in files if not p.is_file()]
        if not files or missing:
            raise FileNotFoundError(f"bundled set {name!r} is incomplete on this machine: missing {missing or name}")
        out.extend(files)
    return out


def scan_folder(root: Path, exts: set[str] | None = None) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """(name relative to root, path) of the regular files under ``root`` — sorted, hidden names (.*) skipped,
    symlinks to files followed, symlinked folders not followed — and every other entry a user could have
    meant as an input, with the reason it is skipped: broken or looping links, FIFOs / sockets / devices,
    folders named like images, unreadable files. ``exts`` restricts files to those suffixes (lower case)."""
    files: list[tuple[str, Path]] = []
    skipped: dict[str, str] = {}

    def wanted(name: str) -> bool:
        return exts is None or Path(name).suffix.lower() in exts

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for d in list(dirnames):
            rel = (base / d).relative_to(root).as_posix()
            if (base / d).is_symlink():
                dirnames.remove(d)
                skipped[rel] = "symbolic link to a folder (not followed)"
            elif exts is not None and wanted(d):
                skipped[rel] = "a folder named like an image file"
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            path, rel = base / f, (base / f).relative_to(root).as_posix()
            if not wanted(f):
                continue
            try:
                st = path.stat()
            except OSError as exc:
                loop = exc.errno == errno.ELOOP
                skipped[rel] = "symbolic link loop" if loop else f"broken symbolic link ({os.readlink(path)})" \
                    if path.is_symlink() else f"unreadable: {exc.strerror}"
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
                skipped[rel] = f"not a regular file ({kind})"
            elif not os.access(path, os.R_OK):
                skipped[rel] = "unreadable: permission denied"
            else:
                files.append((rel, path))
    return sorted(files), skipped


def list_sources(cfg: DataConfig, store_cfg: StoreConfig, split: str = "train",
                 skipped: dict[str, str] | None = None) -> list[SourceRef]:
    """Candidate files of the source, sorted by name; hidden files (.*) are skipped.

    ``split="train"`` excludes ``data.held_out``; ``split="holdout"`` returns only those files. Entries of a
    folder source that cannot be inputs (links, FIFOs, unreadable …) are added to ``skipped`` with a reason.
    """
    if cfg.source == "bundled":
        refs = [SourceRef(n, "file", str(p), p.stat().st_size) for n, p in bundled_files(list(cfg.bundled_sets))]
    elif cfg.source.startswith("s3://"):
        store = s3_source_store(cfg, store_cfg)
        refs = [SourceRef(k, "s3", k, size) for k, size in store.list_raw()
                if not any(part.startswith(".") for part in k.split("/"))]
    else:
        root = Path(cfg.source).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data.source: {cfg.source} is not a directory (nor 'bundled' nor s3://)")
        files, bad = scan_folder(root)
        refs = [SourceRef(name, "file", str(p.resolve()), p.stat().st_size) for name, p in files]
        if skipped is not None:
            skipped.update(bad)
    refs.sort(key=lambda r: r.name)
    held = held_out_names(cfg, [r.name for r in refs])
    if split == "holdout":
        return [r for r in refs if r.name in held]
    if split != "train":
        raise ValueError(f"unknown split {split!r} (train | holdout)")
    refs = [r for r in refs if r.name not in held]
    return refs[: cfg.max_images] if cfg.max_images else refs


def held_out_names(cfg: DataConfig, names: list[str]) -> set[str]:
    """``data.held_out`` (checked to exist) ∪ a seeded ``held_out_fraction`` of the names.

    The fraction is chosen by ranking sha256(seed, name): stable when files are added (a name is held out or
    not regardless of the others' content) and independent of the listing order.
    """
    unknown = set(cfg.held_out) - set(names)
    if unknown:
        raise ValueError(f"data.held_out names not found in the source: {sorted(unknown)}")
    held = set(cfg.held_out)
    if cfg.held_out_fraction > 0 and len(names) > 1:
        k = min(len(names) - 1, max(1, round(cfg.held_out_fraction * len(names))))
        ranked = sorted(names, key=lambda n: hashlib.sha256(f"{cfg.held_out_seed}:{n}".encode()).hexdigest())
        held |= set(ranked[:k])
    return held


def s3_source_store(cfg: DataConfig, store_cfg: StoreConfig):
    from srcompress.infra.store.s3 import S3Store

    scfg = store_cfg.model_copy(update={"uri": cfg.source, "endpoint_url": cfg.endpoint_url or store_cfg.endpoint_url})
    return S3Store(cfg.source, scfg)


def read_source(ref: SourceRef, cfg: DataConfig, store_cfg: StoreConfig) -> bytes:
    if ref.origin == "file":
        return Path(ref.location).read_bytes()
    return s3_source_store(cfg, store_cfg).get_raw(ref.location, max_bytes=int(cfg.max_file_mb * 2**20))
