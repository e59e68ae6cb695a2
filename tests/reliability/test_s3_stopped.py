"""The S3 endpoint stops in the middle of a run: bounded retries, then a clear error naming the endpoint (no
credentials); the endpoint comes back and the rerun redoes only what is missing, ending with the digests of
an uninterrupted run.

"Stopping the endpoint" is a loopback TCP relay in front of the moto S3 server that closes its listening
socket and every open connection (clients get connection refused, exactly as with a stopped server); the
moto server behind it keeps the objects, as a real S3 service keeps them across an outage of its endpoint.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from mlflow import MlflowClient

from srcompress.config import load_config
from srcompress.flows.compress import run_pipeline
from tests.conftest import SECRET, free_port
from tests.reliability.conftest import follow, start_cli

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SMALL = ["data.bundled_sets=[skimage, sklearn, kodak]", "data.held_out=[]", "degrade.crop_size=64",
         "degrade.crops_per_image=1", "degrade.shard_size=2", "degrade.batch_size=2", "run.max_workers=1",
         "store.connect_timeout_s=1", "store.read_timeout_s=2", "store.max_attempts=2", "store.retry_backoff_s=0.1"]
USERINFO = "STOPPED-ENDPOINT-SECRET-3e1d"


class Relay:
    """host:port → target, switchable off (listener and live connections closed) and back on (same port)."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.port = target, free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.srv: socket.socket | None = None

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self.srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def stop(self) -> None:
        srv, self.srv = self.srv, None
        if srv is not None:
            srv.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _overrides(bucket: str, prefix: str, endpoint: str) -> list[str]:
    return [*SMALL, f"store.uri=s3://{bucket}/{prefix}", f"store.endpoint_url={endpoint}"]


def _args(work, bucket: str, prefix: str, endpoint: str, summary) -> list[str]:
    return ["run", "--config", "tiny", "--workdir", str(work), "--until", "degrade", "--summary", str(summary),
            *(f"--set={o}" for o in _overrides(bucket, prefix, endpoint))]


def _degrade_metrics(summary: dict) -> dict:
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]], f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    return next(r for r in runs if r.info.run_name == "degrade").data.metrics


@pytest.mark.timeout(900)
def test_s3_endpoint_stopped_mid_run_fails_clearly_and_the_rerun_redoes_only_the_rest(tmp_path, s3_bucket,
                                                                                       prefect_harness):
    moto_url, bucket = s3_bucket
    host, port = moto_url.removeprefix("http://").split(":")
    relay = Relay((host, int(port)))
    relay.start()
    endpoint = f"http://srcuser:{USERINFO}@127.0.0.1:{relay.port}"
    try:
        # The uninterrupted reference and the rerun run the flow in this process: only the run that meets the
        # outage goes through the CLI, whose output (the error a user sees) is what is checked there.
        work, summary = tmp_path / "w", tmp_path / "run.json"
        reference = run_pipeline(load_config("tiny", _overrides(bucket, "ref", endpoint)), tmp_path / "ref",
                                 until="degrade")
        assert reference["outcomes"] == {"degrade": "ran"}, reference["outcomes"]
        shards = reference["steps"]["degrade"]["counts"]["shards"]
        assert shards >= 8

        stopped_at: list[float] = []

        def stop_mid_step(line: str, out: list[str]) -> None:
            if not stopped_at and re.search(r"degrade: shard \d+/\d+ done", line) and \
                    sum("done:" in x for x in out) >= 3:
                relay.stop()  # the endpoint goes away in the middle of the step
                stopped_at.append(time.monotonic())

        proc, lines = start_cli(*_args(work, bucket, "run", endpoint, summary))
        text = follow(proc, lines, on_line=stop_mid_step)
        assert stopped_at, text[-3000:]
        assert proc.returncode != 0, text[-3000:]
        # bounded: the store's retries and the shard task's retries (2 s + 10 s), not botocore's defaults
        assert time.monotonic() - stopped_at[0] < 120
        tail = text[-4000:]
        assert f"127.0.0.1:{relay.port}" in tail and "after 2 attempts" in tail, tail
        assert USERINFO not in text and SECRET not in text and "http://***@" in tail

        relay.start()  # the endpoint is back
        final = run_pipeline(load_config("tiny", _overrides(bucket, "run", endpoint)), work, until="degrade")
        assert final["steps"]["degrade"]["digest"] == reference["steps"]["degrade"]["digest"]
        m = _degrade_metrics(final)
        assert m["shards_cached"] >= 3 and m["shards_computed"] >= 1, m  # only what the outage left undone
        assert m["shards_cached"] + m["shards_computed"] == shards
    finally:
        relay.stop()
