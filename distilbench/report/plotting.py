"""matplotlib, set up so that a rebuilt PNG is byte-identical: the Agg backend, a fixed SVG hash salt, no metadata."""
from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend with the report's settings (imported here, lazily: it is slow)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "distilbench", "font.size": 9})
    return plt


def save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG at 100 dpi without the software's version or a date, so that rebuilds are identical."""
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version/date in the PNG: rebuilds are identical


__all__ = ["pyplot", "save"]
