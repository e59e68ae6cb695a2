"""Read any evaluation dataset into LR/HR pairs (HR optional): HR folders, paired folders, LR-only folders,
degraded pairs manifests, and ``s3://`` prefixes of any of these.

    items, skipped = load_items(root_or_manifest, kind, cfg, degrade_cfg, pairs_reader)

- **hr**: a folder of HR photos. Each is centre-cropped (``center_crop``), cropped to a multiple of the scale,
  and its LR made by antialiased bicubic downsampling (torch/PIL-style, a = −0.5; MATLAB ``imresize`` up to
  border handling) or by the configured Real-ESRGAN degradation seeded by (seed, sha256 of the file).
- **paired**: ``hr/`` + ``lr/`` matched by file stem; HR must be scale × LR (HR cropped by < scale px is allowed).
- **lr**: LR images only (a folder, or its ``lr/`` subfolder): no-reference metrics only.
- **pairs**: a ``degrade`` manifest (JSON) whose shards are in the configured store.

Bad files (corrupt, not an image, too large, wrong sizes) are skipped with a reason; they never stop the run.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from srcompress.models.degradations import ops
from srcompress.tasks.common.ingest import BadImage, decode_image
from srcompress.tasks.common.sources import scan_folder
from srcompress.tasks.evaluate.config import EvalDataConfig

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class EvalItem:
    name: str
    lr: np.ndarray  # (h, w, 3) uint8 — or already at HR size (SeeSR-style pairs; models then skip upsampling)
    hr: np.ndarray | None  # (h·s, w·s, 3) uint8, None for LR-only sets
    source_sha256: str
    note: str = ""


def detect_kind(path: Path) -> str:
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "pairs"
        raise ValueError(f"{path}: a dataset is a folder or a pairs-manifest .json file")
    if not path.is_dir():
        raise FileNotFoundError(f"evaluation data {path} does not exist")
    if (path / "hr").is_dir() and (path / "lr").is_dir():
        return "paired"
    if (path / "lr").is_dir():
        return "lr"
    return "hr"


def image_files(root: Path, skipped: dict[str, str] | None = None) -> list[tuple[str, Path]]:
    """(name relative to root, path) of image files, sorted; hidden files and folders skipped; entries named
    like images that cannot be read as files (links, FIFOs, folders, unreadable) go to ``skipped``."""
    files, bad = scan_folder(root, IMAGE_EXTS)
    if skipped is not None:
        skipped.update(bad)
    return files


def _decode(path: Path, cfg: EvalDataConfig) -> tuple[np.ndarray, str]:
    size = path.stat().st_size
    if size > cfg.max_file_mb * 2**20:
        raise BadImage(f"{size / 2**20:.1f} MB exceeds evaluate.data.max_file_mb={cfg.max_file_mb}")
    data = path.read_bytes()
    return decode_image(data, cfg.max_pixels).rgb, hashlib.sha256(data).hexdigest()


def _decode_new(path: Path, cfg: EvalDataConfig, name: str, seen: dict[str, str]) -> tuple[np.ndarray, str]:
    """``_decode``, refusing content already seen under another name (a photo present twice is scored once)."""
    rgb, sha = _decode(path, cfg)
    if sha in seen:
        raise BadImage(f"duplicate of {seen[sha]} (same content)")
    seen[sha] = name
    return rgb, sha


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] → (H, W, 3) uint8, rounded as the degrade shards are."""
    return ops.to_uint8(x[0]).permute(1, 2, 0).numpy()


def bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    x = to_tensor(hr)
    h, w = x.shape[-2:]
    return to_uint8(F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True,
                                  align_corners=False))


