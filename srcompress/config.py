"""The root config of a pipeline run: one typed section per component.

    srcompress config show --config configs/tiny.yaml

Sections: ``run`` (naming, parallelism), ``store`` (artifact store), ``tracking`` (MLflow), ``data`` (HR
sources), ``degrade`` (Real-ESRGAN pairs), ``teacher`` (bootstrap or import), ``encode`` (Ray latents),
``redundancy`` (block scores), ``search`` (depth mask), ``distill`` (student, two stages), ``adaptive`` (AdaDiffSR
for multi-step teachers), ``evaluate`` (metrics, conventions, inference), ``registry`` (the register step). Each section's hash is its step-config hash; the whole
config's hash identifies the run's settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from srcompress.infra.config import ConfigError, StrictModel, deep_merge, load_yaml, parse_overrides, validate
from srcompress.models.device import DEVICE_PATTERN
from srcompress.infra.store import StoreConfig
from srcompress.infra.tracking import TrackingConfig
from srcompress.tasks.adaptive.config import AdaptiveConfig
from srcompress.tasks.degrade.config import DegradeConfig
from srcompress.tasks.distill.config import DistillConfig
from srcompress.tasks.common.sources import DataConfig
from srcompress.tasks.encode.config import EncodeConfig
from srcompress.tasks.evaluate.config import VARIANT, EvaluateConfig
from srcompress.tasks.redundancy.config import RedundancyConfig
from srcompress.tasks.register.config import RegisterConfig
from srcompress.tasks.search.config import SearchConfig
from srcompress.tasks.vae.config import VAECompressConfig
from srcompress.models.student.shape import CompressedVAEShape, StudentShape
from srcompress.tasks.common.teacher_config import TeacherConfig

STEPS = ("degrade", "bootstrap_teacher", "compress_vae", "train_mmle", "encode_latents", "analyse_redundancy",
         "search_pruning", "distill_latent", "distill_pixel", "evaluate", "register")  # DAG order (docs/architecture.md §1)


class RunConfig(StrictModel):
    """Naming and parallelism of a pipeline run."""

    name: str = Field("srcompress", min_length=1, description="Run name shown in MLflow and Prefect.")
    max_workers: int = Field(2, ge=1, le=64, description="Prefect task-runner threads for shard fan-out.")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per worker; 0 = cores / max_workers.")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="Where models run: auto (cuda if available, else cpu) | cpu | cuda | cuda:N; steps may override (encode.device, evaluate.device).")
    ray_address: str | None = Field(None, description="Ray cluster for every heavy step (host:port, 'auto', ray://…): degradation shards, latent encoding, the DeepSpeed ranks of search and distillation, evaluation scoring. None = degradation and scoring on this process's threads, a local Ray for the rest.")
    shared_filesystem: bool = Field(False, description="With ray_address and a local-disk store: the store path is a shared mount (NFS, …) on every node.")


class SrConfig(StrictModel):
    """Everything a pipeline run needs."""

    run: RunConfig = Field(default_factory=RunConfig, description="Naming and parallelism.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Artifact store.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
    data: DataConfig = Field(default_factory=DataConfig, description="HR image source.")
    degrade: DegradeConfig = Field(default_factory=DegradeConfig, description="Degradation step.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="Teacher (bootstrap or import).")
    encode: EncodeConfig = Field(default_factory=EncodeConfig, description="Latent pre-encoding on Ray.")
    redundancy: RedundancyConfig = Field(default_factory=RedundancyConfig, description="Redundancy analysis of the teacher's blocks.")
    search: SearchConfig = Field(default_factory=SearchConfig, description="Depth-pruning mask search (DeepSpeed).")
    vae: VAECompressConfig = Field(default_factory=VAECompressConfig, description="VAE compression derived from the teacher's VAE (TinySR), used by the final student.")
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig, description="AdaDiffSR adaptive inference for multi-step teachers (the train_mmle step, teacher_adaptive).")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Student build and two-stage distillation (DeepSpeed).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Evaluation: metrics, conventions, inference.")
    registry: RegisterConfig = Field(default_factory=RegisterConfig, description="The register step: MLflow registered model, aliases, promotion gate.")

    def student_shape(self, teacher_kind: str) -> StudentShape:
        """The final student this config builds (distill.* with the compress_vae step's VAE when vae.enabled):
        what the search's budget and ``srcompress plan`` count."""
        v = self.vae
        width = v.width if isinstance(v.width, int) else tuple(v.width)
        return self.distill.shape(teacher_kind, compressed_vae=CompressedVAEShape(
            width, v.remove_attention, v.separable_encoder) if v.enabled else None)

    @model_validator(mode="after")
    def _cross_checks(self) -> "SrConfig":
        # Remote Ray actors write shards where the store is: a local-disk store would scatter them over the
        # nodes' own disks, and the driver would never see them.
        store_uri = self.store.uri or os.environ.get("SRCOMPRESS_STORE_URI") or ""
        if self.evaluate.data.scale != self.degrade.scale:  # the teacher is trained at degrade.scale
            raise ValueError(f"evaluate.data.scale={self.evaluate.data.scale} differs from degrade.scale="
                             f"{self.degrade.scale}: the models are trained for one scale; set both to the same value")
        blocks = self.teacher.bootstrap.num_layers
        if self.search.budget is not None and self.search.budget.vae_widths is not None \
                and not (self.distill.tiny_vae.enabled and self.distill.stage2.steps > 0):
            raise ValueError("search.budget.vae_widths chooses the tiny VAE's width: it needs distill.tiny_vae.enabled "
                             "and a stage 2 (distill.stage2.steps > 0)")
        if self.vae.enabled and self.distill.tiny_vae.enabled:
            raise ValueError("vae.enabled and distill.tiny_vae.enabled both give the final student a VAE: enable one "
                             "(vae: the teacher's VAE compressed; distill.tiny_vae: a fresh TAESD-style VAE)")
        if self.vae.enabled and self.distill.stage2.steps == 0:
            raise ValueError("vae.enabled: the compressed VAE joins the student in stage 2 (distill.stage2.steps > 0)")
        multistep_bootstrap = self.teacher.source == "bootstrap" and self.teacher.bootstrap.multistep is not None
        if self.adaptive.enabled and self.teacher.source == "bootstrap" and not multistep_bootstrap:
            raise ValueError("adaptive.enabled needs a multi-step teacher: set teacher.bootstrap.multistep (or import "
                             "one with teacher.source)")
        if self.encode.teacher_steps == "adaptive" and not self.adaptive.enabled:
            raise ValueError("encode.teacher_steps: adaptive runs AdaDiffSR's sampler: it needs adaptive.enabled")
        unet_bootstrap = self.teacher.source == "bootstrap" and self.teacher.bootstrap.unet is not None
        if self.teacher.source == "bootstrap" and not (multistep_bootstrap or unet_bootstrap) \
                and blocks % self.search.m and self.search.budget is None:
            # imported teachers: checked at the step; with a budget, N:M is chosen to fit the blocks
            raise ValueError(f"search.m={self.search.m} must divide the bootstrap teacher's {blocks} blocks "
                             f"(teacher.bootstrap.num_layers)")
        for row in self.evaluate.models:  # a variant row needs the run that makes its student
            v = VARIANT.match(row)
            if v and v["phase"] and v["phase"] not in self.distill.phase_ablation:
                raise ValueError(f"evaluate.models lists {row}: add {v['phase']} to distill.phase_ablation")
            if v and v["route"] and v["route"] not in self.search.compare_methods:
                raise ValueError(f"evaluate.models lists {row}: add {v['route']} to search.compare_methods")
        if self.run.ray_address and not store_uri.startswith("s3://") and not self.run.shared_filesystem:
            raise ValueError("run.ray_address is set but store.uri is a local-disk store: Ray workers on other "
                             "nodes would write to their own disks. Use an s3:// store, or set "
                             "run.shared_filesystem=true if the store path is a shared mount on every node")
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict[str, Any] | None = None) -> SrConfig:
    """YAML file (or preset name) + ``key=value`` overrides → validated ``SrConfig``."""
    raw = load_yaml(path) if path is not None else {}
    if data:
        raw = deep_merge(raw, data)
    raw = deep_merge(raw, parse_overrides(overrides))
    return validate(SrConfig, raw)


