"""Chart geometry for the dashboard's server-rendered SVG (no script, nothing fetched)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 600, 120


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    cls: str
    title: str  # the tooltip: bucket label and value


@dataclass(frozen=True)
class Chart:
    title: str
    bars: list[Bar]
    peak: str  # the value at the top of the scale, formatted
    first: str  # label of the first bucket
    last: str  # label of the last bucket
    has_data: bool
    width: int = WIDTH
    height: int = HEIGHT


def column_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    fmt: str = "{:.0f}",
) -> Chart:
    """Columns per bucket; several series (css class, values) are drawn over each other, first behind."""
    peak = max((v for _, values in series for v in values if v is not None), default=0.0)
    scale = HEIGHT / peak if peak > 0 else 0.0
    slot = WIDTH / max(1, len(labels))
    bars = []
    for cls, values in series:
        for i, value in enumerate(values):
            if value:
                h = max(1.0, value * scale)
                tip = f"{labels[i]}: {fmt.format(value)}"
                x, y, w = round(i * slot + slot * 0.1, 2), round(HEIGHT - h, 2), round(slot * 0.8, 2)
                bars.append(Bar(x, y, w, round(h, 2), cls, tip))
    return Chart(title, bars, fmt.format(peak), labels[0] if labels else "", labels[-1] if labels else "", bool(bars))


@dataclass(frozen=True)
class Row:
    label: str
    value: str
    y: float
    w: float


@dataclass(frozen=True)
class BarList:
    title: str
    rows: list[Row]
    height: int
    width: int = WIDTH


def bar_list(title: str, items: Sequence[tuple[str, float]], fmt: str = "{:.0f}") -> BarList:
    """Horizontal bars, one row per item (the top-models chart)."""
    peak = max((v for _, v in items), default=0.0)
    usable = WIDTH - 260  # room on the left for the label, on the right for the value
    rows = [
        Row(label[:40], fmt.format(value), 8 + i * 26, max(1.0, usable * value / peak) if peak else 1.0)
        for i, (label, value) in enumerate(items)
    ]
    return BarList(title, rows, 16 + 26 * len(rows))
