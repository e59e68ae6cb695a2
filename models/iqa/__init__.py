"""Image-quality metrics behind one registry (see ``registry.py``); no infrastructure imports here."""

from srcompress.models.iqa.registry import (
    ImageTooSmall,
    MetricEnv,
    MetricInfo,
    MetricUnavailable,
    build_metric,
    metric_names,
)

__all__ = ["ImageTooSmall", "MetricEnv", "MetricInfo", "MetricUnavailable", "build_metric", "metric_names"]
