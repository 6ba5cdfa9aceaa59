"""PNG figures drawn with matplotlib (Agg backend: no display needed).

* `dirty_pages_figure`: dirty pages found at each bitmap sync, one bar group per migration
  attempt, log y axis (rounds of thousands and of 1 page are both visible), legend naming
  each migration and its verdict, stop&copy marked after the last round.
* `ovs_latency_figure`: one panel per datapath stage latency, all panels on the same
  log-spaced bins and the same x axis, medians marked.

Each function returns the Figure (tests read titles, labels, legends and bars from it) and
saves the PNG with a Title/Description text chunk saying what is drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stacklens.models.migration import MigrationAttempt

COLOURS = ["#2166ac", "#d6604d", "#4d9221", "#762a83", "#e08214", "#35978f"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def migration_label(a: MigrationAttempt) -> str:
    """How the legend names one attempt: VM, route, verdict."""
    route = f"{a.source_host} → {a.dest_host or '(no destination)'}"
    extra = " (rolled back)" if a.rolled_back else ""
    return f"{a.vm} {route}: {a.verdict}{extra}"


def dirty_pages_figure(attempts: list[MigrationAttempt], path: Path | None = None):
    """Dirty pages per round of each attempt (grouped bars, log scale), stop&copy marked."""
    from stacklens.views.terminal import fmt_duration
    plt = _pyplot()
    groups = [a for a in attempts if a.rounds]
    n_rounds = max((len(a.rounds) for a in groups), default=0)
    fig, ax = plt.subplots(figsize=(9, 5.4), dpi=100, layout="constrained")
    ax.set_title("Dirty pages found at each bitmap sync, per migration round")
    ax.set_xlabel("round (0 = first pass over memory, precopy)")
    ax.set_ylabel("dirty pages (4 KiB pages, log scale)")
    ax.set_yscale("log")
    width = 0.8 / max(1, len(groups))
    top = 1
    for g, a in enumerate(groups):
        colour = COLOURS[g % len(COLOURS)]
        x = np.arange(len(a.rounds)) + (g - (len(groups) - 1) / 2) * width
        # A round with 0 pages has no height on a log axis: drawn at 0.5, hatched, labelled 0.
        pages = np.array([r.dirty_pages for r in a.rounds], dtype=float)
        heights = np.where(pages > 0, pages, 0.5)
        bars = ax.bar(x, heights, width * 0.92, color=colour, label=migration_label(a), gid=f"attempt-{g}")
        for b, p in zip(bars, pages):
            b.set_gid(f"round-{g}")
            if p == 0:
                b.set_hatch("//")
                b.set_alpha(0.5)
        ax.bar_label(bars, [f"{int(p):,}" for p in pages], fontsize="x-small", padding=1)
        top = max(top, int(pages.max()))
        if a.stop_copy_start is not None:
            xs = len(a.rounds) - 0.5 + (g - (len(groups) - 1) / 2) * width
            down = fmt_duration(a.downtime_ns) if a.downtime_ns is not None else "?"
            ax.axvline(xs, color=colour, linestyle="--", linewidth=1.5,
                       label=f"stop&copy of {a.vm}: guest-visible downtime {down}")
            ax.annotate(f"stop&copy {down}", (xs, 0.5), xycoords=("data", "axes fraction"), xytext=(-6, 0),
                        textcoords="offset points", rotation=90, ha="center", va="center", fontsize="small",
                        color=colour)
    if groups:
        ax.set_xticks(range(n_rounds), ["precopy" if i == 0 else str(i) for i in range(n_rounds)])
        ax.set_xlim(-0.6, n_rounds + 0.1)
        ax.set_ylim(0.3, top * 4)
        ax.grid(axis="y", which="major", alpha=0.3)
        fig.legend(loc="outside lower center", fontsize="small", ncols=1)
    else:
        ax.text(0.5, 0.5, "no migration rounds in the store", ha="center", va="center", transform=ax.transAxes)
    if path is not None:
        _save(fig, path, "Dirty pages per migration round", {
            "migrations": [{"label": migration_label(a), "rounds": [r.dirty_pages for r in a.rounds],
                            "stop_copy_start_ns": a.stop_copy_start} for a in groups]})
    return fig


def ovs_latency_figure(stages: dict[str, tuple[str, np.ndarray]], path: Path | None = None,
                       title: str = "Open vSwitch datapath: latency of each stage per packet"):
    """`stages`: {column: (label, latencies in ns)}; one panel per stage with values, same
    bins and x axis for all, medians marked."""
    from stacklens.analyses.ovs_report import shared_log_bins
    from stacklens.views.terminal import fmt_duration
    plt = _pyplot()
    panels = [(col, label, np.asarray(v, dtype=float)) for col, (label, v) in stages.items() if len(v)]
    edges = shared_log_bins({col: v for col, _, v in panels})
    fig, axes = plt.subplots(max(1, len(panels)), 1, figsize=(8, 1.2 + 2.0 * max(1, len(panels))), dpi=100,
                             sharex=True, layout="constrained", squeeze=False)
    axes = axes[:, 0]
    fig.suptitle(title)
    for i, (col, label, v) in enumerate(panels):
        ax = axes[i]
        ax.hist(v / 1000, bins=edges / 1000, color=COLOURS[i % len(COLOURS)], edgecolor="white", gid=col,
                label=f"{v.size} packets")
        med = float(np.median(v))
        ax.axvline(med / 1000, color="black", linestyle="--", linewidth=1, label=f"median {fmt_duration(med)}")
        ax.set_xscale("log")
        ax.set_title(label, fontsize="medium")
        ax.set_ylabel("packets")
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(axis="x", which="major", alpha=0.3)
    if panels:
        axes[-1].set_xlabel("latency (µs, log scale; same bins in every panel)")
    else:
        axes[0].text(0.5, 0.5, "no per-packet OvS latencies in the store", ha="center", va="center",
                     transform=axes[0].transAxes)
    if path is not None:
        _save(fig, path, title, {"bin_edges_ns": edges.tolist(),
                                 "panels": [{"stage": col, "label": label, "packets": int(v.size)}
                                            for col, label, v in panels]})
    return fig


def _save(fig, path: Path, title: str, description: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Title": title, "Software": "stacklens (matplotlib)",
                                              "Description": json.dumps(description)})


def close(fig) -> None:
    _pyplot().close(fig)
