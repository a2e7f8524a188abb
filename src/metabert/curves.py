"""Score against speed-up for several exit policies on one figure: layer speed-up for every
candidate setting (from one pass that records every exit) and measured batch-1 wall-clock speed-up
(eager PyTorch, interleaved with the full model) for a few of them."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from metabert.batching import Encoded, collate, model_inputs
from metabert.evaluation import _pyplot, candidate_policies, simulate
from metabert.exits import ExitPolicy
from metabert import engine
from metabert.modeling import EagerRunner, MultiExitBert


def measured_speedups(model: MultiExitBert, data: Encoded, policies: list[ExitPolicy], repeats: int = 2,
                      progress: bool = True) -> list[float]:
    """Batch-1 wall-clock speed-up of each policy against the full model: ratio of total latencies,
    each example timed ``repeats`` times (median) with the full model run right beside it."""
    pad = model.tokenizer.pad_token_id
    singles = [model_inputs(collate(data, [i], pad)) for i in range(len(data))]
    for inputs in singles[:10]:
        with torch.inference_mode():
            model.full_logits(**inputs)
    runner = EagerRunner(model)
    out = []
    for policy in tqdm(policies, desc="timing", disable=not progress):
        full_t, early_t = np.zeros((repeats, len(singles))), np.zeros((repeats, len(singles)))
        for r in range(repeats):
            for i, inputs in enumerate(singles):
                start = time.perf_counter()
                with torch.inference_mode():
                    model.full_logits(**inputs)
                mid = time.perf_counter()
                engine.run(runner, inputs, policy)
                end = time.perf_counter()
                full_t[r, i], early_t[r, i] = mid - start, end - mid
        out.append(float(np.median(full_t, 0).sum() / np.median(early_t, 0).sum()))
    return out


def policy_curves(model, logits, labels, metric, names: list[str], patience: int = 2, count: int = 16) -> dict:
    """Simulated sweep of every policy: name -> list of results."""
    return {name: [simulate(logits, labels, metric, p) for p in candidate_policies(logits, name, patience, count)]
            for name in names}


def at_speedup(rows: list[dict], target: float) -> float | None:
    """Score at a layer speed-up, interpolated linearly between the two nearest settings."""
    pts = sorted((r["layer_speedup"], r["score"]) for r in rows)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= target <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return None


def plot_curves(curves: dict, measured: dict, metric: str, path, title: str = "") -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in curves.items():
        left.plot([r["layer_speedup"] for r in rows], [r["score"] for r in rows], marker=".", label=name)
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
