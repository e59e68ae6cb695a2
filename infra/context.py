"""The pipeline run context handed to every task: small, serialisable, no live clients inside.

Tasks rebuild the store / tracker / step cache from it (memoised per process), so Prefect can run them in
threads, processes or on other machines without pickling boto3 or MLflow clients.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import (
    ArtifactStore,
    IntegrityError,
    InvalidKeyError,
    ObjectNotFoundError,
    StoreConfig,
    open_store,
)
from srcompress.infra.tracking import Tracker, TrackingConfig

log = logging.getLogger("srcompress.cache")


class RunContext(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workdir: str
    store: StoreConfig
    tracking: TrackingConfig
    parent_run_id: str | None = None
    torch_threads: int = 0
    device: str = "auto"  # run.device; steps resolve it (with their own override) via models.device
    ray_address: str | None = None  # run.ray_address: the cluster every heavy step uses (placement, not content)
    dry_run: bool = False  # steps look their results up and stop where one would compute (infra/dryrun.py)

    def get_store(self) -> ArtifactStore:
        return _store(self.workdir, self.store.model_dump_json())

    def get_tracker(self) -> Tracker:
        if self.dry_run:
            from srcompress.infra.dryrun import DryTracker

            return DryTracker()  # type: ignore[return-value]
        return _tracker(self.workdir, self.store.model_dump_json(), self.tracking.model_dump_json())

    def get_cache(self) -> "StepCache":
        return StepCache(self.get_store())

    def scratch(self, *parts: str) -> Path:
        """A local scratch folder under the work dir (temp files before publishing to the store)."""
        path = Path(self.workdir, "scratch", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@lru_cache(maxsize=8)
def _store(workdir: str, store_json: str) -> ArtifactStore:
    return open_store(StoreConfig.model_validate_json(store_json), workdir)


@lru_cache(maxsize=8)
def _tracker(workdir: str, store_json: str, tracking_json: str) -> Tracker:
    store = _store(workdir, store_json)
    scfg = StoreConfig.model_validate_json(store_json)
    import os

    endpoint = scfg.endpoint_url or os.environ.get("SRCOMPRESS_S3_ENDPOINT_URL")
    return Tracker(TrackingConfig.model_validate_json(tracking_json), workdir, store.root_uri, endpoint)


class StepCache:
    """Step results keyed by ``Manifest.cache_key``, persisted in the artifact store (``cache/<step>/<key>.json``).

    Living in the store (not in Prefect's local result storage) is what lets a rerun on another machine or
    after a crash reuse finished work, for the local and the S3 backend alike.
    """

    def __init__(self, store: ArtifactStore):
        self.store = store

    @staticmethod
    def key_of(step: str, cache_key: str) -> str:
        return f"cache/{step}/{cache_key}.json"

    def get(self, step: str, cache_key: str) -> Manifest | None:
        """The cached manifest, or None — also when it points outside this store (a copied/relocated store),
        and when the record is corrupt or torn (logged, naming the object: a miss recomputes it)."""
        key = self.key_of(step, cache_key)
        try:
            manifest = Manifest.from_json(self.store.get_bytes(key))
        except ObjectNotFoundError:
            return None
        except (IntegrityError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            log.warning("corrupt cache record %s (%s); recomputing the step", self.store.uri(key),
                        str(exc).splitlines()[0][:200])
            return None
        root = self.store.root_uri.rstrip("/") + "/"
        if not manifest.uri.startswith(root):
            return None
        return manifest

    def shards_present(self, manifest: Manifest) -> bool:
        """True if every shard listed in the manifest's index object is in the store with its recorded digest."""
        try:
            raw = self.store.get_bytes(self.store.key_from_uri(manifest.uri), manifest.extra.get("index_sha256"))
        except (ObjectNotFoundError, IntegrityError, InvalidKeyError):
            return False
        try:
            shards = json.loads(raw)["shards"]
        except (ValueError, KeyError, TypeError):
            log.warning("corrupt shard index %s; recomputing the step", manifest.uri)
            return False
        for shard in shards:  # verified, not just present: a same-size corrupted shard is a miss
            info = self.store.verify(shard["key"])
            if info is None or info.sha256 != shard["sha256"]:
                return False
        return True

    def listed_intact(self, listing: dict[str, dict]) -> bool:
        """Every object of a ``{name: {"uri", "sha256"}}`` listing is in the store with matching content."""
        for entry in listing.values():
            try:
                info = self.store.verify(self.store.key_from_uri(entry["uri"]))
            except InvalidKeyError:
                return False
            if info is None or info.sha256 != entry["sha256"]:
                return False
        return True

    def put(self, manifest: Manifest) -> None:
        self.store.put_bytes(self.key_of(manifest.step, manifest.cache_key), manifest.to_json().encode())

    def get_json(self, key: str) -> dict | None:
        try:
            return json.loads(self.store.get_bytes(key))
        except ObjectNotFoundError:
            return None
        except (IntegrityError, ValueError) as exc:
            log.warning("corrupt record %s (%s); ignoring it", self.store.uri(key), type(exc).__name__)
            return None
