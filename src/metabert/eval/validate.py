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


def validate_consistency(logits: torch.Tensor, consistency: float, calibration_size: int, splits: int = 200,
                         delta: float = risk.DEFAULT_DELTA, policy: str = "entropy", patience: int = 2, seed: int = 0,
                         reference=None) -> dict:
    """``validate`` for the label-free promise ``--consistency c`` (what ``retrofit`` certifies):
    resampled calibration/test splits of an unlabelled pool, γ chosen on each calibration split by
    the risk-controlled rule and by the point estimate (the fastest candidate whose agreement on the
    calibration split is at least c), and how often each agrees with the full model (or with
    ``reference`` predictions, (N,)) on less than c of the test split."""
    n = logits.shape[1]
    if not 0 < calibration_size < n:
        raise ValueError(f"calibration size {calibration_size} must be between 1 and the pool's {n - 1}")
    grid = risk.candidate_grid(policy, logits.shape[0], logits.shape[-1], patience)
    pool = risk.outcomes(logits, grid, reference)
    loss = risk.losses(pool)  # (K, N) disagreement with the reference
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(splits):
        order = rng.permutation(n)
        cal, test = order[:calibration_size], order[calibration_size:]
        k = risk.certify(loss[:, cal], 1 - consistency, delta)["index"]
        within = np.flatnonzero(1 - loss[:, cal].mean(axis=1) >= consistency - 1e-12)
        point = int(within.max()) if within.size else 0  # none within: the full model (which breaks it too)
        speedups = pool.subset(test).speedups()
        rows.append({"guaranteed_agreement": float(1 - loss[k, test].mean()), "guaranteed_speedup": float(speedups[k]),
                     "guaranteed_full_model": k == 0, "point_agreement": float(1 - loss[point, test].mean()),
                     "point_speedup": float(speedups[point])})
    eps = 1e-12
    guaranteed = {**_rate([r["guaranteed_agreement"] < consistency - eps for r in rows]),
                  "mean_agreement": float(np.mean([r["guaranteed_agreement"] for r in rows])),
                  "mean_speedup": float(np.mean([r["guaranteed_speedup"] for r in rows])),
                  "full_model_share": float(np.mean([r["guaranteed_full_model"] for r in rows]))}
    point = {**_rate([r["point_agreement"] < consistency - eps for r in rows]),
             "mean_agreement": float(np.mean([r["point_agreement"] for r in rows])),
             "mean_speedup": float(np.mean([r["point_speedup"] for r in rows]))}
    return {"consistency": consistency, "delta": delta, "policy": policy, "splits": splits, "seed": seed,
            "pool_size": n, "calibration_size": calibration_size, "test_size": n - calibration_size,
            "guaranteed": guaranteed, "point_estimate": point, "within_delta": guaranteed["ci95"][0] <= delta}


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
