"""PNG plots for the report: time against rows (log-log) and error against ε, one panel per query.

Each function takes plain series ``{system: [(x, y), …]}`` per query, so the
plotting knows nothing of the JSON files and can be tested on tiny inputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a benchmark machine

import matplotlib.pyplot as plt  # noqa: E402

Series = dict[str, list[tuple[float, float]]]
"""A line per system: ``{"coopdp (member)": [(rows, seconds), …]}``."""


def loglog_panels(
    panels: dict[str, Series],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    styles: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """One small log-log panel per query, shared legend; a small PNG (about 100 dpi).

    ``styles`` overrides a system's line (``{"oracle": {"color": "black", "linestyle": "--"}}``).
    """
    columns = min(4, max(1, len(panels)))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    handles: dict[str, object] = {}
    systems = sorted({system for series in panels.values() for system in series})
    colours = {system: f"C{index % 10}" for index, system in enumerate(systems)}  # one colour per system everywhere
    for axis, (name, series) in zip(axes.flat, panels.items(), strict=False):
        for system, points in sorted(series.items()):
            points = [(x, y) for x, y in points if y is not None and y > 0]  # a log axis shows no zero or gap
            if not points:
                continue
            xs, ys = zip(*sorted(points), strict=True)
            style = {"marker": "o", "markersize": 3, "color": colours[system], **(styles or {}).get(system, {})}
            (line,) = axis.plot(xs, ys, label=system, **style)
            handles.setdefault(system, line)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_title(name, fontsize=9)
        axis.tick_params(labelsize=7)
        axis.grid(True, which="major", linewidth=0.4, alpha=0.5)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    legend_rows = math.ceil(len(handles) / 4)
    figure.supxlabel(xlabel, fontsize=9, y=0.03 + 0.035 * legend_rows)
    figure.supylabel(ylabel, fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    figure.tight_layout(rect=(0, 0.07 + 0.035 * legend_rows, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


ORACLE_STYLE = {"color": "black", "linestyle": "--", "marker": "s"}


def error_styles(systems: set[str]) -> dict[str, dict[str, Any]]:
    """The oracle dashed black; a peer run with our bounds dotted, in its own colour."""
    styles: dict[str, dict[str, Any]] = {
        system: {"linestyle": ":"} for system in systems if system.endswith("(our bounds)")
    }
    if "oracle" in systems:
        styles["oracle"] = ORACLE_STYLE
    return styles
