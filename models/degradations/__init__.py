"""Real-ESRGAN second-order degradation (kernels, operators, JPEG, the batched pipeline, its config)."""

from srcompress.models.degradations.config import DegradationConfig
from srcompress.models.degradations.pipeline import SampleParams, degrade_batch, draw_params

__all__ = ["DegradationConfig", "SampleParams", "degrade_batch", "draw_params"]
