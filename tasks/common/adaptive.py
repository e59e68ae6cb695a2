"""The ``train_mmle`` step's regressor as the steps that use it load it (encode's adaptive teacher outputs,
evaluate's ``teacher_adaptive``): verified against the manifest's digests, wrapped around the teacher with the
codebook and regions it was trained for."""

from __future__ import annotations

import json

from srcompress.infra.manifest import Manifest

WEIGHTS, CONFIG = "regressor.safetensors", "regressor.json"


def load_regressor(store, manifest: Manifest):
    """The regressor of a ``regressor`` manifest, verified against its digests."""
    from safetensors.torch import load

    from srcompress.models.adaptive.mmle import GainRegressor

    files = manifest.extra["files"]
    meta = json.loads(store.get_bytes(store.key_from_uri(files[CONFIG]["uri"]), files[CONFIG]["sha256"]))
    reg = GainRegressor(meta["latent_channels"], meta["cond_channels"], meta["width"])
    reg.load_state_dict(load(store.get_bytes(store.key_from_uri(files[WEIGHTS]["uri"]), files[WEIGHTS]["sha256"])))
    return reg.eval().requires_grad_(False), meta


def adaptive_teacher(store, teacher, manifest: Manifest):
    """``teacher`` under AdaDiffSR's sampler with the regressor of a ``regressor`` manifest, with the codebook
    and regions that regressor was trained for (models/adaptive/model.py)."""
    from srcompress.models.adaptive.dtss import DTSSConfig
    from srcompress.models.adaptive.model import AdaptiveTeacher
    from srcompress.models.device import module_device

    reg, meta = load_regressor(store, manifest)
    a = meta["adaptive"]
    return AdaptiveTeacher(teacher, reg.to(module_device(teacher)), DTSSConfig(tuple(a["intervals"]), a["tau"],
                           a["t_max"]), a["region"], a["region_overlap"])
