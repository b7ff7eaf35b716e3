"""The comparison as a PNG: one panel per measurement, one bar per system (matplotlib, bench-only)."""

from __future__ import annotations

from pathlib import Path

COLOURS = {
    "direct": "#9e9e9e",
    "bare": "#4c78a8",
    "sluice": "#f58518",
    "litellm": "#54a24b",
    "sluice-responses": "#e45756",
    "sluice-messages": "#b279a2",
    "sluice-from-anthropic": "#9d755d",
}
# (panel title, [(row key, bar label)], unit); the mock alone is ~10x any gateway, so the
# throughput panel leaves it out (its figures go in the title) to keep the gateways readable.
PANELS = [
    ("Non-streaming throughput, gateways (wrk)", [("c1_rps", "c=1"), ("c10_rps", "c=10")], "requests/s"),
    ("Non-streaming latency, c=10", [("c10_p50", "p50"), ("c10_p99", "p99")], "ms"),
    ("Streaming time to first event", [("ttfb_p50", "p50"), ("ttfb_p99", "p99")], "ms"),
    ("Event forwarding lag", [("lag_p50", "p50"), ("lag_p99", "p99")], "ms"),
    ("RSS, all processes", [("rss_idle", "idle"), ("rss_streams", "open streams")], "MiB"),
]


def write_chart(path: Path, systems: dict[str, dict[str, float | None]], verdicts: list[str], title: str) -> None:
    """`systems`: name -> {row key: value or None}; `verdicts`: the target lines, printed in the last panel."""
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (panel, rows, unit) in zip(axes.flat, PANELS, strict=False):
        shown = systems
        if rows[0][0] == "c1_rps" and "direct" in systems:
            shown = {name: values for name, values in systems.items() if name != "direct"}
            direct = systems["direct"]
            panel += f"\nmock alone: {direct.get('c1_rps') or 0:.0f} / {direct.get('c10_rps') or 0:.0f} req/s"
        _bars(ax, shown, rows)
        ax.set_title(panel, fontsize=10)
        ax.set_ylabel(unit)
    notes = axes.flat[-1]
    notes.axis("off")
    notes.text(0, 1, "Targets (ratios from this run)\n\n" + "\n".join(verdicts), va="top", family="monospace",
               fontsize=7.5)  # fmt: skip
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _bars(ax, systems: dict[str, dict[str, float | None]], rows: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    names = list(systems)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [systems[name].get(key) for key, _ in rows]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(rows))]
        heights = [v or 0 for v in values]
        bars = ax.bar(xs, heights, width, label=name, color=COLOURS.get(name))
        for bar, value in zip(bars, values, strict=True):
            label = "n/a" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.2f}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 1), textcoords="offset points")  # fmt: skip
    ax.set_xticks(range(len(rows)), [label for _, label in rows])
    ax.legend(fontsize=8)
