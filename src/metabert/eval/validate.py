"""Check the promise of a calibrated γ, not just the code: resample many calibration/test splits of
one pool of examples (the held-out training slice plus dev), choose γ on each calibration split by
the risk-controlled rule (``risk.choose_guaranteed``'s test) and by the point estimate
(``calibration.choose``, what ``calibrate --no-guarantee`` does), and count how often each breaks
its promise on the test split. The guarantee is that the violation rate is at most δ (up to the
sampling error of the splits); what it costs is speed-up against the point estimate.

All-exit logits are computed once for the pool; every split is a column subset of them.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binomtest

from metabert.data import metrics as metrics
from metabert.eval import risk as risk
from metabert.eval.calibrate import choose
from metabert.eval.evaluate import simulate
from metabert.common.machine import hardware_summary

log = logging.getLogger(__name__)


def candidate_scores(metric: str, predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K,) score of each row of (K, n) predictions, as ``metrics.compute`` gives it; accuracy and
    binary acc_and_f1 from confusion counts over all rows at once (``tests/test_calibration_check``
    checks they equal ``metrics.compute``), others row by row."""
    right = predictions == labels[None]
    accuracy = 100.0 * right.mean(axis=1)
    if metric == "accuracy":
        return accuracy
    if metric == "acc_and_f1" and set(np.unique(labels)) <= {0, 1}:
        tp = (right & (labels[None] == 1)).sum(axis=1)
        wrong = (~right).sum(axis=1)  # false positives + false negatives
        denominator = 2 * tp + wrong
        f1 = np.divide(200.0 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
        return (accuracy + f1) / 2
    return np.array([metrics.compute(metric, row.tolist(), labels.tolist())["score"] for row in predictions])


def validate(logits: torch.Tensor, labels: list[int], metric: str, max_drops: list[float], calibration_size: int,
             splits: int = 200, delta: float = risk.DEFAULT_DELTA, policy: str = "entropy", patience: int = 2,
             seed: int = 0) -> dict:
    """Resample ``splits`` random calibration sets of ``calibration_size`` examples from the pool
    (logits (L, N, C), labels), the rest being the test set; for each budget D in ``max_drops``
    report the violation rates (test-set score drop against the full model > D) and layer
    speed-ups of the guaranteed rule and of the point estimate (the fastest candidate within D on
    the calibration set, the rule of ``calibrate --no-guarantee``), both on ``risk.candidate_grid``
    so that they differ only in the rule. Also how often the bounded per-example rate itself
    exceeded D / 100 on the test set."""
    n = logits.shape[1]
    if not 0 < calibration_size < n:
        raise ValueError(f"calibration size {calibration_size} must be between 1 and the pool's {n - 1}")
    labels_np = np.asarray(labels)
    grid = risk.candidate_grid(policy, logits.shape[0], logits.shape[-1], patience)
    pool = risk.outcomes(logits, grid)
    loss = risk.losses(pool, labels_np)
    pool_rate = loss.mean(axis=1)  # each candidate's bounded rate over the whole pool
    rng = np.random.default_rng(seed)
    rows = {d: [] for d in max_drops}
    for _ in range(splits):
        order = rng.permutation(n)
        cal, test = order[:calibration_size], order[calibration_size:]
        cal_scores = candidate_scores(metric, pool.predictions[:, cal], labels_np[cal])
        test_scores = candidate_scores(metric, pool.predictions[:, test], labels_np[test])
        test_speedups = pool.subset(test).speedups()
        # candidate 0 is the full model
        for budget in max_drops:
            k = risk.certify(loss[:, cal], budget / 100, delta)["index"]
            point = int(np.flatnonzero(cal_scores >= cal_scores[0] - budget - 1e-9).max())
            rows[budget].append({
                "guaranteed_drop": float(test_scores[0] - test_scores[k]),
                "guaranteed_loss": float(loss[k, test].mean()),
                "guaranteed_pool_loss": float(pool_rate[k]),
                "guaranteed_speedup": float(test_speedups[k]),
                "guaranteed_full_model": k == 0,
                "point_drop": float(test_scores[0] - test_scores[point]),
                "point_speedup": float(test_speedups[point]),
            })
    per_budget = [summarise_budget(d, delta, rows[d]) for d in max_drops]
    for b in per_budget:
        log.info("D=%g: guaranteed violation rate %.3f, point estimate %.3f", b["max_drop"],
                 b["guaranteed"]["violation_rate"], b["point_estimate"]["violation_rate"])
    return {"metric": metric, "policy": policy, "delta": delta, "splits": splits, "seed": seed,
            "pool_size": n, "calibration_size": calibration_size, "test_size": n - calibration_size,
            "num_layers": pool.num_layers, "grid_size": len(grid), "budgets": per_budget}


def _rate(flags: list[bool]) -> dict:
    """A violation rate with its Clopper-Pearson 95% interval over the splits."""
    k, n = int(sum(flags)), len(flags)
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"violation_rate": k / n, "violations": k, "ci95": [ci.low, ci.high]}


