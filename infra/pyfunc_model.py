"""The MLflow pyfunc of a registered srcompress student (MLflow "models from code": this file is copied into
the model and executed at load — no pickled Python objects; the weights are the student's safetensors folder).

    m = mlflow.pyfunc.load_model("models:/srcompress-tiny@champion")
    df = m.predict(pd.DataFrame({"image": [base64_png]}))          # → DataFrame: image (base64 PNG), height, width
    sr = m.unwrap_python_model().predict(None, lr_uint8_hwc)      # arrays: (H, W, 3) uint8 → (4H, 4W, 3) uint8

The model's signature is the DataFrame (``infra/serving.student_signature``), which MLflow enforces on
``predict``; arrays, bytes and lists are reached through the unwrapped model. ``mlflow models serve -m
models:/<name>/<v>`` (default environment manager: a virtualenv from the model's pinned requirements and its
bundled code) then answers ``POST /invocations {"dataframe_split": {"columns": ["image"], "data":
[["<base64 PNG>"]]}}``.
"""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


def _decode(value) -> np.ndarray:
    from PIL import Image

    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, str):
        value = base64.b64decode(value)
    with Image.open(io.BytesIO(bytes(value))) as im:
        return np.asarray(im.convert("RGB"))


def _png_b64(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class StudentPyfunc(PythonModel):
    """LR image(s) in, ×scale SR image(s) out, with the evaluation's inference settings (``model_config``)."""

    def load_context(self, context) -> None:
        import torch

        from srcompress.models.device import resolve_device
        from srcompress.models.student.student import load_student
        from srcompress.models.upscalers import DiffusionSR

        cfg = dict(context.model_config or {})
        device = resolve_device(cfg.get("device", "auto"), "pyfunc device")
        student = load_student(context.artifacts["student"], device=device)
        self.up = DiffusionSR(student, scale=int(cfg.get("scale", 4)), name="student",
                              tile=cfg.get("tile", "model"), tile_overlap=cfg.get("tile_overlap", "model"),
                              color_fix=cfg.get("color_fix", "wavelet"))
        self.torch = torch

    def _one(self, arr: np.ndarray) -> np.ndarray:
        arr = np.asarray(arr)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
        x = self.torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
        with self.torch.no_grad():
            sr = self.up(x.permute(2, 0, 1)[None])
        return (sr[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise ValueError("expected a DataFrame with an 'image' column (PNG bytes or base64)")
            outs = [self._one(_decode(v)) for v in model_input["image"]]
            return pd.DataFrame({"image": [_png_b64(o) for o in outs], "height": [o.shape[0] for o in outs],
                                 "width": [o.shape[1] for o in outs]})
        if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
            return self._one(model_input)
        if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
            return np.stack([self._one(a) for a in model_input])
        if isinstance(model_input, (list, tuple)):
            return [self._one(_decode(v)) for v in model_input]
        if isinstance(model_input, (bytes, str)):
            return self._one(_decode(model_input))
        raise ValueError(f"unsupported input type {type(model_input).__name__}")


mlflow.models.set_model(StudentPyfunc())
