"""What a registered student needs to be served anywhere: its code, its pinned requirements, its signature.

    code_dir, requirements = serving_bundle(tmp)        # tmp/srcompress/… and ["diffusers==0.36.0", "torch==2.14.1", …]
    signature, example = student_signature()

``mlflow models serve`` with its default environment manager builds a fresh virtualenv from the model's
``requirements.txt`` and puts the model's ``code/`` folder on ``sys.path``; srcompress itself is not on any
package index. So the model carries the *import closure* of the inference code (the modules the pyfunc's
``load_context`` reaches, walked statically by ``infra/codever.closure`` — never a hand-kept list), and every
third-party distribution that closure imports, pinned to the version installed here: the served model runs the
numerics the evaluation measured. Nothing else of srcompress (Prefect, Ray, DeepSpeed, the DAG) is installed.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from srcompress.infra.codever import _distributions, _origin, closure

# What the pyfunc imports at load (infra/pyfunc_model.py: load_context): the roots of the bundled closure.
SERVING_ROOTS = ("srcompress.models.device", "srcompress.models.student.student", "srcompress.models.upscalers")
# The pyfunc file itself imports these (MLflow adds its own pin; pandas comes with it).
PYFUNC_IMPORTS = ("numpy", "PIL")


def serving_closure():
    """The srcompress modules and third-party imports of the inference code (the whole package is followed)."""
    return closure(*SERVING_ROOTS, prefixes=("srcompress",))


def requirements(tops: set[str]) -> list[str]:
    """``dist==version`` for every installed distribution providing one of the import names ``tops``."""
    out = set()
    for top in tops:
        for dist in _distributions().get(top, []):
            if dist.lower() in ("srcompress", "mlflow"):  # bundled as code / pinned by MLflow itself
                continue
            try:
                # a local label (torch 2.x+cpu) is a build no package index serves: pin the release
                out.add(f"{dist.lower()}=={importlib.metadata.version(dist).split('+')[0]}")
            except importlib.metadata.PackageNotFoundError:
                continue
    return sorted(out)


def serving_bundle(dest: Path) -> tuple[Path, list[str]]:
    """Copy the inference closure's sources under ``dest/srcompress`` (package layout, ``__init__``s included)
    and return that folder with the pinned requirements of its imports."""
    c = serving_closure()
    root = dest / "srcompress"
    if root.exists():
        shutil.rmtree(root)
    for name, _sha in c.modules:
        src = _origin(name)
        parts = name.split(".")[1:]  # a package's source is its folder's __init__.py, a module's its own file
        target = root.joinpath(*(parts if src.name == "__init__.py" else parts[:-1]), src.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:  # namespace gaps: every folder a package
        (folder / "__init__.py").touch(exist_ok=True)
    return root, requirements(set(c.third_party) | set(PYFUNC_IMPORTS))


def student_signature():
    """The one interface a served student has: a DataFrame column ``image`` (base64 PNG) in; ``image`` (base64
    PNG), ``height`` and ``width`` out. The input example is a 16×16 LR image."""
    import base64
    import io

    import numpy as np
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from PIL import Image

    sig = ModelSignature(inputs=Schema([ColSpec("string", "image")]),
                         outputs=Schema([ColSpec("string", "image"), ColSpec("long", "height"),
                                         ColSpec("long", "width")]))
    ramp = np.linspace(0, 255, 16 * 16 * 3).reshape(16, 16, 3).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    return sig, pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode()]})
