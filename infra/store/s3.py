"""S3 backend of the artifact store (boto3), for AWS or any S3-compatible endpoint.

- Atomicity comes from S3 itself: a PUT, or a multipart upload, becomes visible only when complete.
- The sha256 is stored as object metadata (``x-amz-meta-sha256``) and verified on every read.
- Credentials come from the standard AWS chain (env, profile, instance role); they are never logged, and
  error messages name the endpoint and bucket only.
- Bounded, logged retries: connection errors, timeouts, 5xx and throttling are retried ``max_attempts`` times
  with exponential backoff, each wait logged with the endpoint (redacted) and the time budget left; after that
  ``StoreUnavailableError``. Worst case ≈ max_attempts × (connect + 2 × read timeout) + backoff.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from srcompress.infra.config import redact_text
from srcompress.infra.store.base import (
    CHUNK,
    ArtifactStore,
    InvalidKeyError,
    ObjectInfo,
    ObjectNotFoundError,
    StoreConfig,
    StoreError,
    StoreUnavailableError,
    log,
    normalize_key,
    sha256_bytes,
    sha256_file,
)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed", "503"}


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 5xx, throttling); its message is the error's name."""
_AUTH = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken", "InvalidToken"}


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise InvalidKeyError(f"not an s3:// URI: {uri}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise InvalidKeyError(f"s3 URI has no bucket: {uri}")
    prefix = prefix.strip("/")
    if prefix:
        prefix = normalize_key(prefix)
    return bucket, prefix


def make_s3_client(cfg: StoreConfig) -> Any:
    endpoint = cfg.endpoint_url or os.environ.get("SRCOMPRESS_S3_ENDPOINT_URL") or None
    session = boto3.session.Session(profile_name=cfg.profile) if cfg.profile else boto3.session.Session()
    region = cfg.region or session.region_name or "us-east-1"
    bconf = Config(
        # One attempt per botocore call: S3Store._call retries itself, so every wait is logged and bounded.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
        # path-style works with every S3-compatible server (moto, MinIO); AWS accepts it too.
        s3={"addressing_style": "path"} if endpoint else {},
        user_agent_extra="srcompress",
    )
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=bconf)


