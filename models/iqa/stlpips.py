"""ST-LPIPS (shift-tolerant LPIPS, Ghildyal & Liu, ECCV 2022) with the weights the ``stlpips-pytorch`` wheel ships.

It is the perceptual full-reference metric that works offline here: the wheel carries the complete
anti-aliased AlexNet/VGG16 trunks and the linear heads (``weights/vST0.0/<net>_shift_tolerant.pth``), so no
ImageNet download is needed (standard LPIPS needs torchvision's ImageNet weights on top of its heads).

The package builds the network and then loads its state dict with ``strict=False``; a silently missing key
would leave random weights, so we load the file ourselves (``weights_only=True``, CPU) and require every
parameter to be covered — ``lins.<i>`` are aliases of ``lin<i>`` and are checked through them.
Inputs are RGB in [0, 1]; the network sees [−1, 1] (``normalize=True``). Lower is better.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import torch

from srcompress.models.iqa.registry import MetricEnv, MetricInfo, MetricUnavailable, check_size, register

Tensor = torch.Tensor


def weights_path(net: str) -> Path:
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or spec.origin is None:
        raise MetricUnavailable("unavailable: package stlpips-pytorch is not installed")
    return Path(spec.origin).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"


class STLPIPS:
    def __init__(self, env: MetricEnv):
        net = env.st_lpips_net
        if net not in ("alex", "vgg"):
            raise ValueError(f"st_lpips net must be alex or vgg, got {net!r}")
        path = weights_path(net)
        if not path.is_file():
            raise MetricUnavailable(f"unavailable: {path.name} not in {path.parent}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import/construction
                from stlpips_pytorch.stlpips import LPIPS

                model = LPIPS(pretrained=False, net=net, variant="shift_tolerant", verbose=False)
        except ImportError as exc:
            raise MetricUnavailable(f"unavailable: stlpips-pytorch cannot be imported ({exc})") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state and not (k.startswith("lins.") and
                                                                    k.replace("lins.", "lin", 1) in state)]
        if missing:
            raise MetricUnavailable(f"unavailable: {path.name} lacks {missing[:3]}")
        model.load_state_dict(state, strict=False)
        self.model = model.eval().to(env.device)
        self.info = MetricInfo("st_lpips", "FR", True, f"stlpips-pytorch/{net}", 16)
        self.device = env.device

    @torch.no_grad()
    def score(self, sr: Tensor, hq: Tensor | None = None) -> Tensor:
        if hq is None:
            raise ValueError("st_lpips is full-reference: it needs the HQ image")
        check_size(self.info, sr)
        out = [float(self.model(sr[i : i + 1].float().to(self.device), hq[i : i + 1].float().to(self.device),
                                normalize=True).reshape(-1)[0]) for i in range(sr.shape[0])]
        return torch.tensor(out, dtype=torch.float64)


@register("st_lpips")
def _build(env: MetricEnv) -> STLPIPS:
    return STLPIPS(env)