def summarise_budget(budget: float, delta: float, rows: list[dict]) -> dict:
    eps = 1e-9
    guaranteed = {
        **_rate([r["guaranteed_drop"] > budget + eps for r in rows]),
        "loss_violation_rate": float(np.mean([r["guaranteed_loss"] > budget / 100 + eps for r in rows])),
        "pool_loss_violation_rate": float(np.mean([r["guaranteed_pool_loss"] > budget / 100 + eps for r in rows])),
        "mean_drop": float(np.mean([r["guaranteed_drop"] for r in rows])),
        "mean_speedup": float(np.mean([r["guaranteed_speedup"] for r in rows])),
        "full_model_share": float(np.mean([r["guaranteed_full_model"] for r in rows])),
    }
    point = {
        **_rate([r["point_drop"] > budget + eps for r in rows]),
        "mean_drop": float(np.mean([r["point_drop"] for r in rows])),
        "mean_speedup": float(np.mean([r["point_speedup"] for r in rows])),
    }
    return {"max_drop": budget, "delta": delta, "guaranteed": guaranteed, "point_estimate": point,
            "speedup_cost": point["mean_speedup"] - guaranteed["mean_speedup"],
            "within_delta": guaranteed["ci95"][0] <= delta}


def deployment(logits_cal: torch.Tensor, labels_cal: list[int], logits_dev: torch.Tensor, labels_dev: list[int],
               metric: str, budget: float, delta: float, policy: str = "entropy", patience: int = 2) -> dict:
    """The one split a user gets: calibrate on the held-out training slice, measure on dev (which
    need not share its distribution, e.g. SST-2's training phrases against dev sentences). The
    point estimate is ``calibration.choose`` itself (what ``calibrate --no-guarantee`` stores)."""
    chosen = risk.choose_guaranteed(logits_cal, labels_cal, policy, patience, max_drop=budget, delta=delta)
    point = choose(logits_cal, labels_cal, metric, policy, patience, max_drop=budget)["policy"]
    full = metrics.compute(metric, logits_dev[-1].argmax(-1).tolist(), labels_dev)["score"]
    out = {"max_drop": budget}
    for name, p in (("guaranteed", chosen["policy"]), ("point_estimate", point)):
        result = simulate(logits_dev, labels_dev, metric, p)
        out[name] = {"threshold": p.threshold, "patience": p.patience, "dev_drop": full - result.score,
                     "layer_speedup": result.layer_speedup}
    return out


def run_record(task: str, checkpoint: str, command: str, report: dict, deploy: list[dict]) -> dict:
    """The JSON written under results/calibration/: what ran, where, when, and the figures."""
    return {"task": task, "checkpoint": Path(checkpoint).name, "command": command, "hardware": hardware_summary(),
            "date": dt.date.today().isoformat(), **report, "deployment": deploy}


