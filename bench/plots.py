"""PNG plots for the benchmarks (matplotlib, headless): what a table cannot show at a glance.

* ``simulation``: calls in progress, warm capacity and pods over one call trace, one panel per
  policy side by side (voicepool, the HPA-style Deployment, a fixed buffer), same axes;
* ``ttfw_histogram``: time to first word per turn, with the 800 ms objective as a line.

The benches call these through a small hook; everything about drawing lives here, so the
benches' simulation and measurement code stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

OUT_DIR = Path(__file__).resolve().parent / "out"
TTFW_GOAL_MS = 800.0


class _Pod(Protocol):
    calls: set[int]


class _Cluster(Protocol):
    t: int
    pods: Mapping[str, Any]
    queue: Sequence[int]

    def accepting(self, pod: Any) -> bool: ...


@dataclass
class Timeline:
    """Per-second samples of one simulated run (taken after the policy acted)."""

    spp: int
    warmup: int
    t: list[float] = field(default_factory=list)  # minutes into the measured window
    calls: list[int] = field(default_factory=list)
    warm: list[int] = field(default_factory=list)  # free slots on ready, accepting pods
    pods: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)

    def __call__(self, c: _Cluster) -> None:
        if c.t < self.warmup:
            return
        pods = list(c.pods.values())
        self.t.append((c.t - self.warmup) / 60)
        self.calls.append(sum(len(p.calls) for p in pods))
        self.warm.append(sum(self.spp - len(p.calls) for p in pods if c.accepting(p)))
        self.pods.append(len(pods))
        self.waiting.append(len(c.queue))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: CI and headless machines
    import matplotlib.pyplot as plt

    return plt


def simulation(
    timelines: Mapping[str, Timeline], path: Path, title: str, notes: Mapping[str, str]
) -> Path:
    """One panel per policy; calls and warm capacity in sessions, pods on the right axis."""
    plt = _pyplot()
    n = len(timelines)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), sharey=True, squeeze=False)
    top = max(max(tl.calls + tl.warm + [1]) for tl in timelines.values())
    pods_top = max(max([*tl.pods, 1]) for tl in timelines.values())
    twins = []
    for ax, (label, tl) in zip(axes[0], timelines.items(), strict=True):
        ax.plot(tl.t, tl.calls, color="tab:blue", lw=1.2, label="calls in progress")
        ax.fill_between(tl.t, tl.calls, step=None, color="tab:blue", alpha=0.15)
        ax.plot(tl.t, tl.warm, color="tab:green", lw=1.0, label="warm capacity (free slots)")
        if any(tl.waiting):
            ax.plot(tl.t, tl.waiting, color="tab:red", lw=1.0, label="callers waiting")
        twin = ax.twinx()
        twin.step(tl.t, tl.pods, where="post", color="tab:gray", lw=1.0, label="pods")
        twin.set_ylim(0, pods_top * 1.1)
        twins.append(twin)
        ax.set_ylim(0, top * 1.1)
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("minutes into the trace")
        ax.grid(alpha=0.3)
        if label in notes:
            ax.text(
                0.02, 0.97, notes[label], transform=ax.transAxes, va="top", fontsize=8,
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8},
            )  # fmt: skip
    axes[0][0].set_ylabel("sessions")
    twins[-1].set_ylabel("pods")
    for twin in twins[:-1]:
        twin.tick_params(labelright=False)
    legend: dict[str, Any] = {}
    for a in [*axes[0], *twins]:  # every series that appears in any panel, once
        for handle, name in zip(*a.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=5, fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _save(fig, plt, path)


def ttfw_histogram(runs: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Histogram of per-turn time to first word (ms), one colour per run, the 800 ms line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    values = [v for vs in runs.values() for v in vs]
    hi = max([*values, TTFW_GOAL_MS * 1.25])
    bins = [hi * i / 40 for i in range(41)]
    for label, vs in runs.items():
        if vs:
            under = sum(1 for v in vs if v <= TTFW_GOAL_MS) / len(vs)
            ax.hist(vs, bins=bins, alpha=0.55, label=f"{label} (n={len(vs)}, {under:.0%} <= 800)")
    ax.axvline(TTFW_GOAL_MS, color="tab:red", ls="--", lw=1.5, label="800 ms objective")
    ax.set_xlabel("time to first word, caller side (ms)")
    ax.set_ylabel("turns")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def traced_runs(
    make_cluster: Callable[[str], Any],
    policies: Mapping[str, Callable[[], Any]],
    spp: int,
    warmup: int,
) -> dict[str, tuple[Timeline, Any]]:
    """Replay the trace once per policy with a ``Timeline`` observing every second."""
    out: dict[str, tuple[Timeline, Any]] = {}
    for label, make_policy in policies.items():
        cluster = make_cluster(label)
        timeline = Timeline(spp, warmup)
        cluster.observer = timeline
        out[label] = (timeline, cluster.run(make_policy()))
    return out
