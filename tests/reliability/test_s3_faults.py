"""A dead and a hung S3 endpoint: bounded, logged retries, then a clear error naming the endpoint, no secret."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from srcompress.infra.store import StoreConfig, StoreUnavailableError
from srcompress.infra.store.s3 import S3Store
from tests.conftest import free_port

pytestmark = pytest.mark.reliability

FAST = dict(connect_timeout_s=1.0, read_timeout_s=1.0, max_attempts=3, retry_backoff_s=0.1)


def _store(endpoint: str) -> S3Store:
    return S3Store("s3://bucket-x/p", StoreConfig(endpoint_url=endpoint, **FAST))


@pytest.fixture()
def hung_endpoint():
    """A loopback socket that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


@pytest.mark.parametrize("kind", ["dead", "hung"])
def test_unreachable_endpoint_is_bounded_logged_and_clear(kind, hung_endpoint, caplog):
    host = f"127.0.0.1:{free_port()}" if kind == "dead" else hung_endpoint.removeprefix("http://")
    secret = "S3-PASSWORD-IN-URL"
    store = _store(f"http://svc:{secret}@{host}")
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="srcompress.store"), pytest.raises(StoreUnavailableError) as err:
        store.put_bytes("k.bin", b"payload")
    elapsed = time.monotonic() - t0
    budget = FAST["max_attempts"] * (FAST["connect_timeout_s"] + 2 * FAST["read_timeout_s"]) + 1.0
    assert elapsed < budget, elapsed  # bounded by the configured timeouts, not botocore's defaults
    msg = str(err.value)
    assert f"http://***@{host}" in msg and "after 3 attempts" in msg and secret not in msg
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "retry 2/3" in retries[0] and "left before giving up" in retries[0]
    assert all(f"http://***@{host}" in line and secret not in line for line in retries)
