"""One upstream (degrade → bootstrap_teacher → encode_latents → analyse_redundancy) for the whole test session.

Most DAG tests exercise a step *after* the upstream (search, distillation, registration) and used to recompute
the same degrade → bootstrap → encode prefix in a fresh work dir each (~1–2 min apiece on 2 cores). Cache keys
are content-addressed (config section hash + input digests + code version), so a copy of a store that already
holds the prefix turns those steps into verified cache hits — the code path every cached rerun takes.

A store is not relocatable as such: manifests, indexes and cache records name their objects by absolute URI
(``StepCache.get`` refuses a record that points outside its store). ``seed_store`` therefore rewrites the root
URI in every JSON object of the copy, then the sha256 of every JSON object that changed wherever it is cited
(an index's ``index_sha256`` in a manifest), and writes fresh digest records — until nothing changes. Binary
objects (shards, weights) are copied byte for byte: their digests, and so every step digest, are unchanged.

Under pytest-xdist the template is built once for all workers (a file lock in the shared base temp folder).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

# One 64-px crop per image, a few optimisation steps: exercises every code path in seconds.
FAST = ["data.bundled_sets=[sklearn, kodak]", "data.held_out=[kodak/I04.bmp]", "degrade.crop_size=64",
        "degrade.shard_size=3", "degrade.crops_per_image=1", "teacher.bootstrap.vae_steps=4",
        "teacher.bootstrap.restorer_steps=4", "teacher.bootstrap.num_layers=2", "teacher.bootstrap.batch_size=2",
        "teacher.bootstrap.vae_crop=32",
        "search.n=1", "search.m=2",  # N:M groups must divide the 2 blocks
        "teacher.bootstrap.eval_every=1", "teacher.bootstrap.val_fraction=0",  # keep the trained (non-identity) state
        "encode.num_actors=1", "encode.dtype=float32"]  # 2 actors: test_encode_is_deterministic_across_actor_counts
# The seconds-scale teacher: an identity VAE and patch 4, no VAE compression. The main job's latent-factor-4 VAE,
# patch 2, 21-token prompt and compress_vae cost minutes per run; tests/models/test_vae_init.py,
# tests/tasks/test_vae.py and bench/main_job.py exercise them. Every test that runs configs/tiny.yaml's DAG adds it.
FAST_TEACHER = ["teacher.bootstrap.vae_init=identity", "teacher.bootstrap.vae_channels=[8]",
                "teacher.bootstrap.vae_attention=false", "teacher.bootstrap.latent_channels=4",
                "teacher.bootstrap.vae_lr=8e-3", "teacher.bootstrap.patch_size=4", "teacher.bootstrap.tile=32",
                "teacher.bootstrap.tile_overlap=16", "teacher.bootstrap.prompt_len=8", "vae.enabled=false"]
FAST += FAST_TEACHER
# What the session template computes: FAST plus the redundancy settings the search/distill/register tests use.
# One torch thread for the in-process steps: the bootstrap's losses then do not depend on whether the suite runs
# serially or under xdist (OMP_NUM_THREADS=1), and the golden curves pin them (tests/test_golden_curves.py).
UPSTREAM = FAST + ["redundancy.calibration_size=4", "run.torch_threads=1"]
UPSTREAM_STEPS = ("degrade", "degrade_holdout", "bootstrap_teacher", "encode_latents", "analyse_redundancy")

_META = ".srmeta"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seed_store(template: Path, dest: Path) -> Path:
    """Copy the store at ``template`` to ``dest`` (which must not exist) so that it reads as if computed there."""
    shutil.copytree(template, dest)
    old_root, new_root = template.resolve().as_uri().rstrip("/") + "/", dest.resolve().as_uri().rstrip("/") + "/"
    docs = {p: p.read_bytes() for p in dest.rglob("*.json") if _META not in p.relative_to(dest).parts}
    replace = {old_root.encode(): new_root.encode()}
    changed: set[Path] = set()
    while replace:
        shas: dict[bytes, bytes] = {}
        for path, data in docs.items():
            new = data
            for a, b in replace.items():
                new = new.replace(a, b)
            if new != data:
                shas[_sha(data).encode()] = _sha(new).encode()
                docs[path] = new
                changed.add(path)
        replace = shas  # an object whose bytes changed is cited elsewhere by its old sha256
    for path in changed:
        data = docs[path]
        path.write_bytes(data)
        meta = dest / _META / f"{path.relative_to(dest).as_posix()}.json"
        if meta.is_file():  # objects MLflow wrote into the store (run artifacts) carry no record of ours
            meta.write_text(json.dumps({"sha256": _sha(data), "size": len(data)}))
    return dest


def seed_workdir(template_store: Path, workdir: Path, recompute: tuple[str, ...] = ()) -> Path:
    """A fresh work dir whose store already holds the session upstream; returns ``workdir``. The steps named in
    ``recompute`` (e.g. ``("encode_latents",)``) lose their cache records and objects, so they run for real."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = seed_store(template_store, workdir / "store")
    root = store.resolve().as_uri().rstrip("/") + "/"
    for step in recompute:
        # the step's objects live under the top folder its manifest's URI names (derived, not listed here)
        records = sorted((store / "cache" / step).glob("*.json"))
        assert records, f"the session upstream holds no cache record of {step!r}"
        prefixes = {json.loads(r.read_text())["uri"].removeprefix(root).split("/")[0] for r in records}
        for root_dir in (store, store / _META):
            shutil.rmtree(root_dir / "cache" / step, ignore_errors=True)
            for prefix in prefixes:
                shutil.rmtree(root_dir / prefix, ignore_errors=True)
    return workdir
