"""Derived code versions and step config hashes: what must and must not change a cache key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from srcompress.config import load_config
from srcompress.infra.codever import closure, code_version


@pytest.fixture()
def fake_pkg(tmp_path, monkeypatch):
    """cvpkg/{tasks/a.py → models/helper.py (imported inside a function), tasks/b.py → models/other.py}."""
    root = tmp_path / "cvpkg"
    files = {
        "__init__.py": "",
        "tasks/__init__.py": "",
        "tasks/a.py": "import numpy\n\ndef run():\n    from ..models.helper import f\n    return f()\n",
        "tasks/b.py": "from cvpkg.models import other\n",
        "models/__init__.py": "",
        "models/helper.py": "def f():\n    return 1\n",
        "models/other.py": "import json\nX = 2\n",
        "tasks/c.py": "from cvpkg.models.loud import f\n",  # a function imported from a module
        "models/loud.py": "import sys\nsys.modules['cvpkg'].executed = True\n\ndef f():\n    return 3\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [m for m in sys.modules if m.startswith("cvpkg")]:
        del sys.modules[name]


def _digest(name: str) -> str:
    return closure(name, prefixes=("cvpkg.tasks", "cvpkg.models")).digest()


def test_editing_a_helper_changes_only_the_steps_that_reach_it(fake_pkg):
    a, b = _digest("cvpkg.tasks.a"), _digest("cvpkg.tasks.b")
    mods = dict(closure("cvpkg.tasks.a", prefixes=("cvpkg.tasks", "cvpkg.models")).modules)
    assert "cvpkg.models.helper" in mods  # a relative import inside a function is followed
    (fake_pkg / "models" / "helper.py").write_text("def f():\n    return 2  # changed\n")
    assert _digest("cvpkg.tasks.a") != a
    assert _digest("cvpkg.tasks.b") == b
    (fake_pkg / "models" / "other.py").write_text("import json\nX = 3\n")
    assert _digest("cvpkg.tasks.b") != b


def test_versioning_a_step_never_executes_the_modules_it_reads(fake_pkg):
    # `from cvpkg.models.loud import f` makes the walk ask whether `f` is a submodule; find_spec would answer by
    # importing cvpkg.models.loud (for a real step: torch and diffusers, seconds of a cached CLI rerun)
    mods = dict(closure("cvpkg.tasks.c", prefixes=("cvpkg.tasks", "cvpkg.models")).modules)
    assert "cvpkg.models.loud" in mods
    assert not getattr(sys.modules["cvpkg"], "executed", False)
    assert "cvpkg.models.loud" not in sys.modules


def test_library_versions_are_part_of_the_closure(fake_pkg):
    libs = dict(closure("cvpkg.tasks.a", prefixes=("cvpkg.tasks", "cvpkg.models")).libraries)
    assert "numpy" in libs  # a.py imports numpy
    assert "json" not in libs  # stdlib is not a library version


def test_real_steps_reach_the_helpers_they_call():
    ev = dict(closure("srcompress.tasks.evaluate.step").modules)
    assert {"srcompress.models.metrics", "srcompress.models.degradations.ops",
            "srcompress.models.upscalers", "srcompress.tasks.common.teachers"} <= set(ev)
    enc = closure("srcompress.tasks.encode.step")
    assert {"srcompress.tasks.common.pairs", "srcompress.tasks.common.teachers",
            "srcompress.models.teachers.tiling"} <= set(dict(enc.modules))
    libs = dict(enc.libraries)
    assert {"torch", "diffusers"} <= set(libs) and "prefect" not in libs and "mlflow" not in libs
    deg = dict(closure("srcompress.tasks.degrade.step").modules)
    assert "srcompress.models.iqa.native" not in deg  # an unrelated step's helper does not count
    assert not any(m.startswith("srcompress.infra") for m in deg)
    assert code_version("srcompress.tasks.degrade.step") != code_version("srcompress.tasks.encode.step")


def test_teacher_settings_change_encode_and_evaluate_keys_but_not_the_bootstrap():
    from srcompress.tasks.encode.step import step_config_hash as encode_hash
    from srcompress.tasks.evaluate.step import step_config_hash as eval_hash
    from srcompress.tasks.teacher.step import step_config_hash as teacher_hash

    base, other = load_config("tiny"), load_config("tiny", ["teacher.timestep=500"])
    assert encode_hash(base.encode, base.teacher) != encode_hash(other.encode, other.teacher)
    assert eval_hash(base.evaluate, base.teacher) != eval_hash(other.evaluate, other.teacher)
    assert teacher_hash(base.teacher) == teacher_hash(other.teacher)  # no retraining for a load setting
    for override in ("teacher.latent_mode=sample", "teacher.use_shift_factor=true", "teacher.lora=none",
                     "teacher.kind=sd3"):
        o = load_config("tiny", [override])
        assert encode_hash(o.encode, o.teacher) != encode_hash(base.encode, base.teacher), override
    for placement in ("encode.num_actors=4", "encode.cpus_per_actor=2", "encode.device=cpu",
                      "encode.gpus_per_actor=1", "run.device=cpu"):
        o = load_config("tiny", [placement])
        assert encode_hash(o.encode, o.teacher) == encode_hash(base.encode, base.teacher), placement
    o = load_config("tiny", ["evaluate.device=cpu"])
    assert eval_hash(o.evaluate, o.teacher) == eval_hash(base.evaluate, base.teacher)


def test_an_external_lora_is_hashed_by_content(tmp_path):
    from srcompress.tasks.encode.step import step_config_hash

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    (lora / "adapter_model.safetensors").write_bytes(b"v1")
    cfg = load_config("tiny", [f"teacher.lora={lora}"])
    h1 = step_config_hash(cfg.encode, cfg.teacher)
    (lora / "adapter_model.safetensors").write_bytes(b"v2")  # same path, new weights
    assert step_config_hash(cfg.encode, cfg.teacher) != h1


def test_the_on_disk_memo_is_read_and_an_edit_still_changes_the_version(fake_pkg, tmp_path, monkeypatch):
    """Module imports are memoised across processes by the source's sha256 (infra/codever.py: the on-disk memo):
    the memo is what a later process reads, and an edit that keeps the file's size and mtime (``cp -p``, rsync)
    still changes the version."""
    import hashlib
    import json
    import os

    from srcompress.infra import codever

    def fresh():  # a new process: no in-process memo, the disk file as the last process left it
        codever._parsed.cache_clear()
        codever._distributions.cache_clear()
        codever._DISK_STATE.update(data=None, dirty=False, loaded_from=None)

    monkeypatch.setenv("SRCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    fresh()
    before = _digest("cvpkg.tasks.a")
    memo = json.loads(codever.cache_file().read_text())
    helper = Path(codever._origin("cvpkg.models.helper"))  # the file the walk read (the package's, as imported)
    sha = hashlib.sha256(helper.read_bytes()).hexdigest()
    assert sha in memo["parses"] and memo["dists"]
    # what a later process reads is the memo: a poisoned entry (helper "imports" other.py) shows through …
    memo["parses"][sha] = [["cvpkg.models.other", 0, []]]
    codever.cache_file().write_text(json.dumps(memo))
    fresh()
    poisoned = _digest("cvpkg.tasks.a")
    assert poisoned != before
    # … and an edit keeping size and mtime is hashed again, giving the version a memo-less process computes
    st = helper.stat()
    helper.write_text(helper.read_text().replace("return 1", "return 7"))
    os.utime(helper, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert helper.stat().st_size == st.st_size and helper.stat().st_mtime_ns == st.st_mtime_ns
    fresh()
    edited = _digest("cvpkg.tasks.a")
    monkeypatch.setenv("SRCOMPRESS_CACHE_DIR", str(tmp_path / "empty"))
    fresh()
    assert edited == _digest("cvpkg.tasks.a") and edited not in (before, poisoned)
    # an unusable cache location costs time, never the version
    monkeypatch.setenv("SRCOMPRESS_CACHE_DIR", "/proc/no-such-dir")
    fresh()
    assert _digest("cvpkg.tasks.a") == edited
    fresh()
