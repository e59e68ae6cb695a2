"""BasicSR 1.4.2's own degradation code, loaded from the pinned sdist, as the reference of test_degradations.py.

Importing the ``basicsr`` package is not an option (its ``__init__`` pulls in every architecture and dataset,
and breaks on current torchvision), so three of its files are loaded as standalone modules:

- ``basicsr/data/degradations.py``: kernels (``bivariate_Gaussian``, ``circular_lowpass_kernel``, …) and the
  torch noise functions (``add_gaussian_noise_pt``, ``add_poisson_noise_pt``);
- ``basicsr/utils/diffjpeg.py``: ``DiffJPEG``;
- ``basicsr/utils/img_process_util.py``: ``filter2D`` and ``USMSharp``.

Each is written unmodified to a temporary folder, except for the one import that torchvision 0.17 made private
(``transforms.functional_tensor`` → ``transforms._functional_tensor``; the same ``rgb_to_grayscale``). A fourth
file, ``basicsr/models/realesrgan_model.py``, cannot be imported (it needs the whole package), so it is parsed:
its resize calls (``F.interpolate`` in ``feed_data``) and its final quantisation are compiled from its own
source, which makes *those exact expressions* the reference rather than our reading of them.

The sdist comes from ``srcompress.infra.assets.basicsr_sdist_members``: sha256-pinned, fetched once from the
package index (or ``$SRCOMPRESS_BASICSR_SDIST``) and kept in the asset directory.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from srcompress.infra.assets import basicsr_sdist_members

Tensor = torch.Tensor
PREFIX = "basicsr-1.4.2/basicsr/"
MODULES = {"degradations": "data/degradations.py", "diffjpeg": "utils/diffjpeg.py",
           "img_process_util": "utils/img_process_util.py"}
MODEL = "models/realesrgan_model.py"
# (file, old, new): every rewrite must apply exactly once, so a different sdist fails here, not silently.
REWRITES = [("degradations", "from torchvision.transforms.functional_tensor import rgb_to_grayscale",
             "from torchvision.transforms._functional_tensor import rgb_to_grayscale")]


@dataclass(frozen=True)
class BasicSR:
    degradations: ModuleType
    diffjpeg: ModuleType
    img_process_util: ModuleType
    resizes: tuple[Callable[..., Tensor], ...]  # feed_data's F.interpolate calls, in source order
    resize_sources: tuple[str, ...]
    quantize: Callable[[Tensor], Tensor]  # feed_data's `self.lq = torch.clamp(...)`


def _load_module(name: str, source: str, dest: Path) -> ModuleType:
    path = dest / f"basicsr_ref_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"basicsr_ref_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    old = np.geterr()
    try:
        spec.loader.exec_module(module)
    finally:
        np.seterr(**old)  # degradations.py sets numpy's error state globally at import; keep it to the tests
    return module


def _feed_data(source: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == "feed_data":
            return node
    raise AssertionError("feed_data not found in realesrgan_model.py")


def _compile(expr: ast.expr) -> Callable[..., Any]:
    code = compile(ast.fix_missing_locations(ast.Expression(expr)), MODEL, "eval")
    return lambda **names: eval(code, {"F": F, "torch": torch}, names)  # noqa: S307 - pinned sdist's own code


def _model_expressions(source: str) -> tuple[list[ast.Call], ast.expr]:
    fn = _feed_data(source)
    calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and ast.unparse(n.func) == "F.interpolate"]
    quant = [n.value for n in ast.walk(fn) if isinstance(n, ast.Assign) and len(n.targets) == 1
             and ast.unparse(n.targets[0]) == "self.lq" and "torch.clamp" in ast.unparse(n.value)]
    assert len(calls) == 4 and len(quant) == 1, (len(calls), len(quant))
    return sorted(calls, key=lambda n: (n.lineno, n.col_offset)), quant[0]


def load_basicsr(dest: Path) -> BasicSR:
    """Fetch (or reuse) the sdist, write the three modules to ``dest`` and load them; parse the model file."""
    names = [PREFIX + rel for rel in [*MODULES.values(), MODEL]]
    files = {k: v.decode() for k, v in basicsr_sdist_members(names).items()}
    sources = {name: files[PREFIX + rel] for name, rel in MODULES.items()}
    for name, old, new in REWRITES:
        assert sources[name].count(old) == 1, f"{name}: expected one `{old}`"
        sources[name] = sources[name].replace(old, new)
    mods = {name: _load_module(name, src, dest) for name, src in sources.items()}
    calls, quant = _model_expressions(files[PREFIX + MODEL])
    q = _compile(quant)
    return BasicSR(mods["degradations"], mods["diffjpeg"], mods["img_process_util"],
                   tuple(_compile(c) for c in calls), tuple(ast.unparse(c) for c in calls),
                   lambda out: q(out=out))


def resize_env(scale_sr: int) -> dict[str, Any]:
    """The names feed_data's resize calls read besides out/scale/mode/ori_h/ori_w: ``self.opt['scale']``."""
    return {"self": SimpleNamespace(opt={"scale": scale_sr})}


