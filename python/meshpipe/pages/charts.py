"""Charts drawn on the server as SVG: no script, no chart library, readable by screen readers.

:func:`throughput_chart` draws throughput over time as a polyline over two labelled axes. The
SVG carries a ``<title>`` and a ``<desc>`` (what the chart shows, in words: points, peak,
mean) named by ``aria-labelledby``; each point has its own ``<title>``, which browsers show as
a tooltip. Every text in it is escaped; colours come from the page's CSS (classes), as the
Content-Security-Policy allows no inline style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from markupsafe import Markup, escape

from meshpipe.pages.format import duration_text, rate_text

WIDTH: Final = 640
HEIGHT: Final = 240
_LEFT: Final = 76
_RIGHT: Final = 16
_TOP: Final = 14
_BOTTOM: Final = 42


def nice_step(span: float, ticks: int = 5) -> float:
    """A round step (1, 2 or 5 × 10ⁿ) that divides ``span`` into about ``ticks`` parts."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _seconds_label(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else duration_text(seconds)


def throughput_chart(
    points: Sequence[tuple[float, float]],
    *,
    chart_id: str,
    title: str,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Markup:
    """An SVG of ``points`` (seconds since the start, bytes per second), ``chart_id`` making
    its element ids unique in the page. With no points, a frame that says so."""
    ident = escape(chart_id)
    plot_width = width - _LEFT - _RIGHT
    plot_height = height - _TOP - _BOTTOM
    if points:
        rates = [rate for _, rate in points]
        peak, mean = max(rates), sum(rates) / len(rates)
        description = (
            f"{len(points)} points over {duration_text(points[-1][0])}; "
            f"peak {rate_text(peak)}, mean {rate_text(mean)}"
        )
    else:
        description = "no throughput recorded yet"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" aria-labelledby="{ident}-title {ident}-desc">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(description)}</desc>',
        f'<rect class="chart-frame" x="{_LEFT}" y="{_TOP}" width="{plot_width}" '
        f'height="{plot_height}"/>',
    ]
    if not points:
        parts.append(
            f'<text class="chart-empty" x="{_LEFT + plot_width / 2}" '
            f'y="{_TOP + plot_height / 2}" text-anchor="middle">{escape(description)}</text>'
        )
        parts.append("</svg>")
        return Markup("".join(parts))

    x_max = max(points[-1][0], max(x for x, _ in points), 1e-3)
    x_step = nice_step(x_max)
    x_top = x_step * math.ceil(x_max / x_step)
    y_step = nice_step(peak or 1.0, 4)
    y_top = y_step * math.ceil((peak or 1.0) / y_step)

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            round(_LEFT + plot_width * x / x_top, 1),
            round(_TOP + plot_height * (1 - y / y_top), 1),
        )

    for index in range(round(y_top / y_step) + 1):
        value = index * y_step
        _, y = at(0, value)
        parts.append(
            f'<line class="chart-grid" x1="{_LEFT}" x2="{_LEFT + plot_width}" y1="{y}" y2="{y}"/>'
            f'<text class="chart-tick" x="{_LEFT - 6}" y="{y + 4}" text-anchor="end">'
            f"{escape(rate_text(value))}</text>"
        )
    for index in range(round(x_top / x_step) + 1):
        value = index * x_step
        x, _ = at(value, 0)
        parts.append(
            f'<text class="chart-tick" x="{x}" y="{_TOP + plot_height + 16}" '
            f'text-anchor="middle">{escape(_seconds_label(round(value, 6)))}</text>'
        )
    parts.append(
        f'<text class="chart-axis" x="{_LEFT + plot_width / 2}" y="{height - 6}" '
        'text-anchor="middle">time since start</text>'
    )
    coordinates = [at(x, y) for x, y in points]
    parts.append(
        '<polyline class="chart-line" points="'
        + " ".join(f"{x},{y}" for x, y in coordinates)
        + '"/>'
    )
    for (x, y), (seconds, rate) in zip(coordinates, points, strict=True):
        parts.append(
            f'<circle class="chart-point" cx="{x}" cy="{y}" r="3"><title>'
            f"{escape(_seconds_label(round(seconds, 3)))}: {escape(rate_text(rate))}"
            "</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


__all__ = ["HEIGHT", "WIDTH", "nice_step", "throughput_chart"]
