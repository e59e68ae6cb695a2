"""One-step diffusion SR teachers behind one interface (SD3 transformer, SD-UNet), loaders, tiny builders.

The names below load on first use: the bootstrap recipe's config (``bootstrap_config``) validates without
torch or diffusers, which keeps a cached CLI rerun fast."""

from srcompress.models import lazy_exports

_EXPORTS = {"LatentConvention": "base", "OneStepTeacher": "base", "image_stream": "base",
            "TeacherLoadError": "loader", "load_teacher": "loader", "save_teacher": "loader",
            "SD3OneStepTeacher": "sd3", "UNetOneStepTeacher": "unet"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
