"""Artifact store: the same contract on local disk and against a real S3 HTTP server on loopback."""

from __future__ import annotations

import os
import time

import boto3
import pytest

from srcompress.infra.store import (
    IntegrityError,
    InvalidKeyError,
    LocalStore,
    ObjectNotFoundError,
    StoreConfig,
    StoreUnavailableError,
    open_store,
    sha256_bytes,
)
from srcompress.infra.store.s3 import S3Store
from tests.conftest import SECRET, free_port


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Store(f"s3://{bucket}/some/prefix", StoreConfig(uri=f"s3://{bucket}/some/prefix", endpoint_url=endpoint))


def test_roundtrip_records_and_verifies_digest(store, tmp_path):
    info = store.put_bytes("a/b/c.bin", b"hello")
    assert info.sha256 == sha256_bytes(b"hello") and info.size == 5
    assert store.get_bytes("a/b/c.bin") == b"hello"
    assert store.get_bytes("a/b/c.bin", expected_sha256=info.sha256) == b"hello"
    with pytest.raises(IntegrityError):
        store.get_bytes("a/b/c.bin", expected_sha256="0" * 64)
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(1000))
    finfo = store.put_file("files/f.bin", src)
    out = store.get_file("files/f.bin", tmp_path / "out" / "g.bin")
    assert out.read_bytes() == src.read_bytes() and finfo.sha256 == sha256_bytes(src.read_bytes())
    assert store.stat("a/b/c.bin").sha256 == info.sha256
    assert store.stat("missing") is None
    assert [o.key for o in store.list("a")] == ["a/b/c.bin"]
    assert {o.key for o in store.list()} == {"a/b/c.bin", "files/f.bin"}
    assert store.key_from_uri(store.uri("a/b/c.bin")) == "a/b/c.bin"
    store.delete("a/b/c.bin")
    assert not store.exists("a/b/c.bin")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("a/b/c.bin")


@pytest.mark.parametrize("key", ["../escape", "a/../../x", "/abs/path", "", "a/./b", "s3://other/x", "a\\b",
                                 ".srmeta/x", "bad\x00key"])
def test_keys_are_confined(store, key):
    with pytest.raises(InvalidKeyError):
        store.put_bytes(key, b"x")


def test_local_tampering_is_detected(tmp_path):
    store = LocalStore(tmp_path / "s")
    store.put_bytes("x.bin", b"original")
    (tmp_path / "s" / "x.bin").write_bytes(b"tampered")  # same size, different bytes
    with pytest.raises(IntegrityError):
        store.get_bytes("x.bin")


