"""PNG plots of the benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def capacity(rows: list[dict], labels: dict[str, str], path: Path, subtitle: str) -> None:
    """Healthy streams and p99 latency per case, one bar group per stream level."""
    cases = [c for c in labels if any(r["case"] == c for r in rows)]
    levels = sorted({r["streams"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / len(levels)
    for j, level in enumerate(levels):
        by_case = {r["case"]: r for r in rows if r["streams"] == level}
        xs = [i + (j - (len(levels) - 1) / 2) * width for i in range(len(cases))]
        healthy = [100 * by_case[c]["healthy"] / level if c in by_case else 0 for c in cases]
        p99 = [by_case[c]["p99"] or 0 if c in by_case else 0 for c in cases]
        for ax, values, text in ((left, healthy, "{:.0f} %"), (right, p99, "{:.1f}")):
            bars = ax.bar(xs, values, width, label=f"{level:,} streams")
            ax.bar_label(bars, [text.format(v) for v in values], fontsize=7)
    for ax, title, unit in ((left, "healthy streams", "% of streams opened"),
                            (right, "p99 latency (event ts to receipt)", "ms")):
        ax.set_xticks(range(len(cases)), [textwrap.fill(labels[c], 16) for c in cases], fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    left.set_ylim(0, 110)
    fig.suptitle(f"SSE capacity, one event per second per stream\n{subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def deploy(rows: list[tuple[str, float]], targets: dict[str, float], path: Path, subtitle: str) -> None:
    """Wall time of each deploy run; a red mark on a bar is its target."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    names = [name for name, _ in rows]
    ax.barh(names, [seconds for _, seconds in rows], color="tab:blue")
    for i, (name, seconds) in enumerate(rows):
        ax.text(seconds, i, f" {seconds:.1f} s", va="center", fontsize=8)
        if name in targets:
            ax.plot([targets[name]] * 2, [i - 0.45, i + 0.45], color="tab:red", linestyle="--", linewidth=1.5)
            ax.text(targets[name], i - 0.45, f" target <= {targets[name]:.1f} s", color="tab:red", fontsize=7,
                    va="bottom")
    ax.invert_yaxis()
    ax.set_xlabel("seconds (wall time of `pyinfra -y ... deploy.py`)")
    ax.set_title(f"Deploy speed\n{subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
