"""Real-ESRGAN second-order degradation (kernels, operators, JPEG, the batched pipeline, its config).

The names below load on first use: a config that only needs ``DegradationConfig`` does not import torch."""

from srcompress.models import lazy_exports

_EXPORTS = {"DegradationConfig": "config", "SampleParams": "pipeline", "degrade_batch": "pipeline",
            "draw_params": "pipeline"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
