"""Derived code versions: what a step's cache key says about the code that computed its output.

    code_version("srcompress.tasks.encode.step")   # → "0.1.0+3f…" (16 hex digits)

The version is *derived*, never listed by hand (hand-kept lists drifted: a step calling a helper that its
list forgot was served stale results). From the step's module, the static import graph is walked with
``ast`` — imports inside functions included, relative imports resolved, ``from pkg import mod`` followed
into the submodule — and every module of the *compute* layers (``srcompress.tasks``, ``srcompress.models``,
``srcompress.typed``) in the transitive closure contributes its name and the sha256 of its source. Parent
packages' ``__init__`` modules count too (they run on import). ``srcompress.infra`` and the flows are not
followed: they move bytes and record lineage, they do not compute step outputs.

The versions of the third-party distributions the closure imports (torch, diffusers, numpy, …) are hashed
with it, because their numerics are part of the result; orchestration-only libraries are left out, so a
Prefect or MLflow upgrade does not recompute a dataset (docs/architecture.md §3).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Module prefixes whose code computes step outputs (followed and hashed).
COMPUTE_PREFIXES = ("srcompress.tasks", "srcompress.models", "srcompress.typed")
# Third-party libraries that orchestrate, track, store or parse settings: their versions do not change numbers.
NON_NUMERIC = frozenset({"prefect", "mlflow", "ray", "boto3", "botocore", "pydantic", "typer", "yaml", "rich",
                         "click", "srcompress"})


@dataclass(frozen=True)
class Closure:
    modules: tuple[tuple[str, str], ...]  # (module name, sha256 of its source), sorted
    libraries: tuple[tuple[str, str], ...]  # (distribution, version), sorted
    third_party: tuple[str, ...] = ()  # every third-party top-level import name (not in the digest)

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, sha in self.modules:
            h.update(f"mod:{name}:{sha}\n".encode())
        for dist, ver in self.libraries:
            h.update(f"lib:{dist}:{ver}\n".encode())
        return h.hexdigest()


def _spec(name: str):
    """``find_spec`` without executing a module: ``find_spec("a.b.c")`` imports ``a.b``, so a name under a
    *module* (``from a.b import c`` where ``c`` is a function) is answered None before asking; only package
    ``__init__``s run. Computing a code version must not import the step it versions (torch, diffusers…)."""
    parent = name.rpartition(".")[0]
    if parent:
        pspec = _spec(parent)
        if pspec is None or pspec.submodule_search_locations is None:
            return None
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _origin(name: str) -> Path | None:
    spec = _spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(src: bytes, path: str) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    found = []
    for node in ast.walk(ast.parse(src, filename=path)):
        if isinstance(node, ast.Import):
            found += [(a.name, 0, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level, tuple(a.name for a in node.names)))
    return tuple(found)


@lru_cache(maxsize=None)
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[str, tuple[tuple[str, int, tuple[str, ...]], ...]]:
    """(sha256 of the source, imports as (module, level, imported names)) — memoised per file version in this
    process; across processes the imports are memoised by the source's sha256 (below), which is always hashed
    from the bytes: an edit that keeps a file's size and mtime still changes its version."""
    src = Path(path).read_bytes()
    sha = hashlib.sha256(src).hexdigest()
    parses = _disk()["parses"]
    hit = parses.get(sha)
    if hit is not None:
        return sha, tuple((m, lvl, tuple(n)) for m, lvl, n in hit)
    imports = _imports(src, path)
    with _LOCK:
        parses[sha] = [list(i) for i in imports]
        _DISK_STATE["dirty"] = True
    return sha, imports


def _parse(path: Path) -> tuple[str, tuple[tuple[str, int, tuple[str, ...]], ...]]:
    st = path.stat()
    return _parsed(str(path), st.st_mtime_ns, st.st_size)


