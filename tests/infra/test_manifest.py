"""Manifests and cache keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from srcompress.infra.manifest import Manifest, cache_key, code_version, digest_of_digests


def _m(**kw):
    base = dict(kind="pairs", step="degrade", uri="file:///x", digest="d" * 64, config_hash="c" * 64,
                inputs={"sources": "s" * 64}, code_version="0.1.0+abc", cache_key="k" * 64, counts={"pairs": 3})
    base.update(kw)
    return Manifest(**base)


def test_manifest_roundtrip_and_frozen():
    m = _m()
    assert Manifest.from_json(m.to_json()) == m
    with pytest.raises(ValidationError):
        m.kind = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        _m(unexpected=1)


def test_cache_key_depends_on_every_part():
    base = cache_key("degrade", "c", {"a": "1", "b": "2"}, "v1")
    assert base == cache_key("degrade", "c", {"b": "2", "a": "1"}, "v1")
    assert len({base, cache_key("other", "c", {"a": "1", "b": "2"}, "v1"), cache_key("degrade", "c2", {"a": "1", "b": "2"}, "v1"),
                cache_key("degrade", "c", {"a": "1", "b": "3"}, "v1"), cache_key("degrade", "c", {"a": "1", "b": "2"}, "v2")}) == 5


def test_digest_of_digests_is_order_sensitive():
    assert digest_of_digests(["a", "b"]) != digest_of_digests(["b", "a"])
    assert digest_of_digests(["ab"]) != digest_of_digests(["a", "b"])


def test_code_version_covers_a_package_and_is_stable():
    v1 = code_version("srcompress.tasks.degrade", "srcompress.models.degradations")
    assert v1 == code_version("srcompress.tasks.degrade", "srcompress.models.degradations")
    assert v1 != code_version("srcompress.tasks.degrade")
    assert v1.startswith("0.1.0+")
