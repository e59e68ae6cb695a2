"""Real-ESRGAN second-order degradation (kernels, operators, JPEG, the batched pipeline)."""

from srcompress.models.degradations.pipeline import SampleParams, degrade_batch, draw_params

__all__ = ["SampleParams", "degrade_batch", "draw_params"]
