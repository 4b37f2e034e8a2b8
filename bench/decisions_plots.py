"""The decision benchmark's plots (matplotlib, the `bench` extra), from the results document:

- decisions.png: decisions/s against offered SYNs/s for every path of the sweep (log-log; a
  hollow marker where SYNs were lost, the diagonal where every SYN is decided);
- latency-cdf.png: the CDF of connect times, kernel-only against portguard;
- events.png: decided against written and dropped per log output, at portguard's highest rate,
  with the log process's capacity alone beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.decisions_report import (
    Document,
    capacity_summary,
    highest_without_loss,
    output_totals,
    rate_summary,
)
from bench.measure import cdf

NAMES = {"decisions": "decisions.png", "latency": "latency-cdf.png", "events": "events.png"}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def decisions_plot(doc: Document, path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 5.5))
    highest = 1000.0
    for name, points in doc["sweep"].items():
        xs = [p["offered"] for p in points]
        ys = [p["decisions_per_s"] for p in points]
        (line,) = axes.plot(xs, ys, "-", label=name)
        for x, y, p in zip(xs, ys, points, strict=True):
            face = line.get_color() if p["keeps_up"] else "white"
            axes.plot([x], [y], "o", color=line.get_color(), markerfacecolor=face)
        best = highest_without_loss(points)
        if best is not None:
            axes.plot([best["offered"]], [best["decisions_per_s"]], "*", markersize=14,
                      color=line.get_color())  # fmt: skip
        highest = max(highest, *xs, *ys)
    axes.plot([500, highest], [500, highest], ":", color="grey", label="every SYN decided")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("offered SYNs/s (new connections, 4 clients)")
    axes.set_ylabel("decisions/s (SYNs that reached the internet host)")
    axes.set_title(
        "Decision rate against offered rate (hollow: SYNs lost; star: the highest "
        "rate with none lost)",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    _save(plt, figure, path)


def latency_plot(doc: Document, path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 5))
    for name, rounds in doc["latency"].items():
        pooled = [us for samples in rounds for us in samples]
        points = cdf(pooled, 400)
        axes.step([x for x, _ in points], [y for _, y in points], where="post",
                  label=f"{name} ({len(pooled)} connects)")  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("connect time, µs (SYN to established, business customer to internet)")
    axes.set_ylabel("fraction of connects")
    axes.set_title("Connect latency CDF")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    _save(plt, figure, path)


def events_plot(doc: Document, path: Path) -> None:
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5), width_ratios=[3, 2])
    labels: list[str] = []
    bars: dict[str, list[int]] = {"decided": [], "decision events at the output": [],
                                  "all events written": [], "dropped": []}  # fmt: skip
    for name, rounds in doc["events"]["setups"].items():
        totals = output_totals(rounds)
        for output, counts in totals["outputs"].items():
            labels.append(f"{name.split(', ')[-1]}\n→ {output}")
            bars["decided"].append(totals["decided"])
            bars["decision events at the output"].append(counts["decisions"])
            bars["all events written"].append(counts["written"])
            bars["dropped"].append(counts["dropped"] + totals["handoff_dropped"])
    width = 0.2
    for offset, (kind, values) in enumerate(bars.items()):
        xs = [i + (offset - 1.5) * width for i in range(len(labels))]
        drawn = left.bar(xs, values, width, label=kind)
        if kind == "dropped":
            left.bar_label(drawn, fmt="{:,.0f}", fontsize=8)
    left.set_xticks(range(len(labels)), labels, fontsize=8)
    left.set_ylabel("events (all rounds)")
    left.set_title(f"At {doc['events']['rate']:,.0f} SYNs/s offered")
    left.set_ylim(top=max(max(v, default=0) for v in bars.values()) * 1.3 or 1)
    left.legend(fontsize=8, loc="upper left", ncol=2)
    names = list(doc.get("capacity", {}))
    rates = [capacity_summary(doc["capacity"][n])["highest"] for n in names]
    right.bar(names, rates, color="tab:green", label="log process alone: no event dropped")
    right.axhline(doc["events"]["rate"], color="tab:red", linestyle="--",
                  label="portguard's highest decision rate")  # fmt: skip
    floor = rate_summary(doc).get(doc["roles"]["floor"], {}).get("highest")
    if floor:
        label = "the floor's highest decision rate"
        right.axhline(floor, color="tab:orange", linestyle=":", label=label)
    right.set_ylabel("decision events/s (the highest rate with none dropped)")
    right.set_title("Log process capacity")
    right.legend(fontsize=8)
    _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw(doc: Document, directory: Path) -> list[Path]:
    """Every plot the document has the data for, into `directory`; the files written."""
    made = []
    for key, plot in (("sweep", decisions_plot), ("latency", latency_plot),
                      ("events", events_plot)):  # fmt: skip
        if doc.get(key):
            path = directory / NAMES["decisions" if key == "sweep" else key]
            plot(doc, path)
            made.append(path)
    return made