def add_noise(bsr: BasicSR, x: Tensor, gaussian: bool, amount: float, gray: bool) -> Tensor:
    """feed_data's noise call with the random draws fixed: per-sample tensors for σ / scale and the gray flag,
    as ``random_add_*_noise_pt`` passes them, clip=True, rounds=False. Draws from torch's global generator."""
    d = bsr.degradations
    amt, flag = torch.tensor([amount], dtype=x.dtype), torch.tensor([float(gray)], dtype=x.dtype)
    if gaussian:
        return d.add_gaussian_noise_pt(x, sigma=amt, gray_noise=flag, clip=True, rounds=False)
    return d.add_poisson_noise_pt(x, scale=amt, gray_noise=flag, clip=True, rounds=False)


@torch.no_grad()
def feed_data(bsr: BasicSR, gt: Tensor, p: Any, scale_sr: int, seed: int) -> Tensor:
    """BasicSR's ``RealESRGANModel.feed_data`` for one image with every random choice taken from ``p`` (our
    ``SampleParams``), built from BasicSR's functions and its own resize/quantise expressions. Noise draws come
    from torch's global generator seeded like our per-sample generator (restored afterwards)."""
    ipu, env = bsr.img_process_util, resize_env(scale_sr)
    jpeger = bsr.diffjpeg.DiffJPEG(differentiable=False)
    kern = lambda k: torch.FloatTensor(k)[None]  # noqa: E731 - the dataset's FloatTensor, batched by the loader
    q = lambda v: gt.new_tensor([v])  # noqa: E731 - float32, as out.new_zeros(b).uniform_(...)
    ori_h, ori_w = gt.shape[2:4]
    r1, r2, r3a, r3b = bsr.resizes  # stage 1, stage 2, final in order (a), final in order (b)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed & ((1 << 63) - 1))
        out = ipu.filter2D(ipu.USMSharp()(gt), kern(p.kernel1))
        out = r1(out=out, scale=p.resize1.scale, mode=p.resize1.mode, **env)
        out = add_noise(bsr, out, p.noise1.gaussian, p.noise1.amount, p.noise1.gray)
        out = jpeger(torch.clamp(out, 0, 1), quality=q(p.jpeg1))
        if p.blur2:
            out = ipu.filter2D(out, kern(p.kernel2))
        out = r2(out=out, scale=p.resize2.scale, mode=p.resize2.mode, ori_h=ori_h, ori_w=ori_w, **env)
        out = add_noise(bsr, out, p.noise2.gaussian, p.noise2.amount, p.noise2.gray)
        if p.order_a:
            out = r3a(out=out, mode=p.final_mode, ori_h=ori_h, ori_w=ori_w, **env)
            out = ipu.filter2D(out, kern(p.sinc))
            out = jpeger(torch.clamp(out, 0, 1), quality=q(p.jpeg2))
        else:
            out = jpeger(torch.clamp(out, 0, 1), quality=q(p.jpeg2))
            out = r3b(out=out, mode=p.final_mode, ori_h=ori_h, ori_w=ori_w, **env)
            out = ipu.filter2D(out, kern(p.sinc))
    return bsr.quantize(out)
