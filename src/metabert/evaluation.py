"""Scoring every exit, and entropy early exit at one or many thresholds."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from metabert import metrics
from metabert.batching import Encoded, eval_batches, iterate, model_inputs
from metabert.exits import entropy, exit_layers_from_logits
from metabert.modeling import EarlyExitOutput, MultiExitBert

log = logging.getLogger(__name__)


@torch.no_grad()
def all_exit_logits(model: MultiExitBert, data: Encoded, batch_size: int = 64, progress: bool = False):
    """Every exit's logits for every example, in the dataset's order: (L, N, C)."""
    model.eval()
    out = torch.empty(model.num_layers, len(data), model.config.num_labels)
    pad = model.tokenizer.pad_token_id
    batches = eval_batches(data, batch_size)
    for batch in tqdm(iterate(data, batches, pad), total=len(batches), desc="all exits", disable=not progress):
        out[:, batch["index"]] = model(**model_inputs(batch)).float()
    return out


@torch.no_grad()
def run_early_exit(model: MultiExitBert, data: Encoded, threshold: float, batch_size: int = 64):
    """Real early-exit inference over the dataset; returns (output in dataset order, seconds)."""
    model.eval()
    logits = torch.empty(len(data), model.config.num_labels)
    layers = torch.empty(len(data), dtype=torch.long)
    pad = model.tokenizer.pad_token_id
    batches = [b for b in iterate(data, eval_batches(data, batch_size), pad)]  # tokenisation/padding apart
    start = time.perf_counter()
    for batch in batches:
        result = model.early_exit(**model_inputs(batch), threshold=threshold)
        logits[batch["index"]] = result.logits.float()
        layers[batch["index"]] = result.exit_layer
    return EarlyExitOutput(logits, layers), time.perf_counter() - start


@torch.no_grad()
def time_full_model(model: MultiExitBert, data: Encoded, batch_size: int = 64) -> float:
    """Seconds for the plain classifier: all layers, last exit only (the baseline to compare with)."""
    model.eval()
    pad = model.tokenizer.pad_token_id
    batches = [b for b in iterate(data, eval_batches(data, batch_size), pad)]
    start = time.perf_counter()
    for batch in batches:
        inputs = model_inputs(batch)
        states = model.hidden_states(**inputs)
        model.exits[-1](model.pool(states[-1], inputs["attention_mask"]))
    return time.perf_counter() - start


def per_exit_scores(logits: torch.Tensor, labels: list[int], metric: str) -> list[dict]:
    return [
        {"layer": i + 1, **metrics.compute(metric, logits[i].argmax(-1).tolist(), labels)}
        for i in range(logits.shape[0])
    ]


def auto_thresholds(logits: torch.Tensor, count: int = 16) -> list[float]:
    """Thresholds at evenly spaced quantiles of the entropies of exits 1..L-1, plus 0 (never exit
    early) and one above every entropy (all exit at layer 1): a sweep that spans 1x to Lx."""
    ent = entropy(logits[:-1]).flatten()
    qs = torch.quantile(ent, torch.linspace(0, 1, count)).tolist()
    top = float(ent.max()) * 1.001 + 1e-6
    return sorted({0.0, *(float(f"{q:.4g}") for q in qs[1:-1]), float(f"{top:.4g}")})


def simulate(logits: torch.Tensor, labels: list[int], metric: str, threshold: float) -> dict:
    """Entropy early exit at ``threshold`` computed from all exits' logits (same rule as the model)."""
    num_layers = logits.shape[0]
    layers = exit_layers_from_logits(logits, threshold)
    chosen = logits[layers - 1, torch.arange(logits.shape[1])]
    return summarise(num_layers, chosen.argmax(-1).tolist(), layers, labels, metric, threshold)


def summarise(num_layers, predictions, layers: torch.Tensor, labels, metric, threshold) -> dict:
    mean_layer = float(layers.float().mean())
    counts = torch.bincount(layers, minlength=num_layers + 1)[1:].tolist()
    return {
        "threshold": threshold,
        **metrics.compute(metric, predictions, labels),
        "mean_exit_layer": mean_layer,
        "layer_speedup": num_layers / mean_layer,
        "exit_counts": counts,
    }


