"""Prefect settings for the embedded default (a local ephemeral API under the work dir, analytics off), and the
dataset-registered events that deployments trigger on (a real Prefect server: docs/deploy.md).

``configure_prefect`` must run before ``prefect`` is imported: Prefect reads its settings from the environment at
import time. Any value the user already set (``PREFECT_API_URL`` for a real server, ``PREFECT_HOME``…) wins.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Callable


def configure_prefect(workdir: str | Path) -> None:
    home = Path(workdir).resolve() / ".prefect"
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the client's own telemetry (Prefect ≥ 3.6 prints a notice on a terminal and sends events): off too
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        # The first flow run starts a local server (~13 s); give slow CI machines room.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_LOG_PRINTS": "true",
        "HF_HUB_OFFLINE": "1",  # nothing is ever fetched from a model hub (docs/stack.md)
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def start_local_api() -> Callable[[], None]:
    """Start Prefect's temporary local API now and return a function that waits until it answers.

    Left to itself, Prefect starts that server at a run's first API call: it imports its server code (~3 s in
    this process), then spawns uvicorn and waits for it (~6 s more on 2 cores). Here the uvicorn process
    (Prefect's own app factory, as Prefect runs it) is spawned before ``prefect`` is imported, and this process's
    ``PREFECT_API_URL`` names it: the client talks to it as to any server and never imports the server code,
    while the CLI imports MLflow and the flow. The process is stopped at exit (and by the run's watchdog on
    kill -9). Nothing starts when ``PREFECT_API_URL`` already names a server, or when another settings source
    could (``_configured_elsewhere``: Prefect then decides, as usual). Call after ``configure_prefect``, in a
    process that runs one pipeline and exits (the CLI): the URL stays in this process's environment."""
    import atexit
    import importlib.util
    import subprocess
    import sys

    if os.environ.get("PREFECT_API_URL") or _configured_elsewhere():
        return lambda: None
    port = _free_port()
    site = Path(importlib.util.find_spec("prefect").origin).parent.parent
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(site),
                             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "error", "--lifespan", "on"], env=env)
    api = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = api  # before prefect is imported: its settings read it at import

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    atexit.register(stop)

    def wait() -> None:
        deadline = time.monotonic() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 180))
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Prefect's local API (uvicorn on port {port}) exited with code {proc.returncode} "
                                   "before answering; its output is above. Set PREFECT_API_URL to use a running "
                                   "Prefect server instead")
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        stop()
        raise RuntimeError(f"Prefect's local API on port {port} did not answer within the start-up timeout "
                           "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    return wait


def _configured_elsewhere() -> bool:
    """Whether a settings source other than the environment could name a Prefect API (a profiles file, or
    ``prefect.toml`` / ``.env`` / ``pyproject.toml [tool.prefect]`` in the working directory): Prefect then
    decides, as it does without srcompress."""
    explicit = os.environ.get("PREFECT_PROFILES_PATH")
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    if (Path(explicit) if explicit else home / "profiles.toml").exists():
        return True
    cwd = Path.cwd()
    if (cwd / "prefect.toml").exists() or (cwd / ".env").exists():
        return True
    try:
        return "[tool.prefect" in (cwd / "pyproject.toml").read_text()
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mark_flow_runs_crashed(flow_run_ids: list[str], reason: str) -> int:
    """Set Prefect flow runs left ``Running`` by a killed process to ``Crashed`` (in the API this run talks to:
    the embedded server keeps its database under the work dir, so the killed run's records are there)."""
    import logging

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    done = 0
    with get_client(sync_client=True) as client:
        for fid in flow_run_ids:
            try:
                run = client.read_flow_run(fid)
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(fid, Crashed(message=reason), force=True)
                    done += 1
            except Exception as exc:  # an unknown id (another Prefect API) is not an error for this run
                logging.getLogger("srcompress").info("flow run %s not marked crashed: %s", fid, exc)
    return done


# -- datasets registered with a Prefect server (srcompress datasets register; prefect.yaml's triggers) -----------

class PrefectServerError(RuntimeError):
    """No Prefect server to send to: ``PREFECT_API_URL`` unset (Prefect would start a throwaway ephemeral API that no
    deployment or worker listens to), or set but not answering."""


def prefect_server_url() -> str:
    """The configured Prefect API URL (environment or active profile), checked to answer ``/health``.

    Raises ``PrefectServerError`` with a one-line reason, credentials redacted."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from srcompress.infra.config import redact_text

    url = PREFECT_API_URL.value()
    if not url:
        raise PrefectServerError(
            "PREFECT_API_URL is not set: an event sent to Prefect's ephemeral API reaches no deployment; set it to "
            "your server (e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api)")
    with get_client(sync_client=True) as client:
        exc = client.api_healthcheck()
    if exc is not None:
        reason = redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise PrefectServerError(f"the Prefect server at PREFECT_API_URL={redact_text(url)} does not answer: {reason}")
    return url


def emit_dataset_registered(event: str, resource: dict[str, str], payload: dict, timeout: float = 30.0) -> str:
    """Send one event to the Prefect server at ``PREFECT_API_URL`` and return its id.

    The events websocket client is used directly (not ``prefect.events.emit_event``, whose background worker logs
    and drops an event it cannot deliver): a connection or send failure raises ``PrefectServerError``, and when this returns
    the websocket has been closed in order after the event's frame (the server has received it; it persists and
    matches events asynchronously, within seconds). Deployment triggers
    (prefect.yaml) template their parameters from ``payload``."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient, get_events_client

    from srcompress.infra.config import redact_text

    ev = Event(event=event, resource=resource, payload=payload)

    async def send() -> None:
        client = get_events_client(reconnection_attempts=2)
        if not isinstance(client, PrefectEventsClient):  # the ephemeral-API case is refused before this
            raise PrefectServerError(f"no Prefect server events endpoint to send {event} to")
        async with client:
            await client.emit(ev)

    try:
        asyncio.run(asyncio.wait_for(send(), timeout))
    except PrefectServerError:
        raise
    except Exception as exc:  # connection refused, handshake/auth failure, timeout
        raise PrefectServerError(f"could not send {event} to the Prefect server: "
                                 f"{redact_text(str(exc)) or type(exc).__name__}") from None
    return str(ev.id)


def listening_deployments(event: str, resource: dict[str, str]) -> list[str]:
    """``flow/deployment`` names that an enabled automation on the server will run for this event (the event
    triggers ``prefect deploy`` creates from prefect.yaml); an empty list when none listens."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import AutomationSort
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger
    from prefect.events.schemas.events import Resource, matches

    res = Resource.model_validate(resource)
    names: list[str] = []
    with get_client(sync_client=True) as client:
        # every body field explicit: Prefect's server under FastAPI >= 0.151 rejects a null sort / limit (422)
        for auto in client.read_automations(sort=AutomationSort.CREATED_DESC, limit=200, offset=0):
            trig = auto.trigger
            if not auto.enabled or not isinstance(trig, EventTrigger):
                continue
            if trig.expect and not any(matches(e, event) for e in trig.expect):
                continue
            if not trig.match.matches(res):
                continue
            for action in auto.actions:
                if isinstance(action, RunDeployment) and action.deployment_id is not None:
                    dep = client.read_deployment(action.deployment_id)
                    names.append(f"{client.read_flow(dep.flow_id).name}/{dep.name}")
    return sorted(set(names))
