"""PNG plots of the benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def capacity(rows: list[dict], labels: dict[str, str], path: Path, subtitle: str) -> None:
    """Healthy streams and p99 latency per case and stream level, one bar per run series."""
    groups = sorted({(r["case"], r["streams"]) for r in rows}, key=lambda g: (g[1], list(labels).index(g[0])))
    runs = sorted({r["run"] for r in rows})
    by = {(r["case"], r["streams"], r["run"]): r for r in rows}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / len(runs)
    for j, run in enumerate(runs):
        xs = [i + (j - (len(runs) - 1) / 2) * width for i in range(len(groups))]
        got = [by.get((case, level, run)) for case, level in groups]
        healthy = [100 * r["healthy"] / r["streams"] if r else 0 for r in got]
        p99 = [(r["p99"] or 0) if r else 0 for r in got]
        for ax, values, text in ((left, healthy, "{:.0f}"), (right, p99, "{:.0f}")):
            bars = ax.bar(xs, values, width, label=f"run {run}")
            ax.bar_label(bars, [text.format(v) for v in values], fontsize=6)
    names = [textwrap.fill(f"{labels[case]}, {level:,}", 18) for case, level in groups]
    for ax, title, unit in ((left, "healthy streams (on cadence)", "% of streams opened"),
                            (right, "p99 latency (event ts to receipt)", "ms")):
        ax.set_xticks(range(len(groups)), names, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend(fontsize=7)
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


def fleet(rows: list[dict], targets: dict[int, float], path: Path, subtitle: str) -> None:
    """Cold deploys (left) and no-op re-runs by fleet size (right), wall time; a red dashed mark is a target
    (`targets`: hosts -> seconds, for the no-op runs)."""
    cold = [r for r in rows if r["kind"] == "cold"]
    noop = [r for r in rows if r["kind"] == "noop"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, group, color in ((left, cold, "tab:blue"), (right, noop, "tab:green")):
        labels = [textwrap.fill(r["run"], 18) for r in group]
        bars = ax.bar(range(len(group)), [r["seconds"] for r in group], color=color)
        ax.bar_label(bars, [f"{r['seconds']:.1f} s" for r in group], fontsize=8)
        ax.set_xticks(range(len(group)), labels, fontsize=8)
        ax.set_ylabel("seconds (wall time of `pyinfra -y ... deploy.py`)", fontsize=8)
    for i, r in enumerate(noop):
        if r["hosts"] in targets:
            right.plot([i - 0.4, i + 0.4], [targets[r["hosts"]]] * 2, color="tab:red", linestyle="--", linewidth=1.5)
            right.text(i + 0.42, targets[r["hosts"]], f"target <= {targets[r['hosts']]:.1f} s", color="tab:red",
                       fontsize=7, va="center")
    left.set_title("cold deploys (fresh hosts, apt cache on the bridge)", fontsize=9)
    right.set_title("no-op re-runs (median of 3)", fontsize=9)
    fig.suptitle(f"Fleet deploys\n{subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def idle(rows: list[dict], path: Path, subtitle: str, target_kib: float, limit_s: float) -> None:
    """Memory per idle stream (nginx RSS and RssAnon, the app's RSS) per nginx config, and the distribution of the
    gaps between heartbeats."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    series = [("nginx RSS", "nginx_rss_kib"), ("nginx RssAnon", "nginx_anon_kib"), ("app RSS", "app_rss_kib")]
    width = 0.8 / len(series)
    for j, (name, key) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(rows))]
        values = [r[key] or 0 for r in rows]
        bars = left.bar(xs, values, width, label=name)
        left.bar_label(bars, [f"{v:.1f}" for v in values], fontsize=7)
    left.axhline(target_kib, color="tab:red", linestyle="--", linewidth=1)
    left.text(len(rows) - 0.5, target_kib, f"nginx target <= {target_kib:.0f} KiB", color="tab:red", fontsize=7,
              ha="right", va="bottom")
    left.set_xticks(range(len(rows)), [textwrap.fill(r["label"], 22) for r in rows], fontsize=8)
    left.set_ylabel("KiB per held stream")
    left.set_title("memory per idle stream")
    left.legend(fontsize=8)
    for r in rows:
        hist = sorted((int(b), n) for b, n in r["gap_hist_ms"].items())
        total = sum(n for _, n in hist) or 1
        right.plot([b / 1000 for b, _ in hist], [100 * n / total for _, n in hist], drawstyle="steps-post",
                   marker=".", label=f"{r['label']}: {r['on_time_pct']:.2f} % on time", linewidth=1)
    right.axvline(limit_s, color="tab:red", linestyle="--", linewidth=1)
    right.text(limit_s, 0, f" on-time limit {limit_s:.0f} s", color="tab:red", fontsize=7, va="bottom")
    right.set_yscale("log")
    right.set_xlabel("gap between heartbeats, s (100 ms bins)")
    right.set_ylabel("% of gaps")
    right.set_title("heartbeat gaps")
    right.legend(fontsize=7)
    fig.suptitle(f"Idle SSE streams, heartbeat only\n{subtitle}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
