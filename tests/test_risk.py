"""Risk-controlled calibration (``metabert.eval.risk``): fixed-sequence testing where the right answer is
known, the label-free path, and the grid the hypotheses are tested on."""

import math

import numpy as np
import pytest
from scipy.stats import binom

from metabert.eval import risk as risk
from metabert.engine.policies import simulate_exits
from test_calibration import synthetic

ALPHA, DELTA = 0.02, 0.05
RISKS = np.linspace(0.0, 0.06, 61)  # candidate k's true risk; safe while ≤ α (k ≤ 20)


def nested_losses(n: int, rng) -> np.ndarray:
    """(K, n) losses with true risk RISKS[k]; nested like a threshold's (a loss stays a loss as the
    threshold grows more aggressive)."""
    u = rng.random(n)
    return u[None, :] < RISKS[:, None]


def sampling_error(rate: float, trials: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / trials)


def test_fixed_sequence_chooses_an_unsafe_candidate_at_most_at_rate_delta():
    trials, n = 1000, 1500
    rng = np.random.default_rng(0)
    chosen = np.array([risk.certify(nested_losses(n, rng), ALPHA, DELTA)["index"] for _ in range(trials)])
    unsafe = RISKS[chosen] > ALPHA + 1e-12
    assert unsafe.mean() <= DELTA + sampling_error(DELTA, trials)
    # the point estimate (fastest with an empirical rate ≤ α) on the same draws breaks it far more often,
    # so the check above can fail
    rng = np.random.default_rng(0)
    point = np.array([np.flatnonzero(nested_losses(n, rng).mean(1) <= ALPHA).max() for _ in range(trials)])
    assert (RISKS[point] > ALPHA + 1e-12).mean() > 0.3


def test_fixed_sequence_chooses_a_safe_fast_candidate_when_data_suffice():
    rng = np.random.default_rng(1)
    chosen = np.array([risk.certify(nested_losses(20000, rng), ALPHA, DELTA)["index"] for _ in range(200)])
    assert (RISKS[chosen] >= 0.015).mean() > 0.95  # certifies candidates near the budget, not just the full model
    assert (RISKS[chosen] > ALPHA + 1e-12).mean() <= DELTA + sampling_error(DELTA, 200)


def test_too_few_examples_keep_the_full_model(caplog):
    n = risk.min_examples(ALPHA, DELTA) - 1
    loss = np.zeros((5, n), dtype=bool)  # even zero losses cannot certify
    verdict = risk.certify(loss, ALPHA, DELTA)
    assert verdict == {**verdict, "index": 0, "certified": False}
    assert risk.certify(np.zeros((5, n + 1), dtype=bool), ALPHA, DELTA)["index"] == 4
    logits, labels = synthetic(n=50)
    with caplog.at_level("WARNING"):
        choice = risk.choose_guaranteed(logits, labels, max_drop=1.0)
    assert choice["policy"].threshold == 0.0 and "cannot certify" in caplog.text


def test_p_values_are_the_binomial_tail_and_fixed_sequence_stops_at_first_non_rejection():
    assert risk.p_values(np.array([3]), 100, 0.05)[0] == pytest.approx(binom.cdf(3, 100, 0.05))
    assert risk.fixed_sequence(np.array([0.01, 0.02, 0.2, 0.01]), 0.05) == 1  # the later 0.01 is never reached
    assert risk.fixed_sequence(np.array([0.5, 0.01]), 0.05) == -1
    assert risk.fixed_sequence(np.array([0.01, 0.01]), 0.05) == 1


