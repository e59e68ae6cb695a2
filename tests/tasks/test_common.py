"""tasks/common: the shared teacher fetch (safe under concurrency), held-out selection on any dataset, thread
counts and step figures."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from srcompress.infra.manifest import Manifest
from srcompress.infra.store import LocalStore, StoreConfig
from srcompress.models.teachers import save_teacher
from srcompress.models.teachers.tiny import tiny_sd3_teacher
from srcompress.tasks.common.sources import DataConfig, held_out_names, list_sources
from srcompress.tasks.common.teachers import COMPLETE, fetch_teacher_folder, publish_folder


def _manifest(store: LocalStore, tmp_path: Path) -> Manifest:
    folder = save_teacher(tiny_sd3_teacher(num_layers=1), tmp_path / "teacher")
    uri, digest, _ = publish_folder(store, folder, "teacher/t")
    return Manifest(kind="teacher", step="bootstrap_teacher", uri=uri, digest=digest, config_hash="c",
                    code_version="v", cache_key="k",
                    extra={"index_sha256": store.stat(store.key_from_uri(uri)).sha256})


def test_concurrent_fetches_share_one_folder_and_never_replace_it(tmp_path):
    store = LocalStore(tmp_path / "store")
    manifest = _manifest(store, tmp_path)
    cache = tmp_path / "cache"
    results, errors = [], []

    def fetch():
        try:
            results.append(fetch_teacher_folder(store, manifest, cache))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    dest = results[0]
    assert (dest / COMPLETE).read_text() == manifest.digest
    assert [p.name for p in cache.iterdir()] == [dest.name]  # the losers' temporary copies are gone
    inode = (dest / "vae" / "config.json").stat().st_ino
    assert fetch_teacher_folder(store, manifest, cache) == dest
    assert (dest / "vae" / "config.json").stat().st_ino == inode  # a complete folder is never rewritten


def test_an_incomplete_folder_is_replaced(tmp_path):
    store = LocalStore(tmp_path / "store")
    manifest = _manifest(store, tmp_path)
    cache = tmp_path / "cache"
    stale = cache / manifest.digest[:24]
    stale.mkdir(parents=True)
    (stale / "junk").write_text("half a download")
    dest = fetch_teacher_folder(store, manifest, cache)
    assert dest == stale and (dest / COMPLETE).is_file() and not (dest / "junk").exists()


def test_held_out_fraction_is_seeded_and_works_on_any_folder(tmp_path):
    names = [f"img{i:02d}.png" for i in range(20)]
    cfg = DataConfig(source=str(tmp_path), held_out_fraction=0.2)
    a = held_out_names(cfg, names)
    assert len(a) == 4 and a == held_out_names(cfg, list(reversed(names)))  # order-independent
    assert held_out_names(cfg.model_copy(update={"held_out_seed": 1}), names) != a
    assert held_out_names(cfg, names + ["new.png"]) - {"new.png"} <= a  # adding a file never holds out an old one
    both = held_out_names(cfg.model_copy(update={"held_out": ["img00.png"]}), names)
    assert "img00.png" in both and a <= both
    assert len(held_out_names(DataConfig(held_out_fraction=0.01), names[:3])) == 1  # at least one
    with pytest.raises(ValueError, match=r"data\.held_out names not found"):
        held_out_names(DataConfig(held_out=["missing.png"]), names)
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    train = {r.name for r in list_sources(cfg, StoreConfig(), "train")}
    hold = {r.name for r in list_sources(cfg, StoreConfig(), "holdout")}
    assert hold == a and train == set(names) - a


def test_a_step_computes_with_its_own_thread_count_whatever_an_earlier_step_left(tmp_path):
    """The count a step gets must not depend on which steps ran before it in the process (a cache-hit step
    leaves the setting alone): a resumed run trained the teacher with another count and other weights."""
    import os

    import torch

    from srcompress.infra.context import RunContext
    from srcompress.infra.tracking import TrackingConfig
    from srcompress.tasks.common.threads import core_budget, threads_for, use_threads

    def ctx(n: int) -> RunContext:
        return RunContext(workdir=str(tmp_path), store=StoreConfig(), tracking=TrackingConfig(), torch_threads=n)

    cores = core_budget()  # OMP_NUM_THREADS when set (one per xdist worker), else the affinity mask
    assert cores == int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    before = torch.get_num_threads()
    try:
        seen = []
        for left_behind in (1, cores):
            torch.set_num_threads(left_behind)  # what an earlier step (e.g. degradation shards) set

            def step() -> None:  # Prefect runs tasks on its own threads: they start from the process default
                use_threads(ctx(0))
                seen.append(torch.get_num_threads())

            t = threading.Thread(target=step)
            t.start()
            t.join()
        assert seen == [cores, cores]
        assert threads_for(ctx(0), workers=2) == max(1, cores // 2) and threads_for(ctx(3), workers=2) == 3
        use_threads(ctx(1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_core_budget_follows_omp_num_threads(monkeypatch, tmp_path):
    """A host cap (``OMP_NUM_THREADS``) bounds every step's threads; without it, the affinity mask does."""
    from srcompress.infra.context import RunContext
    from srcompress.infra.tracking import TrackingConfig
    from srcompress.tasks.common.threads import core_budget, threads_for

    ctx = RunContext(workdir=str(tmp_path), store=StoreConfig(), tracking=TrackingConfig())
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert core_budget() == 3 and threads_for(ctx, workers=1) == 3 and threads_for(ctx, workers=2) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert core_budget() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    assert core_budget() == len(os.sched_getaffinity(0))


def test_step_figures_are_png_and_closed_after():
    from srcompress.tasks.common.plots import png_bytes, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    before = set(plt.get_fignums())
    data = png_bytes(fig, dpi=50)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 200
    assert set(plt.get_fignums()) == before - {fig.number}
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"
