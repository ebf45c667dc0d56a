"""matplotlib, imported only when a plot is drawn (``pip install 'highnoon[plot]'``).

Training never needs matplotlib, so it is an extra (``.[plot]``, included in ``.[test]``); the
curriculum report and the curriculum study import it through ``pyplot()``, which draws to files
(the ``Agg`` backend: no display needed) and names the fix when matplotlib is missing.
"""

from __future__ import annotations

from typing import Any

from highnoon.utils.files import atomic_write_bytes

INSTALL_HINT = "pip install 'highnoon[plot]' (or pip install matplotlib)"


class PlottingUnavailableError(ImportError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only ``Agg`` backend."""
    try:
        import matplotlib
    except ImportError:
        raise PlottingUnavailableError(
            f"plots need matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str) -> str:
    """Writes ``figure`` as a PNG to ``path`` atomically (local or gfile) and closes it."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path
