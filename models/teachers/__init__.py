"""One-step diffusion SR teachers behind one interface (SD3 transformer, SD-UNet), loaders, tiny builders."""

from srcompress.models.teachers.base import LatentConvention, OneStepTeacher, image_stream
from srcompress.models.teachers.loader import TeacherLoadError, load_teacher, save_teacher
from srcompress.models.teachers.sd3 import SD3OneStepTeacher
from srcompress.models.teachers.unet import UNetOneStepTeacher

__all__ = ["LatentConvention", "OneStepTeacher", "SD3OneStepTeacher", "TeacherLoadError", "UNetOneStepTeacher",
           "image_stream", "load_teacher", "save_teacher"]
