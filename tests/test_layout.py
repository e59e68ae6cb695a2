"""The repository's shape and its import rules (docs/architecture.md §2), checked statically with ``ast``."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA_LIBS = {"prefect", "mlflow", "boto3", "botocore", "ray"}


def _imports(path: Path, package: str) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved against ``package``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _modules(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        package = "srcompress." + ".".join(parts[:-1] if parts[-1] != "__init__" else parts[:-1])
        yield path, package.rstrip(".")


def test_top_level_is_the_dag():
    for name in ("flows", "tasks", "models", "infra", "tests", "configs", "bench", "docs", "prefect.yaml",
                 "pyproject.toml", "README.md"):
        assert (ROOT / name).exists(), name
    assert sorted(p.name for p in (ROOT / "srcompress").glob("*.py")) == ["__init__.py", "cli.py", "cliutil.py",
                                                                          "config.py", "datasets_cli.py",
                                                                          "models_cli.py", "typed.py"]


def test_models_import_no_infrastructure():
    bad = []
    for path, package in _modules("models"):
        for mod in _imports(path, package):
            top = mod.split(".")[0]
            if top in INFRA_LIBS or mod.startswith(("srcompress.tasks", "srcompress.flows", "srcompress.infra")):
                bad.append(f"{path.relative_to(ROOT)}: {mod}")
    assert not bad, bad


def test_steps_do_not_import_each_other():
    steps = {p.name for p in (ROOT / "tasks").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    bad = []
    for path, package in _modules("tasks"):
        own = package.split(".")[2] if package.count(".") >= 2 else None
        for mod in _imports(path, package):
            parts = mod.split(".")
            if mod.startswith("srcompress.tasks.") and len(parts) > 2 and parts[2] in steps:
                other = parts[2]
                if other != own and other != "common":
                    bad.append(f"{path.relative_to(ROOT)}: {mod}")
                if own == "common" and other != "common":
                    bad.append(f"{path.relative_to(ROOT)} (common) imports a step: {mod}")
    assert not bad, bad


def test_the_layout_rule_checker_catches_a_violation(tmp_path):
    """The checker itself can fail: a models/ file importing infra is reported."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from srcompress.infra.store import open_store\n    import ray\n")
    mods = _imports(f, "srcompress.models")
    assert "srcompress.infra.store" in mods and "ray" in mods


def test_nothing_refers_outside_the_repository():
    needle = "shared" + "/"  # spelled so that this file does not match itself
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    offenders = [f for f in files if f.endswith((".py", ".md", ".yaml", ".toml", ".cfg"))
                 and (ROOT / f).is_file() and needle in (ROOT / f).read_text(errors="replace")]
    assert not offenders, offenders


@pytest.mark.parametrize("entry", ["flows/compress.py:compress", "flows/evaluate.py:evaluate"])
def test_flow_entrypoints_load(entry):
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(ROOT / entry))
    assert flow.name.startswith("srcompress-")


def test_importing_diffusers_after_srcompress_leaves_bitsandbytes_and_inductor_out():
    """srcompress marks bitsandbytes absent (srcompress/__init__.py): diffusers then skips its quantizer imports,
    which pulled in torch._inductor — ~1.1 s in every Ray actor, DeepSpeed rank and CLI run."""
    import sys

    code = ("import sys, srcompress; from diffusers import AutoencoderKL, SD3Transformer2DModel; "
            "print(sys.modules.get('bitsandbytes') is None, 'torch._inductor.compile_fx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"], out.stdout
