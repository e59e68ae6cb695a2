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
