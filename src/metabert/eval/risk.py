"""Risk-controlled exit thresholds: a γ whose promise holds on new data with probability ≥ 1-δ.

The point estimate of ``calibration.choose`` picks the fastest threshold whose score on the
calibration slice is within the budget; on new data it overshoots about half the time. Here each
candidate threshold λ_j is a null hypothesis H_j: "the risk of λ_j exceeds α", tested with a
finite-sample p-value, in a fixed order from conservative (the full model) to aggressive, stopping
at the first hypothesis that is not rejected (fixed-sequence testing). The fastest rejected
candidate is returned; the probability that its risk exceeds α is at most δ (family-wise error
control). This is Learn-then-Test (Angelopoulos, Bates, Candès, Jordan, Lei 2021, arXiv 2110.01052)
as CATs (Schuster, Fisch, Jaakkola, Barzilay 2021, arXiv 2104.08803) and CALM (Schuster et al.
2022, arXiv 2207.07061) apply it to early exit.

The per-example loss is binary, so the p-value is the exact binomial tail
P(Binomial(n, α) ≤ k) for k losses among n calibration examples (Hoeffding-Bentkus reduces to it,
times e, for 0/1 losses). Two losses:

- ``with labels`` (``--max-drop D``): the early exit is wrong where the full model is right. Its
  mean is an upper bound on the accuracy drop against the full model (examples the early exit gets
  right and the full model wrong only help), so α = D / 100 bounds the accuracy drop by D points.
  For metrics that do not decompose over examples (F1, MCC, MRPC's mean of accuracy and F1) the
  same per-example rate is what is bounded, not the metric itself: the metric's drop is the
  validation's job (``metabert validate-calibration`` measures it).
- ``without labels`` (``--consistency c``): the early exit disagrees with the full model; α = 1 - c.

Candidate thresholds sit on a fixed grid that does not look at the calibration data (the order of
the hypotheses must be fixed before the test for its guarantee to hold). Everything here is a pure
function of all-exit logits (and labels), so any runner's logits can be used.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom

from metabert.engine.policies import POLICIES, ExitPolicy, get_policy, simulate_exits

log = logging.getLogger(__name__)

DEFAULT_DELTA = 0.05
GRID_SIZE = 400  # fixed-sequence testing pays nothing for more hypotheses, only their order matters


def candidate_grid(name: str, num_layers: int, num_labels: int, patience: int = 2,
                   count: int = GRID_SIZE) -> list[ExitPolicy]:
    """Candidates of policy ``name`` from the full model (first) to the most aggressive (last),
    on a grid fixed by the number of layers and classes only.

    Entropy-like thresholds are 0 (never exit early) then geometrically spaced up to the largest
    possible entropy (log C nats, or 1 normalised), so that confident models, whose entropies sit
    near 0, get a fine grid; max-prob runs from 1 down to 1/C; patience from t = L down to 1.
    """
    if name not in POLICIES:
        raise ValueError(f"unknown exit policy {name!r}; choose one of: {', '.join(POLICIES)}")
    if POLICIES[name].parameter == "patience":
        return [get_policy(name, patience=t) for t in range(num_layers, 0, -1)]
    top = 1.0 if name == "norm-entropy" else math.log(num_labels)
    if name == "max-prob":
        gaps = np.geomspace(1e-6, 1.0 - 1.0 / num_labels, count - 1)  # 1 - γ
        values = [1.0, *(1.0 - gaps)]
    else:
        values = [0.0, *np.geomspace(top * 1e-6, top * 1.0001, count - 1)]
    return [get_policy(name, threshold=float(v), patience=patience) for v in values]


@dataclass(frozen=True)
class Outcomes:
    """What every candidate does to every example, computed once from all-exit logits.

    layers, predictions: (K, N) exit layer (1-based) and predicted class of candidate k on example
    i; full: (N,) the last exit's predictions. Subsets of examples (a resampled split) are rows'
    columns, so resampling never re-runs a policy.
    """

    policies: list[ExitPolicy]
    layers: np.ndarray
    predictions: np.ndarray
    full: np.ndarray
    num_layers: int

    def subset(self, index) -> "Outcomes":
        return Outcomes(self.policies, self.layers[:, index], self.predictions[:, index], self.full[index],
                        self.num_layers)

    def speedups(self) -> np.ndarray:
        """(K,) layer speed-up L / mean exit layer of each candidate."""
        return self.num_layers / self.layers.mean(axis=1)


def exit_layers(logits: torch.Tensor, policy: ExitPolicy) -> torch.Tensor:
    """(N,) 1-based exit layers of ``policy``: ``exits.simulate_exits``, or for a stateless policy
    its own ``step`` on every inner exit's rows at once (the same decisions in one call)."""
    if policy.state_size:
        return simulate_exits(logits, policy)
    num_layers, n, c = logits.shape
    done, _ = policy.step(logits[:-1].reshape(-1, c), policy.init_state((num_layers - 1) * n))
    done = torch.cat([done.reshape(num_layers - 1, n), torch.ones(1, n, dtype=torch.bool)])
    return done.to(torch.int8).argmax(0) + 1  # the first exit that says leave (the last always does)


def outcomes(logits: torch.Tensor, policies: list[ExitPolicy], reference=None) -> Outcomes:
    """Each policy's exits and predictions on (L, N, C) logits. ``reference`` (N,): the predictions
    the early exit is compared with (default: these logits' last exit; a retrofitted model's INT8
    runner is compared with the original fp32 model's answers)."""
    per_layer = logits.argmax(-1).numpy()  # (L, N) each exit's prediction
    layers = np.stack([exit_layers(logits, policy).numpy() for policy in policies])  # (K, N)
    predictions = per_layer[layers - 1, np.arange(per_layer.shape[1])[None]]  # (K, N) the exit's prediction
    full = per_layer[-1] if reference is None else np.asarray(reference)
    return Outcomes(list(policies), layers, predictions, full, logits.shape[0])