def center_crop(rgb: np.ndarray, size: int | None, scale: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    th, tw = (min(size, h), min(size, w)) if size else (h, w)
    th, tw = th - th % scale, tw - tw % scale
    top, left = (h - th) // 2, (w - tw) // 2
    return rgb[top : top + th, left : left + tw]


def _seed(base: int, sha: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{sha}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def native_lr_config(degrade_cfg):
    """The degradation with ``final.resize_back`` off: evaluation feeds every model the native-size LR."""
    return degrade_cfg.model_copy(update={"final": degrade_cfg.final.model_copy(update={"resize_back": "none"})})


def load_hr(root: Path, cfg: EvalDataConfig, degrade_cfg=None) -> tuple[list[EvalItem], dict[str, str]]:
    items, skipped = [], {}
    if cfg.lq == "degrade":
        if degrade_cfg is None or degrade_cfg.scale != cfg.scale:
            raise ValueError(f"evaluate.data.lq=degrade needs degrade.scale == evaluate.data.scale ({cfg.scale})")
        degrade_cfg = native_lr_config(degrade_cfg)
    seen: dict[str, str] = {}  # content digest → first name
    for name, path in image_files(root, skipped)[: cfg.max_images]:
        try:
            rgb, sha = _decode_new(path, cfg, name, seen)
            hr = center_crop(rgb, cfg.center_crop, cfg.scale)
            if min(hr.shape[:2]) < cfg.scale * 8:
                raise BadImage(f"{rgb.shape[1]}x{rgb.shape[0]} is too small for ×{cfg.scale} evaluation")
        except (BadImage, OSError) as exc:
            skipped[name] = str(exc)
            continue
        if cfg.lq == "degrade":
            from srcompress.models.degradations.pipeline import degrade_batch

            lq, _, _ = degrade_batch(to_tensor(hr), [_seed(cfg.seed, sha)], degrade_cfg)
            lr, note = to_uint8(lq), f"degrade seed={_seed(cfg.seed, sha)}"
        else:
            lr, note = bicubic_down(hr, cfg.scale), f"bicubic-antialias x{cfg.scale}"
        items.extend(split_tiles(EvalItem(name, lr, hr, sha, note), cfg.tiles, cfg.scale))
    return items, skipped


def split_tiles(item: EvalItem, tile: int | None, scale: int) -> list[EvalItem]:
    """Non-overlapping ``tile``-sized HR tiles (and their LR tiles) of an item, row-major; the item if None.
    The image is degraded whole first, so every tile carries the image's own degradation."""
    if not tile:
        return [item]
    if tile % scale:
        raise ValueError(f"evaluate.data.tiles={tile} must be a multiple of the scale {scale}")
    h, w = item.hr.shape[:2]
    t = tile // scale
    out = []
    for i in range(h // tile):
        for j in range(w // tile):
            out.append(EvalItem(f"{item.name}#{len(out)}", item.lr[i * t : (i + 1) * t, j * t : (j + 1) * t],
                                item.hr[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile], item.source_sha256,
                                f"{item.note}; tile {i},{j} of {tile}px"))
    return out or [item]


def load_paired(root: Path, cfg: EvalDataConfig) -> tuple[list[EvalItem], dict[str, str]]:
    items, skipped, seen = [], {}, {}
    bad_hr, bad_lr = {}, {}
    hrs = {Path(n).with_suffix("").as_posix(): p for n, p in image_files(root / "hr", bad_hr)}
    lrs = {Path(n).with_suffix("").as_posix(): p for n, p in image_files(root / "lr", bad_lr)}
    skipped.update({f"hr/{k}": v for k, v in bad_hr.items()} | {f"lr/{k}": v for k, v in bad_lr.items()})
    for stem in sorted(set(hrs) | set(lrs)):
        if stem not in hrs or stem not in lrs:
            skipped[stem] = f"no matching {'lr' if stem in hrs else 'hr'}/ file"
            continue
        if cfg.max_images and len(items) >= cfg.max_images:
            break
        try:
            hr, sha_h = _decode(hrs[stem], cfg)
            lr, sha_l = _decode(lrs[stem], cfg)
            (h, w), s = lr.shape[:2], cfg.scale
            if not (h * s <= hr.shape[0] < (h + 1) * s and w * s <= hr.shape[1] < (w + 1) * s):
                raise BadImage(f"HR {hr.shape[1]}x{hr.shape[0]} is not {s}x LR {w}x{h}")
            if (sha_h, sha_l) in seen:
                raise BadImage(f"duplicate of {seen[sha_h, sha_l]} (same HR and LR content)")
            seen[sha_h, sha_l] = stem
        except (BadImage, OSError) as exc:
            skipped[stem] = str(exc)
            continue
        note = "" if hr.shape[:2] == (h * s, w * s) else f"HR cropped to {w * s}x{h * s}"
        items.append(EvalItem(stem, lr, hr[: h * s, : w * s], hashlib.sha256((sha_h + sha_l).encode()).hexdigest(), note))
    return items, skipped


def load_lr(root: Path, cfg: EvalDataConfig) -> tuple[list[EvalItem], dict[str, str]]:
    base = root / "lr" if (root / "lr").is_dir() else root
    items, skipped, seen = [], {}, {}
    for name, path in image_files(base, skipped)[: cfg.max_images]:
        try:
            lr, sha = _decode_new(path, cfg, name, seen)
        except (BadImage, OSError) as exc:
            skipped[name] = str(exc)
            continue
        items.append(EvalItem(Path(name).with_suffix("").as_posix(), lr, None, sha, "LR only"))
    return items, skipped


def load_pairs(shards: Iterator[tuple[torch.Tensor, torch.Tensor, list[dict]]], cfg: EvalDataConfig
               ) -> tuple[list[EvalItem], dict[str, str]]:
    """Items of a degrade manifest; ``shards`` yields (lq uint8 NCHW, hq uint8 NCHW, per-pair metadata)."""
    items: list[EvalItem] = []
    for lq, hq, meta in shards:
        at_hr = lq.shape[-2:] == hq.shape[-2:]  # SeeSR-style sets store the LQ resized back to HR size
        if not at_hr and hq.shape[-1] != lq.shape[-1] * cfg.scale:
            raise ValueError(f"pairs manifest: HQ {hq.shape[-1]} px is neither {cfg.scale}x LQ {lq.shape[-1]} px "
                             f"nor its size (evaluate.data.scale must match degrade.scale)")
        for i in range(lq.shape[0]):
            m = meta[i] if i < len(meta) else {}
            name = f"{m.get('name', 'pair')}#{m.get('crop_index', i)}"
            items.append(EvalItem(name, lq[i].permute(1, 2, 0).numpy().copy(), hq[i].permute(1, 2, 0).numpy().copy(),
                                  str(m.get("digest", "")), f"degrade manifest seed={m.get('seed', '')}"
                                  + (" (LQ at HR size)" if at_hr else "")))
            if cfg.max_images and len(items) >= cfg.max_images:
                return items, {}
    return items, {}


def load_items(path: Path, kind: str, cfg: EvalDataConfig, degrade_cfg=None,
               pairs_reader: Callable[[Path], Iterator] | None = None) -> tuple[list[EvalItem], dict[str, str]]:
    if kind == "hr":
        return load_hr(path, cfg, degrade_cfg)
    if kind == "paired":
        return load_paired(path, cfg)
    if kind == "lr":
        return load_lr(path, cfg)
    if kind == "pairs":
        if pairs_reader is None:
            raise ValueError("pairs manifests need a store to read shards from")
        return load_pairs(pairs_reader(path), cfg)
    raise ValueError(f"unknown dataset kind {kind!r}")


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def png_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8).copy()