def evaluate(
    model: MultiExitBert,
    data: Encoded,
    metric: str,
    threshold: float | None = None,
    thresholds: list[float] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Score of every exit (MetaBERT Fig. 2) and entropy early exit.

    With ``threshold``: a real early-exit run (rows leave the batch as they exit), timed against
    the full model over the same batches. With ``thresholds``: a sweep, computed from one pass that
    records every exit (identical decisions, no timing).
    """
    logits = all_exit_logits(model, data, batch_size, progress)
    report = {
        "metric": metric,
        "num_layers": model.num_layers,
        "num_examples": len(data),
        "per_exit": per_exit_scores(logits, data.labels, metric),
    }
    if thresholds == "auto":
        thresholds = auto_thresholds(logits)
    if thresholds:
        report["early_exit"] = [simulate(logits, data.labels, metric, g) for g in thresholds]
    elif threshold is not None:
        output, seconds = run_early_exit(model, data, threshold, batch_size)
        full_seconds = time_full_model(model, data, batch_size)
        result = summarise(
            model.num_layers, output.predictions.tolist(), output.exit_layer, data.labels, metric, threshold
        )
        result.update(
            wall_time_s=seconds,
            full_model_wall_time_s=full_seconds,
            wall_speedup=full_seconds / seconds,
            batch_size=batch_size,
        )
        report["early_exit"] = result
    return report


def write_sweep_csv(report: dict, path: str | Path) -> None:
    rows = report["early_exit"]
    fields = ["threshold", "score", "mean_exit_layer", "layer_speedup"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields + [f"exits_at_{i + 1}" for i in range(report["num_layers"])])
        for row in rows:
            writer.writerow([f"{row[f]:.6g}" for f in fields] + row["exit_counts"])


def _draw(report: dict, left, right) -> None:
    """Score of every exit (Fig. 2 style) on ``left``, score against layer speed-up on ``right``."""
    layers = [e["layer"] for e in report["per_exit"]]
    left.plot(layers, [e["score"] for e in report["per_exit"]], marker="o")
    left.set(xlabel="exit (layer)", ylabel=report["metric"], xticks=layers)
    sweep = report.get("early_exit") or []
    sweep = sweep if isinstance(sweep, list) else [sweep]
    if sweep:
        right.plot([r["layer_speedup"] for r in sweep], [r["score"] for r in sweep], marker="o")
    right.set(xlabel="layer speed-up (L / mean exit layer)", ylabel=report["metric"])
    for ax in (left, right):
        ax.grid(alpha=0.3)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: dict, path: str | Path, title: str = "") -> None:
    """Two panels: score of every exit and entropy early exit's score against layer speed-up."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _draw(report, left, right)
    left.set_title("score of every exit")
    right.set_title("entropy early exit (threshold sweep)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grid(reports: list[dict], names: list[str], path: str | Path) -> None:
    """One row per report, the two panels of ``plot_report`` each."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(reports), 2, figsize=(10, 3.2 * len(reports)), squeeze=False)
    for (left, right), report, name in zip(axes, reports, names):
        _draw(report, left, right)
        left.set_title(f"{name}: score of every exit")
        right.set_title(f"{name}: entropy early exit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict) -> str:
    """Plain-text tables for the terminal."""
    lines = [f"task {report.get('task', '?')} ({report.get('split', 'dev')}, {report['num_examples']} examples), "
             f"metric {report['metric']}", "", "exit  score"]
    lines += [f"{e['layer']:>4}  {e['score']:6.2f}" for e in report["per_exit"]]
    sweep = report.get("early_exit")
    if sweep is None:
        return "\n".join(lines)
    rows = sweep if isinstance(sweep, list) else [sweep]
    lines += ["", "threshold  score  mean exit layer  layer speed-up  exits per layer"]
    for r in rows:
        lines.append(f"{r['threshold']:>9.3g}  {r['score']:5.2f}  {r['mean_exit_layer']:15.2f}  "
                     f"{r['layer_speedup']:13.2f}x  {r['exit_counts']}")
    if isinstance(sweep, dict) and "wall_time_s" in sweep:
        lines.append(f"wall time: early exit {sweep['wall_time_s']:.2f}s, full model "
                     f"{sweep['full_model_wall_time_s']:.2f}s (batch {sweep['batch_size']}, "
                     f"{sweep['wall_speedup']:.2f}x; one run, not a benchmark)")
    return "\n".join(lines)
