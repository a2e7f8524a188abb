"""Plots of an evaluation: the score of every exit (MetaBERT's Fig. 2) beside early exit's score
against layer speed-up, with the calibrated policy marked where there is one."""

from __future__ import annotations

from pathlib import Path

from metabert.eval.reports import EarlyExitReport, ExitRun


def _draw(report: EarlyExitReport, left, right) -> None:
    """Score of every exit (Fig. 2 style) on ``left``, score against layer speed-up on ``right``."""
    layers = [e["layer"] for e in report.per_exit]
    left.plot(layers, [e["score"] for e in report.per_exit], marker="o")
    left.set(xlabel="exit (layer)", ylabel=report.metric, xticks=layers)
    runs = report.sweep or ((report.timed,) if report.timed else ())
    if runs:
        right.plot([r.layer_speedup for r in runs], [r.score for r in runs], marker="o")
    right.set(xlabel="layer speed-up (L / mean exit layer)", ylabel=report.metric)
    for ax in (left, right):
        ax.grid(alpha=0.3)


def pyplot():
    """matplotlib's pyplot, drawing to files (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: EarlyExitReport, path: str | Path, title: str = "", marked: ExitRun | None = None,
                marked_label: str = "") -> None:
    """Two panels: score of every exit, and early exit's score against layer speed-up (a sweep's
    policy and thresholds). ``marked``: one run shown on the sweep as a star with ``marked_label``
    (the calibrated threshold the checkpoint will run with)."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _draw(report, left, right)
    if report.sweep or report.timed:
        right.lines[0].set_label(f"{(report.sweep or (report.timed,))[0].policy} early exit, threshold sweep")
    if marked is not None:
        right.plot([marked.layer_speedup], [marked.score], marker="*", markersize=16, color="C3", linestyle="none",
                   label=marked_label or f"γ={marked.threshold:g}")
        right.annotate(f"{marked.layer_speedup:.2f}x, {marked.score:.2f}", (marked.layer_speedup, marked.score),
                       xytext=(8, -14), textcoords="offset points", fontsize=8, color="C3")
    if right.lines:
        right.legend(fontsize=8, loc="lower left")
    left.set_title("score of every exit")
    right.set_title("early exit: score against layer speed-up")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grid(reports: list[EarlyExitReport], names: list[str], path: str | Path) -> None:
    """One row per report, the two panels of ``plot_report`` each."""
    plt = pyplot()
    fig, axes = plt.subplots(len(reports), 2, figsize=(10, 3.2 * len(reports)), squeeze=False)
    for (left, right), report, name in zip(axes, reports, names):
        _draw(report, left, right)
        left.set_title(f"{name}: score of every exit")
        right.set_title(f"{name}: entropy early exit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