# -- the on-disk memo -------------------------------------------------------------------------------------------
# Every CLI process versions ~100 modules: parsing them and mapping import names to distributions
# (``packages_distributions`` reads every installed RECORD) took ~2 s of a cached rerun's start-up. Both are
# memoised across processes: a module's imports by the sha256 of its source (hashed every time, so nothing can
# go stale), the import-name → distribution map by the import path's directories and their mtimes (any install
# or removal changes them). The file is a cache: missing, unreadable or unwritable, it only costs that time.
_DISK_STATE: dict = {"data": None, "dirty": False, "loaded_from": None}
_LOCK = threading.Lock()
_MAX_PARSES = 4000  # ~5 versions of every module of the package: older entries go first


def cache_file() -> Path:
    base = os.environ.get("SRCOMPRESS_CACHE_DIR") or \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srcompress"
    return Path(base) / f"codever-py{sys.version_info[0]}{sys.version_info[1]}.json"


def _disk() -> dict:
    with _LOCK:
        if _DISK_STATE["data"] is None:
            data, where = {"parses": {}, "dists": {}}, None
            try:  # Path.home() itself raises without HOME or a passwd entry (containers)
                where = cache_file()
                loaded = json.loads(where.read_text())
                if isinstance(loaded.get("parses"), dict) and isinstance(loaded.get("dists"), dict):
                    data = loaded
            except Exception:  # absent, unreadable or from another layout: start empty
                pass
            _DISK_STATE.update(data=data, loaded_from=where)
        return _DISK_STATE["data"]


def _save_disk() -> None:
    """Write the memo back where it was read from (atomically; concurrent processes leave one whole file)."""
    with _LOCK:
        target = _DISK_STATE["loaded_from"]
        if not _DISK_STATE["dirty"] or target is None:
            return
        parses = _DISK_STATE["data"]["parses"]
        for old in list(parses)[: max(0, len(parses) - _MAX_PARSES)]:
            del parses[old]
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(_DISK_STATE["data"], f)
            os.replace(tmp, target)
            _DISK_STATE["dirty"] = False
        except Exception:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _absolute(module: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure(*roots: str, prefixes: tuple[str, ...] = COMPUTE_PREFIXES) -> Closure:
    """The compute modules reachable from ``roots`` and the third-party distributions they import."""
    def computes(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    own = {p.split(".")[0] for p in prefixes}  # our top-level package(s): followed, never a library
    seen: dict[str, str] = {}
    third_party: set[str] = set()
    todo = [p for r in roots for p in _with_parents(r)]
    while todo:
        name = todo.pop()
        if name in seen or not (computes(name) or name in roots):
            continue
        path = _origin(name)
        if path is None:
            continue
        sha, imports = _parse(path)
        seen[name] = sha
        for module, level, names in imports:
            target = _absolute(module, level, name, path.name == "__init__.py")
            top = target.split(".")[0]
            if top not in own:
                if top and top not in sys.stdlib_module_names:
                    third_party.add(top)
                continue
            todo += _with_parents(target)
            todo += [f"{target}.{n}" for n in names if n != "*"]  # `from pkg import submodule`
    out = Closure(tuple(sorted(seen.items())), _library_versions(third_party), tuple(sorted(third_party)))
    _save_disk()
    return out


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    def mtime(p: str) -> int | None:
        try:
            return os.stat(p).st_mtime_ns
        except OSError:
            return None

    key = json.dumps([(p, mtime(p)) for p in sys.path if p and os.path.isdir(p)])
    cached = _disk()["dists"]
    if key in cached:
        return cached[key]
    mapping = importlib.metadata.packages_distributions()
    with _LOCK:
        while len(cached) >= 8:  # one entry per import path in use (the CLI, pytest, Ray workers …): oldest goes
            cached.pop(next(iter(cached)))
        cached[key] = mapping
        _DISK_STATE["dirty"] = True
    _save_disk()
    return mapping


def _library_versions(tops: set[str]) -> tuple[tuple[str, str], ...]:
    dists = {d for top in tops if top not in NON_NUMERIC for d in _distributions().get(top, [])}
    out = []
    for dist in dists:
        try:
            out.append((dist.lower(), importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(sorted(set(out)))


def code_version(*roots: str) -> str:
    """``<package version>+<16 hex digits>`` over the compute closure of ``roots`` and its libraries."""
    from srcompress import __version__

    return f"{__version__}+{closure(*roots).digest()[:16]}"
