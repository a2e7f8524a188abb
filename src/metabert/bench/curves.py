"""Score against speed-up for several exit policies on one figure: layer speed-up for every
candidate setting (from one pass that records every exit) and measured batch-1 wall-clock speed-up
(eager PyTorch, interleaved with the full model) for a few of them."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from metabert.data.batching import Encoded, collate, model_inputs
from metabert.bench.timing import Variant, batch1_latencies
from metabert.eval.evaluate import candidate_policies, simulate
from metabert.eval.plots import pyplot
from metabert.engine.policies import ExitPolicy
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.eval.reports import ExitRun


def measured_speedups(model: MultiExitBert, data: Encoded, policies: list[ExitPolicy], repeats: int = 2,
                      progress: bool = True) -> list[float]:
    """Batch-1 wall-clock speed-up of each policy against the full model (eager): ratio of total
    latencies, each example timed ``repeats`` times (median), all variants interleaved
    (``metabert.bench.timing.batch1_latencies``)."""
    pad = model.tokenizer.pad_token_id
    singles = [model_inputs(collate(data, [i], pad)) for i in range(len(data))]
    runner = EagerRunner(model)
    group = [Variant(runner, None)] + [Variant(runner, p, suffix=f"_{k}") for k, p in enumerate(policies)]
    bar = tqdm(total=repeats * len(singles) * len(group), desc="timing", disable=not progress, unit="run")
    times, _ = batch1_latencies(group, singles, repeats, warmup=10, bar=bar)
    bar.close()
    full = np.median(times[group[0].name], 0).sum()
    return [float(full / np.median(times[v.name], 0).sum()) for v in group[1:]]


def policy_curves(model, logits, labels, metric, names: list[str], patience: int = 2, count: int = 16) -> dict:
    """Simulated sweep of every policy: name -> list of ``ExitRun``."""
    return {name: [simulate(logits, labels, metric, p) for p in candidate_policies(logits, name, patience, count)]
            for name in names}


def at_speedup(rows: list[ExitRun], target: float) -> float | None:
    """Score at a layer speed-up, interpolated linearly between the two nearest settings."""
    pts = sorted((r.layer_speedup, r.score) for r in rows)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= target <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return None


def plot_curves(curves: dict, measured: dict, metric: str, path, title: str = "") -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in curves.items():
        left.plot([r.layer_speedup for r in rows], [r.score for r in rows], marker=".", label=name)
        if name in measured:
            m = measured[name]
            right.plot(m["speedup"], m["score"], marker="o", label=name)
    left.set(xlabel="layer speed-up (L / mean exit layer)", ylabel=metric, title="score vs layer speed-up")
    right.set(xlabel="measured wall-clock speed-up, batch 1 (eager)", ylabel=metric,
              title="score vs measured speed-up")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