def losses(result: Outcomes, labels=None) -> np.ndarray:
    """(K, N) bool per-example losses: with ``labels``, the early exit is wrong where the full
    model is right; without, the early exit disagrees with the full model."""
    if labels is None:
        return result.predictions != result.full[None]
    labels = np.asarray(labels)
    return (result.predictions != labels[None]) & (result.full == labels)[None]


def p_values(loss_counts: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Exact binomial p-values of H: risk > α given ``loss_counts`` losses among ``n`` i.i.d.
    examples: P(Binomial(n, α) ≤ k), valid because the tail only grows as the risk falls to α."""
    return binom.cdf(np.asarray(loss_counts), n, alpha)


def fixed_sequence(p: np.ndarray, delta: float) -> int:
    """Index of the last hypothesis rejected when testing in order at level δ and stopping at the
    first p > δ; -1 when the first is not rejected. Family-wise error ≤ δ with no correction."""
    above = np.flatnonzero(np.asarray(p) > delta)
    return (int(above[0]) if above.size else len(p)) - 1


def min_examples(alpha: float, delta: float) -> int:
    """The fewest calibration examples that can certify any early exit at all (zero losses)."""
    return math.ceil(math.log(delta) / math.log1p(-alpha)) if 0 < alpha < 1 else 1


def certify(loss: np.ndarray, alpha: float, delta: float) -> dict:
    """Fixed-sequence testing of (K, n) losses, candidates in order: the chosen index (0, the
    full model, when nothing is certified), its p-value and loss rate, and how many were rejected.

    Candidate 0 must be the full model: its loss is 0 by construction, so choosing it keeps any
    promise; the test decides only whether faster candidates may replace it."""
    if not 0 < alpha < 1:
        raise ValueError(f"the risk level must be in (0, 1), got {alpha}")
    if not 0 < delta < 1:
        raise ValueError(f"δ must be in (0, 1) (confidence 1-δ), got {delta}")
    n = loss.shape[1]
    counts = loss.sum(axis=1)
    p = p_values(counts, n, alpha)
    last = fixed_sequence(p, delta)
    return {"index": max(last, 0), "certified": last >= 0, "rejected": last + 1, "p_value": float(p[max(last, 0)]),
            "loss_rate": float(counts[max(last, 0)] / n) if n else 0.0, "n": n}


def choose_guaranteed(logits: torch.Tensor, labels=None, policy: str = "entropy", patience: int = 2,
                      max_drop: float | None = None, consistency: float | None = None,
                      delta: float = DEFAULT_DELTA, reference=None) -> dict:
    """The fastest candidate of ``candidate_grid`` whose risk is certified at confidence 1-δ.

    ``max_drop`` D (points, needs ``labels``): the rate of examples the early exit gets wrong and
    the full model right is ≤ D/100, which bounds the accuracy drop by D points (for F1, MCC and
    acc_and_f1 it is this per-example rate that is bounded, see the module docstring).
    ``consistency`` c (no labels needed): agreement with the full model ≥ c, or with ``reference``
    (N,) predictions where given (the original fp32 model, when these logits are INT8 ones).
    Returns {"policy", "index", "certified", "p_value", "loss_rate", "n", "alpha", "delta",
    "loss", "layer_speedup"}; with too few examples to certify anything, the full model (logged).
    """
    if (max_drop is None) == (consistency is None):
        raise ValueError("give exactly one of max_drop and consistency")
    if max_drop is not None:
        if labels is None:
            raise ValueError("max_drop needs labels (use consistency for unlabelled data)")
        if not 0 < max_drop < 100:
            raise ValueError(f"max drop must be in (0, 100) points, got {max_drop}")
        alpha, loss_name = max_drop / 100, "the early exit is wrong where the full model is right"
    else:
        if not 0 < consistency < 1:
            raise ValueError(f"consistency must be in (0, 1), got {consistency}")
        alpha, loss_name, labels = 1 - consistency, "the early exit disagrees with the full model", None
    grid = candidate_grid(policy, logits.shape[0], logits.shape[-1], patience)
    result = outcomes(logits, grid, reference)
    loss = losses(result, labels)
    verdict = certify(loss, alpha, delta)
    if not verdict["certified"]:
        need, first = min_examples(alpha, delta), float(loss[0].mean())
        if verdict["n"] >= need and first > 0:  # even the full model's loss rate is too high to certify
            log.warning("%d calibration examples certify no early exit at risk %.3g and δ=%.3g: the full model itself "
                        "has a loss rate of %.4f on them (%s), too close to or above the budget: keeping the full "
                        "model", verdict["n"], alpha, delta, first, loss_name)
        else:
            log.warning("%d calibration examples cannot certify any early exit at risk %.3g and δ=%.3g (need at "
                        "least %d with no loss): keeping the full model", verdict["n"], alpha, delta, need)
    return {**verdict, "policy": grid[verdict["index"]], "alpha": alpha, "delta": delta, "loss": loss_name,
            "layer_speedup": float(result.speedups()[verdict["index"]])}


def measured(logits: torch.Tensor, policy: ExitPolicy, labels=None, reference=None) -> dict:
    """What ``policy`` does on data with all-exit logits: agreement with the full model (or with
    ``reference`` predictions), and with labels the rate of the bounded loss."""
    result = outcomes(logits, [policy], reference)
    out = {"agreement": float((result.predictions[0] == result.full).mean()),
           "layer_speedup": float(result.speedups()[0])}
    if labels is not None:
        out["wrong_where_full_right"] = float(losses(result, labels)[0].mean())
    return out
