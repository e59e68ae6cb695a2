"""Start-up of a cached rerun: the modules a fully cached `srcompress run --until degrade` goes through load
neither torch nor diffusers (~10 s of imports on 2 cores; bench/startup.py times the whole command)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "deepspeed", "pyiqa")

# What `srcompress run` executes before and around a cached degrade step: CLI, config + preflight, the flow
# module, the degrade step's module and the code versions of both (the parent run's tag and the step's key).
SCRIPT = """
import json, sys
from srcompress import cli
from srcompress.config import load_config, preflight
cfg = load_config("tiny")
preflight(cfg)
import srcompress.flows.compress, srcompress.tasks.degrade.step
from srcompress.infra.codever import code_version
code_version("srcompress.flows.compress")
code_version("srcompress.tasks.degrade.step")
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
""" % (HEAVY,)


def test_a_cached_degrade_rerun_imports_no_model_library():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
