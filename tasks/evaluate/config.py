"""Typed config of the evaluation step: which data, which metrics under which conventions, how models infer.

Every field here is logged as an MLflow param with the results (the conventions are part of the numbers,
docs/methods.md §5: the colour space, crop, colour fix and tile settings are logged with the metrics).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from srcompress.infra.config import StrictModel
from srcompress.models.device import DEVICE_PATTERN

DEFAULT_METRICS = ["psnr", "ssim", "ms_ssim", "st_lpips", "lpips", "dists", "niqe", "piqe", "brisque", "musiq",
                   "maniqa", "clipiqa", "fid"]
# bicubic: the baseline; teacher; pruned: the teacher's kept blocks, no training; searched: + the search's LoRA;
# student_stage1: after latent distillation; student: the final student; student_phase_<none|post|peam>: the
# student distilled with another phase adapter (distill.phase_ablation); student_route_<method>: the student of
# another search method's mask (search.compare_methods);
# teacher_adaptive: a multi-step teacher under AdaDiffSR's adaptive sampler (the train_mmle step's regressor).
REGISTERED = re.compile(r"^models:/[\w.-]+(@[\w-]+|/\d+)$")  # an MLflow registered model version
MODEL_KINDS = ("bicubic", "teacher", "teacher_adaptive", "pruned", "searched", "student_stage1", "student")
VARIANT = re.compile(r"^student_(phase_(?P<phase>none|post|peam)|route_(?P<route>[a-z_]+))$")


class EvalDataConfig(StrictModel):
    """How an evaluation dataset is read and, for HR-only folders, how its LQ inputs are made."""

    kind: Literal["auto", "hr", "paired", "lr", "pairs"] = Field("auto", description="auto: hr/+lr/ subfolders → paired, only lr/ → lr, a .json manifest → pairs, else a folder of HR photos.")
    lq: Literal["bicubic", "degrade"] = Field("bicubic", description="HR folders: LQ by plain bicubic downsampling (antialiased, MATLAB imresize-like) or by the config's degrade pipeline (seeded per image).")
    scale: int = Field(4, ge=1, le=16, description="Upscaling factor (HR side / LR side).")
    center_crop: int | None = Field(512, ge=16, description="HR folders: centre-crop HR to this square first (StableSR-style 512 test crops); None = whole image (cropped to a multiple of scale).")
    tiles: int | None = Field(None, ge=16, description="HR folders: after the centre crop (and degradation), split each image into non-overlapping tiles of this HR side, each its own evaluation item named <image>#<k> (more paired items for the retention statistics); None = one item per image. Must be a multiple of scale.")
    max_images: int | None = Field(None, ge=1, description="Use at most this many images (sorted by name).")
    seed: int = Field(0, description="Seed of the degradation draws (per image: seed, name digest).")
    endpoint_url: str | None = Field(None, description="S3 endpoint for an s3:// dataset; default: the store's.")
    max_pixels: int = Field(100_000_000, ge=1, description="Images with more pixels are skipped (decompression-bomb guard).")
    max_file_mb: float = Field(256.0, gt=0, description="Files larger than this are skipped without being read.")


class InferenceConfig(StrictModel):
    """How diffusion models run on evaluation images of any size."""

    tile: Annotated[int, Field(ge=4)] | Literal["model", "none"] = Field("model", description="Latent tile: 'model' = the model's own tiling (teacher.json; what encode_latents used, so the evaluated teacher is the cached one); an int (TSD-SR/TinySR: 64); 'none' = untiled. Always capped at the positional-embedding size.")
    tile_overlap: Annotated[int, Field(ge=0)] | Literal["model"] = Field("model", description="Latent tile overlap, Gaussian-blended: 'model' = the model's own, or an int (TSD-SR/TinySR: 8).")
    seed: int = Field(0, description="Seed of the posterior sample for sample-mode latent conventions (OSEDiff), drawn on CPU per image.")
    vae_tiling: bool = Field(False, description="Use the VAE's own tiled encode/decode (diffusers AutoencoderKL.enable_tiling).")
    vae_tile: int = Field(512, ge=32, description="VAE tile size in pixels when vae_tiling is on.")
    color_fix: Literal["none", "adain", "wavelet"] = Field("wavelet", description="Colour fix against the bicubic-upsampled LR (TSD-SR default: wavelet; OSEDiff/TinySR: adain).")
    channels_last: bool = Field(False, description="Run every model's VAE in channels-last memory layout (the same for teacher and students: a runtime setting, not a model change). On CPUs it speeds the narrow convolutions of small VAEs up (measured 1.5–2x on the embedded teacher's); outputs equal the default layout's to float round-off.")


class EfficiencyConfig(StrictModel):
    """Latency / MACs / params / memory protocol (models/efficiency.py)."""

    enabled: bool = Field(True, description="Measure each model at the evaluated size.")
    lr_size: int | None = Field(None, ge=8, description="Square LR input side for the measurement; None = the first image's LR size.")
    warmup: int = Field(2, ge=0, description="Untimed calls before timing.")
    reps: int = Field(7, ge=1, description="Timed rounds: every model is called once per round, interleaved in a rotated order; the median and min–max are reported.")


class EvaluateConfig(StrictModel):
    """The evaluation step: dataset handling, metrics and their conventions, inference, report."""

    device: str | None = Field(None, pattern=DEVICE_PATTERN, description="Device of model inference and efficiency timing: auto | cpu | cuda | cuda:N; null = run.device.")
    models: list[str] = Field(["bicubic", "teacher"], min_length=1, description="Models to evaluate: bicubic (always added), teacher, teacher_adaptive (multi-step teachers with adaptive.enabled: AdaDiffSR's sampler), registered versions (models:/<name>@<alias> or models:/<name>/<version>, loaded from MLflow's registry), pruned (mask applied, no training), searched (mask + search LoRA), student_stage1, student, student_phase_<none|post|peam> (distill.phase_ablation), student_route_<method> (search.compare_methods); the report scores each one's retention of the teacher's gain.")
    metrics: list[str] = Field(DEFAULT_METRICS, min_length=1, description="Metric names (see `srcompress evaluate --list-metrics`); unavailable ones are reported, not fatal.")
    crop_border: int = Field(0, ge=0, description="Pixels cropped from each edge before PSNR/SSIM/MS-SSIM/NIQE (SR papers: 0; classic BasicSR: = scale).")
    color_space: Literal["ycbcr", "yiq", "gray"] = Field("ycbcr", description="Grey channel PSNR/SSIM/MS-SSIM use (SR convention: ycbcr, BT.601 Y; gray: MATLAB rgb2gray, the official scripts' input; yiq: pyiqa's).")
    niqe_color_space: Literal["ycbcr", "yiq", "gray"] = Field("ycbcr", description="Grey channel NIQE uses (BasicSR convert_to='y': ycbcr; pyiqa's default: yiq; MATLAB niqe.m on rgb2gray: gray).")
    ssim_downsample: bool = Field(False, description="Wang's MATLAB auto-downsampling before SSIM (papers via pyiqa: off).")
    ms_ssim_method: Literal["product", "wtd_sum"] = Field("product", description="msssim.m's combination of the five scales: product (the paper's formula) or wtd_sum (normalised weighted sum).")
    st_lpips_net: Literal["alex", "vgg"] = Field("alex", description="Trunk of ST-LPIPS.")
    data: EvalDataConfig = Field(default_factory=EvalDataConfig, description="Dataset reading and LQ synthesis.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Tiling and colour fix.")
    efficiency: EfficiencyConfig = Field(default_factory=EfficiencyConfig, description="Efficiency measurement.")
    grid_images: int = Field(6, ge=0, description="How many images get a comparison grid (LQ | bicubic | models | HQ).")
    grid_crop: int = Field(256, ge=32, description="Grids show a centre crop of this HR size (full image if smaller).")
    save_outputs: bool = Field(False, description="Also store every SR output as PNG.")
    items_per_task: int = Field(8, ge=1, description="With run.ray_address: images per Ray scoring task (each task loads one model and scores that many images; every (model, slice) task runs at once across the cluster).")

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in MODEL_KINDS and not REGISTERED.match(m) and not VARIANT.match(m)]
        if unknown:
            raise ValueError(f"unknown models {unknown}; known: {', '.join(MODEL_KINDS)}, student_phase_<setting>, "
                             "student_route_<method>, or a registered version "
                             "models:/<name>@<alias> | models:/<name>/<version>")
        return ["bicubic"] + [m for m in dict.fromkeys(v) if m != "bicubic"]

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        from srcompress.models.iqa.registry import known_names

        known = known_names()
        unknown = [m for m in v if m not in known]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(known)}")
        return list(dict.fromkeys(v))
