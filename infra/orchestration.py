"""Prefect settings for the embedded default: a local ephemeral API under the work dir, analytics off.

Must run before ``prefect`` is imported: Prefect reads its settings from the environment at import time.
Any value the user already set (``PREFECT_API_URL`` for a real server, ``PREFECT_HOME``…) wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_prefect(workdir: str | Path) -> None:
    home = Path(workdir).resolve() / ".prefect"
    home.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        # The first flow run starts a local server (~13 s); give slow CI machines room.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_LOG_PRINTS": "true",
        "HF_HUB_OFFLINE": "1",  # nothing is ever fetched from a model hub (docs/stack.md)
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


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