def test_local_symlink_cannot_escape(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    store = LocalStore(tmp_path / "s")
    (tmp_path / "s" / "link").symlink_to(outside)
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("link")


def test_local_publish_is_atomic_no_partial_files(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "s")
    import srcompress.infra.store.local as local

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(local.os, "replace", boom)
    with pytest.raises(OSError):
        store.put_bytes("k.bin", b"data")
    monkeypatch.undo()
    assert store.stat("k.bin") is None
    assert not any(".srtmp-" in p.name for p in (tmp_path / "s").rglob("*"))


def test_s3_tampering_and_foreign_objects(s3_bucket):
    endpoint, bucket = s3_bucket
    store = S3Store(f"s3://{bucket}/p", StoreConfig(endpoint_url=endpoint))
    store.put_bytes("x.bin", b"original")
    raw = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    # Overwrite behind our back, keeping the old digest in the metadata.
    raw.put_object(Bucket=bucket, Key="p/x.bin", Body=b"tampered", Metadata={"sha256": sha256_bytes(b"original")})
    with pytest.raises(IntegrityError):
        store.get_bytes("x.bin")
    raw.put_object(Bucket=bucket, Key="p/foreign.bin", Body=b"no digest")
    assert store.stat("foreign.bin") is None
    assert store.get_raw("foreign.bin") == b"no digest"


def test_s3_large_objects_use_multipart(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = StoreConfig(endpoint_url=endpoint, multipart_threshold_mb=5, multipart_chunk_mb=5)
    store = S3Store(f"s3://{bucket}/big", cfg)
    data = os.urandom(11 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    info = store.put_file("big.bin", path)
    head = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").head_object(Bucket=bucket, Key="big/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 3 parts: 5 + 5 + 1 MiB
    assert store.get_file("big.bin", tmp_path / "back.bin", expected_sha256=info.sha256).read_bytes() == data


def test_s3_unreachable_endpoint_fails_fast_and_clearly():
    port = free_port()  # nothing listens here
    cfg = StoreConfig(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=0.5)
    store = S3Store("s3://nobucket/x", cfg)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        store.put_bytes("k", b"v")
    assert time.monotonic() - t0 < 30
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "2 attempts" in msg
    assert SECRET not in msg and os.environ["AWS_ACCESS_KEY_ID"] not in msg


def test_s3_missing_bucket_is_clear(moto_server):
    store = S3Store("s3://no-such-bucket-xyz/p", StoreConfig(endpoint_url=moto_server))
    with pytest.raises(StoreUnavailableError, match="no-such-bucket-xyz"):
        store.put_bytes("k", b"v")


def test_open_store_backends(tmp_path, s3_bucket):
    assert isinstance(open_store(StoreConfig(), tmp_path), LocalStore)
    assert open_store(StoreConfig(), tmp_path).root_uri == (tmp_path / "store").resolve().as_uri()
    assert isinstance(open_store(StoreConfig(uri=(tmp_path / "x").as_uri()), tmp_path), LocalStore)
    endpoint, bucket = s3_bucket
    assert isinstance(open_store(StoreConfig(uri=f"s3://{bucket}/p", endpoint_url=endpoint), tmp_path), S3Store)
    from srcompress.infra.store import StoreError

    with pytest.raises(StoreError, match="unsupported scheme"):
        open_store(StoreConfig(uri="gs://bucket/x"), tmp_path)


def test_check_fails_fast_for_unreachable_or_missing_stores(tmp_path, moto_server):
    LocalStore(tmp_path / "ok").check()
    dead = S3Store("s3://b/p", StoreConfig(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1,
                                            connect_timeout_s=0.5))
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        dead.check()
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        S3Store("s3://missing-bucket-q/p", StoreConfig(endpoint_url=moto_server)).check()


def _corrupt_same_size(store, key: str) -> None:
    """Flip bytes of an object in place, keeping its size and its recorded digest."""
    if isinstance(store, LocalStore):
        path = store.root / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        raw = store.client
        obj = raw.get_object(Bucket=store.bucket, Key=store._key(key))
        data = bytearray(obj["Body"].read())
        data[len(data) // 2] ^= 0xFF
        # a re-put that keeps our old metadata: only the content checksum can tell
        raw.put_object(Bucket=store.bucket, Key=store._key(key), Body=bytes(data), Metadata=obj["Metadata"],
                       ChecksumAlgorithm="SHA256")


def test_verify_catches_same_size_corruption(store, caplog):
    info = store.put_bytes("shards/a.bin", b"0123456789" * 100)
    assert store.verify("shards/a.bin") == info
    _corrupt_same_size(store, "shards/a.bin")
    assert store.stat("shards/a.bin") is not None  # size and record unchanged: a stat cannot tell
    with caplog.at_level("WARNING", logger="srcompress.store"):
        assert store.verify("shards/a.bin") is None
    assert "corrupt object" in caplog.text and "shards/a.bin" in caplog.text
    assert store.verify("shards/missing.bin") is None


def test_s3_multipart_objects_are_verified_by_rehash(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    store = S3Store(f"s3://{bucket}/big", StoreConfig(endpoint_url=endpoint, multipart_threshold_mb=5,
                                                      multipart_chunk_mb=5))
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(6 * 1024 * 1024))
    info = store.put_file("big.bin", path)
    assert store.verify("big.bin") == info


def test_torn_digest_record_is_a_miss_not_a_crash(tmp_path, caplog):
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k.json", b"{}")
    (store.root / ".srmeta" / "k.json.json").write_text('{"sha256": "ab')  # torn write
    with caplog.at_level("WARNING", logger="srcompress.store"):
        assert store.stat("k.json") is None and store.verify("k.json") is None
    assert "unreadable digest record" in caplog.text and "k.json" in caplog.text
    store.put_bytes("k.json", b"{}")  # the producer rewrites it
    assert store.verify("k.json") is not None


def test_corrupt_cache_record_is_a_miss_with_a_warning(tmp_path, caplog):
    from srcompress.infra.context import StepCache
    from srcompress.infra.manifest import Manifest

    store = LocalStore(tmp_path / "s")
    cache = StepCache(store)
    m = Manifest(kind="pairs", step="degrade", uri=store.uri("x"), digest="d", config_hash="c", code_version="v",
                 cache_key="k1")
    cache.put(m)
    assert cache.get("degrade", "k1") == m
    store.put_bytes(StepCache.key_of("degrade", "k1"), b'{"kind": "pairs", "st')  # torn JSON, valid digest
    with caplog.at_level("WARNING", logger="srcompress.cache"):
        assert cache.get("degrade", "k1") is None
    assert "corrupt cache record" in caplog.text and "cache/degrade/k1.json" in caplog.text
    _corrupt_same_size(store, StepCache.key_of("degrade", "k1"))  # digest mismatch
    assert cache.get("degrade", "k1") is None
