"""A wheel install carries every module of the top-level layout and the presets, and finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_every_module_and_the_presets(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("srcompress-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"srcompress/{p.relative_to(ROOT).as_posix()}" for layer in ("flows", "tasks", "models", "infra")
                for p in (ROOT / layer).rglob("*.py")}
    expected |= {f"srcompress/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert expected <= names, sorted(expected - names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import srcompress.infra.config as c, srcompress.flows.compress as f; "
             "print(c.resolve_config_path('tiny')); print(f.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(target))).stdout.split()
    assert out[0] == str(target / "srcompress" / "configs" / "tiny.yaml")
    assert out[1].startswith(str(target))