def _fmt_rate(rate: dict) -> str:
    low, high = rate["ci95"]
    return f"{100 * rate['violation_rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def markdown(records: list[dict], plot_name: str | None = None, command: str = "") -> str:
    """docs/CALIBRATION.md from ``run_record``s: commands, machine, date, one table row per task and
    budget, and the one-split deployment check."""
    first = records[0]
    lines = [
        "# Calibration that keeps its promise",
        "",
        f"Generated by `{command or 'metabert validate-calibration --summarise'}` from the JSON files in "
        "results/calibration/; do not edit by hand.",
        "",
        f"Hardware: {first['hardware']}. Date: {first['date']}. Confidence 1-δ = {1 - first['delta']:g} "
        f"(δ = {first['delta']:g}), exit policy {first['policy']}.",
        "",
        "Commands:",
        "",
        *[f"- `{r['command']}`" for r in records],
        "",
        "How it is checked: the pool is the slice of the training file held out at training plus dev. Each of "
        "the splits draws a calibration set the size of the held-out slice at random from the pool; the rest is "
        "the test set. γ is chosen on the calibration set by both rules, and the promise is broken when the "
        "test set's score (the task's metric) is more than D points below the full model's on the same test set. "
        "*Guaranteed*: `calibrate --max-drop D` (fixed-sequence testing of the rate of examples the early exit "
        "gets wrong and the full model right, binomial p-values, confidence 1-δ); *point*: the rule of "
        "`calibrate --max-drop D --no-guarantee` (the fastest γ within D on the calibration set), on the same "
        "candidate grid, so that the two differ only in the rule. *Cost* is the point estimate's mean layer "
        "speed-up minus the guaranteed one's; *nothing certified* is how often the calibration set certified no "
        "early exit at all. Violation rates "
        "are given with their exact 95% interval over the splits; *bounded rate > D/100* is how often the bounded "
        "per-example rate of the chosen γ exceeded D/100 on the test split, and over the whole pool (the "
        "distribution the splits are drawn from, so the closest check of the guarantee itself; on the test "
        "split alone, a γ whose true rate sits just under D/100 crosses it often). The test sets are finite, so part of a "
        "violation rate is the test set's own sampling noise.",
        "",
        "| task | metric | pool (calibration / test) | splits | D (points) | guaranteed: violations | bounded rate "
        "> D/100 (test / pool) | point: violations | guaranteed speed-up | point speed-up | cost | nothing certified |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for b in r["budgets"]:
            g, p = b["guaranteed"], b["point_estimate"]
            lines.append(
                f"| {r['task']} | {r['metric']} | {r['pool_size']} ({r['calibration_size']} / {r['test_size']}) "
                f"| {r['splits']} | {b['max_drop']:g} | {_fmt_rate(g)} | {100 * g['loss_violation_rate']:.1f}% / "
                f"{100 * g['pool_loss_violation_rate']:.1f}% "
                f"| {_fmt_rate(p)} | {g['mean_speedup']:.2f}x | {p['mean_speedup']:.2f}x | "
                f"{b['speedup_cost']:.2f}x | {100 * g['full_model_share']:.0f}% |")
    lines += [
        "",
        "## The one split a user gets: the held-out slice, then dev",
        "",
        "γ chosen on the whole held-out training slice, the drop measured on dev. Dev need not come from the "
        "training file's distribution (SST-2's training file holds phrases, its dev set whole sentences); the "
        "guarantee covers new data from the calibration data's distribution only.",
        "",
        "| task | D | guaranteed γ | dev drop | speed-up | point γ | dev drop | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for d in r["deployment"]:
            g, p = d["guaranteed"], d["point_estimate"]
            lines.append(f"| {r['task']} | {d['max_drop']:g} | {g['threshold']:.4g} | {g['dev_drop']:.2f} | "
                         f"{g['layer_speedup']:.2f}x | {p['threshold']:.4g} | {p['dev_drop']:.2f} | "
                         f"{p['layer_speedup']:.2f}x |")
    if plot_name:
        lines += ["", f"![violation rate and speed-up against D]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: str | Path) -> None:
    """Violation rate (left, with δ) and mean layer speed-up (right) against D, both rules, per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, r in enumerate(records):
        color = f"C{i}"
        budgets = [b["max_drop"] for b in r["budgets"]]
        for rule, style in (("guaranteed", "-o"), ("point_estimate", "--x")):
            label = f"{r['task']} n={r['calibration_size']} {'guaranteed' if rule == 'guaranteed' else 'point'}"
            left.plot(budgets, [100 * b[rule]["violation_rate"] for b in r["budgets"]], style, color=color, label=label)
            right.plot(budgets, [b[rule]["mean_speedup"] for b in r["budgets"]], style, color=color, label=label)
    left.axhline(100 * records[0]["delta"], color="grey", lw=1, label="δ")
    left.set(xlabel="D (points)", ylabel="violation rate (%)", title="promise broken on the test split")
    right.set(xlabel="D (points)", ylabel="mean layer speed-up", title="speed-up")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
