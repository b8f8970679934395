"""The memory timeline of a profiled run as a self-contained plotly page: the device's used
memory sampled by pynvml on a GPU (or the tracker's live bytes per operation on a CPU), with the
training phases shaded."""

from __future__ import annotations

from pathlib import Path

from ..errors import MissingExtraError
from ..files import write_atomic
from ..units import BYTES_PER_MIB

PHASE_COLOURS = {"forward": "rgba(99,110,250,0.10)", "backward": "rgba(239,85,59,0.10)",
                 "optimizer": "rgba(0,204,150,0.12)"}


def write_timeline(samples: list[tuple[float, int, str]], axis: str, title: str, path: str | Path) -> None:
    """Write the timeline page atomically."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MissingExtraError("--timeline", "report", "plotly") from None
    figure = go.Figure(go.Scatter(x=[x for x, _, _ in samples], y=[b / BYTES_PER_MIB for _, b, _ in samples],
                                  mode="lines", name="memory"))
    start = None
    for index, (x, _, phase) in enumerate(samples):
        last = index == len(samples) - 1
        if start is None or phase != samples[start][2] or last:
            if start is not None and samples[start][2] in PHASE_COLOURS:
                figure.add_vrect(x0=samples[start][0], x1=x, fillcolor=PHASE_COLOURS[samples[start][2]],
                                 line_width=0, annotation_text=samples[start][2],
                                 annotation_position="top left")
            start = index
    figure.update_layout(title=title, xaxis_title=axis, yaxis_title="memory (MiB)")
    write_atomic(path, figure.to_html(include_plotlyjs=True, full_html=True))
