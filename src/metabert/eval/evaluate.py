"""Scoring every exit, and entropy early exit at one or many thresholds."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from metabert.data import metrics as metrics
from metabert.data.batching import Encoded, eval_batches, iterate, model_inputs
from metabert.engine.policies import POLICIES, EntropyPolicy, ExitPolicy, ThresholdPolicy, entropy, get_policy, simulate_exits
from metabert.engine import loop as engine
from metabert.engine.loop import ExitResult
from metabert.model.multi_exit import EagerRunner, MultiExitBert
from metabert.eval.reports import EarlyExitReport, ExitRun, Timing

log = logging.getLogger(__name__)


@torch.no_grad()
def over_dataset(data: Encoded, batch_size: int, pad_id: int, logits_of, progress: bool = False,
                 shape: tuple[int, int] | None = None) -> torch.Tensor | None:
    """``logits_of(batch)`` -> (L, B, C) over length-sorted padded batches, put back in the dataset's
    order: (L, N, C). ``shape`` (L, C) allocates up front (an empty dataset then gives (L, 0, C))."""
    out = torch.empty(shape[0], len(data), shape[1]) if shape else None
    batches = eval_batches(data, batch_size)
    for batch in tqdm(iterate(data, batches, pad_id), total=len(batches), desc="all exits", disable=not progress):
        logits = logits_of(batch).float()
        if out is None:
            out = torch.empty(logits.shape[0], len(data), logits.shape[-1])
        out[:, batch["index"]] = logits
    return out


def all_exit_logits(model: MultiExitBert, data: Encoded, batch_size: int = 64, progress: bool = False):
    """Every exit's logits for every example, in the dataset's order: (L, N, C)."""
    model.eval()
    return over_dataset(data, batch_size, model.tokenizer.pad_token_id, lambda b: model(**model_inputs(b)),
                        progress, shape=(model.num_layers, model.config.num_labels))


def run_dataset(runner, data: Encoded, pad_id: int, policy: ExitPolicy | None,
                batch_size: int = 64) -> tuple[ExitResult, float]:
    """Early exit (``policy``; None: the full model) over a dataset in length-sorted padded batches,
    through the engine. Returns (the result in dataset order, seconds; padding is not timed)."""
    batches = list(iterate(data, eval_batches(data, batch_size), pad_id))
    logits, layers = None, torch.empty(len(data), dtype=torch.long)
    start = time.perf_counter()
    outputs = [engine.run(runner, model_inputs(b), policy) if policy is not None else engine.run_full(runner, model_inputs(b))
               for b in batches]
    seconds = time.perf_counter() - start
    for batch, out in zip(batches, outputs):
        if logits is None:
            logits = torch.empty(len(data), out.logits.shape[-1])
        logits[batch["index"]] = out.logits.float()
        layers[batch["index"]] = out.exit_layer
    return ExitResult(logits, layers), seconds


def run_early_exit(model: MultiExitBert, data: Encoded, policy: ExitPolicy | float, batch_size: int = 64):
    """Real early-exit inference of the eager model over the dataset: (result in dataset order, seconds)."""
    if not isinstance(policy, ExitPolicy):
        policy = EntropyPolicy(float(policy))
    return run_dataset(EagerRunner(model), data, model.tokenizer.pad_token_id, policy, batch_size)


def per_exit_scores(logits: torch.Tensor, labels: list[int], metric: str) -> list[dict]:
    return [
        {"layer": i + 1, **metrics.compute(metric, logits[i].argmax(-1).tolist(), labels)}
        for i in range(logits.shape[0])
    ]


def candidate_policies(logits: torch.Tensor, name: str = "entropy", patience: int = 2, count: int = 16):
    """Policies spanning 1x (never early) to Lx (all at layer 1) for a sweep or a calibration.

    Thresholds sit at evenly spaced quantiles of the statistic the policy reads (entropy,
    normalised entropy or max probability) over exits 1..L-1; ``patience`` sweeps t = 1..L-1 plus
    never-exit.
    """
    policy_cls = POLICIES[name] if name in POLICIES else get_policy(name).__class__
    if policy_cls.parameter == "patience":
        return [get_policy(name, patience=t) for t in range(1, logits.shape[0])] + [
            get_policy(name, patience=logits.shape[0])]
    # the threshold rules' own statistic; patience-entropy's γ is an entropy threshold
    statistic = policy_cls.statistic if issubclass(policy_cls, ThresholdPolicy) else entropy
    above = issubclass(policy_cls, ThresholdPolicy) and policy_cls.leave_above
    stat = statistic(logits[:-1]).flatten()
    if above:
        lo, hi = 1.0, float(stat.min()) * 0.999  # max-prob γ=1: never exit early; below the minimum: always
    else:
        lo, hi = 0.0, float(stat.max()) * 1.001 + 1e-6
    qs = torch.quantile(stat, torch.linspace(0, 1, count)).tolist()[1:-1]
    values = sorted({lo, hi, *(float(f"{q:.4g}") for q in qs)}, reverse=above)
    return [get_policy(name, threshold=v, patience=patience) for v in values]


def simulate(logits: torch.Tensor, labels: list[int], metric: str, policy: ExitPolicy | float) -> ExitRun:
    """Early exit under ``policy`` (or entropy at a threshold) computed from all exits' logits."""
    if not isinstance(policy, ExitPolicy):
        policy = EntropyPolicy(float(policy))
    layers = simulate_exits(logits, policy)
    chosen = logits[layers - 1, torch.arange(logits.shape[1])]
    return summarise(logits.shape[0], chosen.argmax(-1).tolist(), layers, labels, metric, policy)


