"""Figures for step runs: pyplot on the headless Agg backend, and a figure as PNG bytes (closed after).

    plt = pyplot()
    fig, ax = plt.subplots()
    atomic_write_bytes(path, png_bytes(fig))
"""

from __future__ import annotations

import io


def pyplot():
    """``matplotlib.pyplot`` on Agg: steps run in workers and servers with no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 100) -> bytes:
    """The figure as PNG (tight bounding box), then closed: pyplot keeps every open figure alive."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return buf.getvalue()