@pytest.mark.parametrize("name", ["entropy", "norm-entropy", "max-prob", "patience", "patience-entropy"])
def test_grid_runs_from_the_full_model_to_the_most_aggressive(name):
    logits, _ = synthetic(n=300)
    grid = risk.candidate_grid(name, logits.shape[0], logits.shape[-1])
    result = risk.outcomes(logits, grid)
    assert (result.layers[0] == logits.shape[0]).all()  # candidate 0 is the full model: loss 0 by construction
    assert result.speedups()[-1] > 1.5
    speed = result.speedups()
    assert (np.diff(speed) >= -1e-9).all()  # conservative to aggressive
    assert [p.threshold for p in risk.candidate_grid(name, 4, 2)] == [p.threshold for p in grid]  # data-blind
    for k in range(0, len(grid), max(1, len(grid) // 9)):  # the engine's decisions (simulate_exits)
        assert np.array_equal(result.layers[k], simulate_exits(logits, grid[k]).numpy())


@pytest.fixture(scope="module")
def pool():
    """20,000 synthetic examples standing in for the distribution: drawing from them with
    replacement is i.i.d. sampling from a distribution whose risks are known exactly (their means)."""
    logits, labels = synthetic(n=20_000, seed=999)
    grid = risk.candidate_grid("entropy", logits.shape[0], logits.shape[-1])
    result = risk.outcomes(logits, grid)
    return logits, labels, result


def test_choose_guaranteed_holds_on_new_data_from_the_same_distribution(pool):
    logits, labels, result = pool
    loss = risk.losses(result, labels)
    true_risk = loss.mean(1)
    rng = np.random.default_rng(3)
    trials, n = 1000, 1500
    chosen = np.array([risk.certify(loss[:, rng.integers(0, loss.shape[1], n)], 0.02, DELTA)["index"]
                       for _ in range(trials)])
    assert (true_risk[chosen] > 0.02).mean() <= DELTA + sampling_error(DELTA, trials)
    oracle = result.speedups()[np.flatnonzero(true_risk <= 0.02).max()]
    assert result.speedups()[chosen].mean() > 1 + 0.5 * (oracle - 1)  # not just the full model: half the best safe gain
    # choose_guaranteed is this test on its own data
    sample = rng.integers(0, loss.shape[1], n)
    choice = risk.choose_guaranteed(logits[:, sample], [labels[i] for i in sample], max_drop=2.0, delta=DELTA)
    assert choice["index"] == risk.certify(loss[:, sample], 0.02, DELTA)["index"]
    assert choice["policy"] == result.policies[choice["index"]]


def test_label_free_consistency_bounds_disagreement_without_labels(pool):
    logits, _, result = pool
    loss = risk.losses(result)  # no labels: disagreement with the full model
    true_disagreement = loss.mean(1)
    rng = np.random.default_rng(4)
    trials, n = 1000, 1500
    chosen = np.array([risk.certify(loss[:, rng.integers(0, loss.shape[1], n)], 0.03, DELTA)["index"]
                       for _ in range(trials)])
    assert (true_disagreement[chosen] > 0.03).mean() <= DELTA + sampling_error(DELTA, trials)
    assert (chosen > 0).mean() > 0.9
    sample = rng.integers(0, loss.shape[1], n)
    choice = risk.choose_guaranteed(logits[:, sample], None, consistency=0.97, delta=DELTA)
    assert choice["loss"] == "the early exit disagrees with the full model"
    assert choice["index"] == risk.certify(loss[:, sample], 0.03, DELTA)["index"]
    measured = risk.measured(logits, choice["policy"])
    assert measured["agreement"] == pytest.approx(1 - true_disagreement[choice["index"]])


def test_bad_goals():
    logits, labels = synthetic(n=100)
    with pytest.raises(ValueError, match="exactly one"):
        risk.choose_guaranteed(logits, labels)
    with pytest.raises(ValueError, match="needs labels"):
        risk.choose_guaranteed(logits, None, max_drop=1.0)
    with pytest.raises(ValueError, match="consistency must be"):
        risk.choose_guaranteed(logits, None, consistency=1.5)
    with pytest.raises(ValueError, match="δ must be"):
        risk.certify(np.zeros((2, 10), dtype=bool), 0.1, 1.0)