class S3Store(ArtifactStore):
    def __init__(self, uri: str, cfg: StoreConfig | None = None, client: Any = None):
        self.cfg = cfg or StoreConfig(uri=uri)
        self.bucket, self.prefix = split_s3_uri(uri)
        self.root_uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        # For messages only, with any credentials in the URL removed (the client gets the real one).
        self.endpoint = redact_text(self.cfg.endpoint_url or os.environ.get("SRCOMPRESS_S3_ENDPOINT_URL")
                                    or "AWS default")
        self.client = client or make_s3_client(self.cfg)
        mb = 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=self.cfg.multipart_threshold_mb * mb,
            multipart_chunksize=self.cfg.multipart_chunk_mb * mb,
            use_threads=False,
        )

    # -- helpers ---------------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        key = normalize_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one boto3 call with bounded, logged retries on transient failures; translate failures into store
        errors that name the endpoint (redacted) and never a credential."""
        cfg = self.cfg
        # an upload may wait twice for a silent server (100-continue, then the response)
        per_attempt = cfg.connect_timeout_s + 2 * cfg.read_timeout_s
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                return self._call_once(what, fn, *args, **kwargs)
            except _Transient as exc:
                if attempt == cfg.max_attempts:
                    raise StoreUnavailableError(
                        f"S3 endpoint {self.endpoint} unreachable during {what} after {cfg.max_attempts} attempts "
                        f"({exc}); check store.endpoint_url / network") from None
                delay = cfg.retry_backoff_s * 2 ** (attempt - 1)
                left = (cfg.max_attempts - attempt) * per_attempt + delay
                log.warning("S3 %s at %s: %s; retry %d/%d in %.1f s (at most %.0f s left before giving up)",
                            what, self.endpoint, exc, attempt + 1, cfg.max_attempts, delay, left)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _call_once(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise _Transient(type(exc).__name__) from None
        except NoCredentialsError:
            raise StoreUnavailableError(
                f"no AWS credentials found for {self.root_uri} (standard chain: env, ~/.aws, instance role)"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND and what == "head bucket":
                raise StoreUnavailableError(f"bucket {self.bucket!r} does not exist at {self.endpoint}") from None
            if code in _NOT_FOUND:
                raise ObjectNotFoundError(f"no object for {what} in {self.root_uri}") from None
            if code == "NoSuchBucket":
                raise StoreUnavailableError(f"bucket {self.bucket!r} does not exist at {self.endpoint}") from None
            if code in _AUTH:
                raise StoreUnavailableError(f"credentials rejected by {self.endpoint} for {what} ({code})") from None
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status >= 500 or code in _THROTTLED:
                raise _Transient(f"{code or status}") from None
            raise StoreError(f"S3 {what} failed at {self.endpoint}: {code}") from None
        except BotoCoreError as exc:
            raise StoreUnavailableError(f"S3 {what} failed at {self.endpoint}: {type(exc).__name__}") from None
        except S3UploadFailedError as exc:  # s3transfer wraps the client error; its text may carry the URL
            raise _Transient(f"upload failed: {redact_text(str(exc))[:200]}") from None

    def check(self) -> None:
        self._call("head bucket", self.client.head_bucket, Bucket=self.bucket)

    # -- writes ----------------------------------------------------------------------------------------
    def _upload(self, key: str, open_body, digest: str, size: int) -> ObjectInfo:
        """``open_body()`` gives a fresh readable stream per attempt (s3transfer closes it when a part fails)."""
        s3key = self._key(key)
        extra: dict[str, Any] = {"Metadata": {"sha256": digest}}
        if size < self.transfer.multipart_threshold:  # single PUT: S3 keeps a whole-object SHA-256 we can HEAD
            extra["ChecksumAlgorithm"] = "SHA256"

        def upload() -> None:
            with open_body() as body:
                self.client.upload_fileobj(body, self.bucket, s3key, ExtraArgs=extra, Config=self.transfer)

        self._call(f"put {key}", upload)
        return ObjectInfo(normalize_key(key), f"s3://{self.bucket}/{s3key}", digest, size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self._upload(key, lambda: io.BytesIO(data), sha256_bytes(data), len(data))

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        path = Path(path)
        return self._upload(key, lambda: open(path, "rb"), sha256_file(path), path.stat().st_size)

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    # -- reads -----------------------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ObjectNotFoundError:
            return None
        digest = head.get("Metadata", {}).get("sha256")
        if not digest:
            return None  # not written by us: no digest to verify against
        return ObjectInfo(normalize_key(key), self.uri(key), digest, int(head["ContentLength"]))

    def verify(self, key: str) -> ObjectInfo | None:
        """Compare the server's SHA-256 of the content (one HEAD) with our recorded digest; objects uploaded in
        parts carry only a composite checksum, so those are re-hashed by a download (cost: the object's size)."""
        try:
            head = self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=self._key(key),
                              ChecksumMode="ENABLED")
        except ObjectNotFoundError:
            return None
        digest = head.get("Metadata", {}).get("sha256")
        if not digest:
            return None
        info = ObjectInfo(normalize_key(key), self.uri(key), digest, int(head["ContentLength"]))
        server = head.get("ChecksumSHA256")
        if server and "-" not in server:
            actual = base64.b64decode(server).hex()
            if actual != digest:
                log.warning("corrupt object %s: stored SHA-256 %s… does not match the recorded %s…; treating it "
                            "as missing", info.uri, actual[:12], digest[:12])
                return None
            return info
        return super().verify(key)

    def get_bytes(self, key: str, expected_sha256: str | None = None) -> bytes:
        resp = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        data = resp["Body"].read()
        recorded = resp.get("Metadata", {}).get("sha256")
        if recorded is None:
            raise ObjectNotFoundError(f"{key!r} in {self.root_uri} has no recorded sha256 (not written by srcompress)")
        self._verify(key, sha256_bytes(data), recorded, expected_sha256)
        return data

    def get_file(self, key: str, dest: str | Path, expected_sha256: str | None = None) -> Path:
        info = self._require(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.srtmp-", dir=dest.parent)
        os.close(fd)
        try:
            self._call(f"get {key}", self.client.download_file, self.bucket, self._key(key), tmp, Config=self.transfer)
            self._verify(key, sha256_file(tmp), info.sha256, expected_sha256)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._key(prefix) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(f"list {prefix or '/'}", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            for obj in sorted(page.get("Contents", []), key=lambda o: o["Key"]):
                info = self.stat(obj["Key"][strip:])
                if info is not None:
                    yield info

    def list_raw(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under the prefix, including objects not written by srcompress
        (used to read user datasets from an s3:// prefix)."""
        full = self._key(prefix) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(f"list {prefix or '/'}", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:], int(obj["Size"])

    def get_raw(self, key: str, max_bytes: int | None = None) -> bytes:
        """Bytes of any object (no recorded digest needed): for reading user datasets."""
        resp = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        body = resp["Body"]
        if max_bytes is not None and int(resp.get("ContentLength", 0)) > max_bytes:
            body.close()
            raise StoreError(f"{key}: {resp['ContentLength']} bytes exceeds the {max_bytes}-byte limit")
        return b"".join(iter(lambda: body.read(CHUNK), b""))
