"""Read the pairs a ``degrade`` manifest points at, shard by shard (never the whole set at once), and the
per-pair seed every step that draws randomness for a pair derives (degrade crops, encode posterior samples)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import ArtifactStore

if TYPE_CHECKING:  # torch loads where shards are read: a cached degrade step's check does not need it
    import torch


def pair_seed(seed: int, digest: str, crop_index: int, purpose: str) -> int:
    """64-bit seed of one pair: a function of (seed, source digest, crop index) only."""
    h = hashlib.sha256(f"{seed}:{digest}:{crop_index}:{purpose}".encode()).digest()
    return int.from_bytes(h[:8], "little")


@dataclass(frozen=True)
class ShardRef:
    index: int
    key: str
    sha256: str
    count: int


def index_shards(store: ArtifactStore, manifest: Manifest, kind: str) -> list[ShardRef]:
    """The shards listed by a sharded output's index object (pairs, latents), index verified on read."""
    if manifest.kind != kind:
        raise ValueError(f"expected a {kind} manifest, got {manifest.kind!r}")
    index = json.loads(store.get_bytes(store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256")))
    return [ShardRef(i, s["key"], s["sha256"], s["count"]) for i, s in enumerate(index["shards"])]


def shard_refs(store: ArtifactStore, manifest: Manifest) -> list[ShardRef]:
    return index_shards(store, manifest, "pairs")


def read_shard(store: ArtifactStore, ref: ShardRef) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """(lq uint8 (N,3,h,w), hq uint8 (N,3,H,W), per-pair metadata); the digest is verified on read."""
    from safetensors.torch import load

    raw = store.get_bytes(ref.key, expected_sha256=ref.sha256)
    tensors = load(raw)
    meta = json.loads(_header_metadata(raw)["srcompress"])
    return tensors["lq"], tensors["hq"], meta["pairs"]


def _header_metadata(raw: bytes) -> dict:
    # safetensors layout: u64 little-endian header length, then the JSON header (with __metadata__).
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]).get("__metadata__", {})


def iter_pairs(store: ArtifactStore, manifest: Manifest) -> Iterator[tuple[ShardRef, torch.Tensor, torch.Tensor, list[dict]]]:
    for ref in shard_refs(store, manifest):
        lq, hq, meta = read_shard(store, ref)
        yield ref, lq, hq, meta


def load_all_pairs(store: ArtifactStore, manifest: Manifest) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair as float [0, 1] tensors — only for small sets (the tiny bootstrap)."""
    lqs, hqs = [], []
    for _, lq, hq, _ in iter_pairs(store, manifest):
        lqs.append(lq)
        hqs.append(hq)
    import torch

    return torch.cat(lqs).float() / 255, torch.cat(hqs).float() / 255
