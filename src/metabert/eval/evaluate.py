"""Scoring every exit, and entropy early exit at one or many thresholds."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from metabert.data import metrics
from metabert.data.batching import Encoded, model_inputs
from metabert.engine.dataset import over_dataset, run_dataset
from metabert.engine.policies import POLICIES, EntropyPolicy, ExitPolicy, ThresholdPolicy, entropy, get_policy, simulate_exits
from metabert.eval.reports import EarlyExitReport, ExitRun, Timing
from metabert.model.multi_exit import EagerRunner, MultiExitBert

log = logging.getLogger(__name__)


def all_exit_logits(model: MultiExitBert, data: Encoded, batch_size: int = 64, progress: bool = False):
    """Every exit's logits for every example, in the dataset's order: (L, N, C)."""
    model.eval()
    return over_dataset(data, batch_size, model.tokenizer.pad_token_id, lambda b: model(**model_inputs(b)),
                        progress, shape=(model.num_layers, model.config.num_labels))


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