def summarise(num_layers, predictions, layers: torch.Tensor, labels, metric, policy: ExitPolicy,
              timing: Timing | None = None) -> ExitRun:
    """What ``policy`` did: its exits ``layers`` (1-based, per sample) and ``predictions``, scored."""
    mean_layer = float(layers.float().mean())
    counts = torch.bincount(layers, minlength=num_layers + 1)[1:].tolist()
    return ExitRun(policy.name, policy.threshold, policy.patience, metrics.compute(metric, predictions, labels),
                   mean_layer, num_layers / mean_layer, tuple(counts), timing)


def sweep_policies(logits: torch.Tensor, values, name: str = "entropy", patience: int = 2) -> list[ExitPolicy]:
    """``values`` = "auto" (see ``candidate_policies``) or a list of thresholds (of t for patience)."""
    if values == "auto":
        return candidate_policies(logits, name, patience)
    if POLICIES[name].parameter == "patience":
        return [get_policy(name, patience=int(v)) for v in values]
    return [get_policy(name, threshold=v, patience=patience) for v in values]


def evaluate(
    model: MultiExitBert,
    data: Encoded,
    metric: str,
    policy: ExitPolicy | None = None,
    sweep: list[ExitPolicy] | None = None,
    batch_size: int = 64,
    progress: bool = False,
    logits: torch.Tensor | None = None,
) -> EarlyExitReport:
    """Score of every exit (MetaBERT Fig. 2) and early exit.

    With ``policy``: a real early-exit run (rows leave the batch as they exit), timed against the
    full model over the same batches (one repetition: a sanity figure, not a benchmark). With
    ``sweep``: every policy in it, computed from one pass that records every exit (the same
    decisions as the real loop, no timing).
    """
    if logits is None:
        logits = all_exit_logits(model, data, batch_size, progress)
    per_exit = tuple(per_exit_scores(logits, data.labels, metric))
    runs, timed = (), None
    if sweep:
        runs = tuple(simulate(logits, data.labels, metric, p) for p in sweep)
    elif policy is not None:
        output, seconds = run_early_exit(model, data, policy, batch_size)
        _, full_seconds = run_dataset(EagerRunner(model), data, model.tokenizer.pad_token_id, None, batch_size)
        timing = Timing(seconds, full_seconds, full_seconds / seconds, batch_size)
        timed = summarise(model.num_layers, output.predictions.tolist(), output.exit_layer, data.labels, metric,
                          policy, timing)
    return EarlyExitReport(metric, model.num_layers, len(data), per_exit, runs, timed)


def write_sweep_csv(report: EarlyExitReport, path: str | Path) -> None:
    fields = ["policy", "threshold", "patience", "score", "mean_exit_layer", "layer_speedup"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields + [f"exits_at_{i + 1}" for i in range(report.num_layers)])
        for run in report.sweep:
            row = run.to_dict()
            writer.writerow([f"{row[f]:.6g}" if isinstance(row[f], float) else row[f] for f in fields]
                            + row["exit_counts"])


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


def plot_report(report: EarlyExitReport, path: str | Path, title: str = "") -> None:
    """Two panels: score of every exit and entropy early exit's score against layer speed-up."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _draw(report, left, right)
    left.set_title("score of every exit")
    right.set_title("entropy early exit (threshold sweep)")
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


def format_report(report: EarlyExitReport) -> str:
    """Plain-text tables for the terminal."""
    context = report.context
    lines = [f"task {context.get('task', '?')} ({context.get('split', 'dev')}, {report.num_examples} examples), "
             f"metric {report.metric}", "", "exit  score"]
    lines += [f"{e['layer']:>4}  {e['score']:6.2f}" for e in report.per_exit]
    runs = report.sweep + ((report.timed,) if report.timed else ())
    if not runs:
        return "\n".join(lines)
    lines += ["", f"{'policy':<16}  threshold  patience  score  mean exit layer  layer speed-up  exits per layer"]
    for r in runs:
        lines.append(f"{r.policy:<16}  {r.threshold:>9.4g}  {r.patience:>8}  {r.score:5.2f}  "
                     f"{r.mean_exit_layer:15.2f}  {r.layer_speedup:13.2f}x  {list(r.exit_counts)}")
    if report.timed is not None and report.timed.timing is not None:
        t = report.timed.timing
        lines.append(f"wall time: early exit {t.wall_time_s:.2f}s, full model {t.full_model_wall_time_s:.2f}s "
                     f"(batch {t.batch_size}, {t.wall_speedup:.2f}x; one run, not a benchmark)")
    return "\n".join(lines)