def preflight(cfg: SrConfig) -> None:
    """Checks against this machine that a config cannot make by itself, run before any server or run starts:
    devices that exist, and local folders (data, teacher, LoRA) that are there. Raises ``ConfigError``."""
    from srcompress.models.device import DeviceError, resolve_device

    problems = []
    checks = [("run.device", cfg.run.device), ("evaluate.device", cfg.evaluate.device),
              ("redundancy.device", cfg.redundancy.device), ("search.device", cfg.search.device),
              ("distill.device", cfg.distill.device)]
    if cfg.encode.gpus_per_actor == 0 and not cfg.run.ray_address:  # GPUs of a remote cluster are not ours to see
        checks.append(("encode.device", cfg.encode.device))
    for key, spec in checks:
        # auto and cpu always resolve (the fields' pattern rejects anything else): only a CUDA request needs
        # torch to look at the machine, and a cached rerun should not pay torch's import for nothing.
        if spec is not None and spec.startswith("cuda"):
            try:
                resolve_device(spec, key)
            except DeviceError as exc:
                problems.append(str(exc))
    local = {"data.source": cfg.data.source if cfg.data.source != "bundled" else None,
             "teacher.source": cfg.teacher.source if cfg.teacher.source != "bootstrap" else None,
             "teacher.lora": cfg.teacher.lora if cfg.teacher.lora not in (None, "none") else None}
    for key, value in local.items():
        if value and "://" not in value and not Path(value).expanduser().is_dir():
            problems.append(f"{key}: {value} is not a folder on this machine")
    if cfg.data.held_out and not any(p.startswith("data.source") for p in problems):
        from srcompress.tasks.common.sources import list_sources

        try:  # names must exist in the source (one listing, before anything starts)
            list_sources(cfg.data, cfg.store, "holdout")
        except (ValueError, FileNotFoundError) as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
