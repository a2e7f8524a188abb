"""``metabert validate-calibration`` and ``calibration_check``: resampled splits of one pool."""

import json

import numpy as np
import pytest
import torch

from metabert.eval import validate as calibration_check
from metabert.data import metrics as metrics
from metabert.cli import main
from test_cli import train_tiny


@pytest.mark.parametrize("metric", ["accuracy", "acc_and_f1", "mcc"])
def test_candidate_scores_equal_metrics_compute(metric):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    predictions = rng.integers(0, 2, (6, 50))
    predictions[0] = 0  # no positive prediction: F1 is 0
    expected = [metrics.compute(metric, row.tolist(), labels.tolist())["score"] for row in predictions]
    assert calibration_check.candidate_scores(metric, predictions, labels) == pytest.approx(expected)


def deeper_is_better(n=3000, layers=4, seed=0):
    """Exits whose accuracy grows with depth (69%, 84%, 93%, 98%), surer where they are right."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    logits = torch.zeros(layers, n, 2)
    for i in range(layers):
        logits[i, torch.arange(n), labels] = torch.randn(n, generator=gen) + 0.6 * (i + 1)
    return logits, labels.tolist()


def test_guarantee_holds_on_resampled_splits_where_the_point_estimate_does_not():
    logits, labels = deeper_is_better()
    report = calibration_check.validate(logits, labels, "accuracy", [1.0, 2.0], calibration_size=1500, splits=100)
    for budget in report["budgets"]:
        g, p = budget["guaranteed"], budget["point_estimate"]
        assert g["ci95"][0] <= 0.05 and budget["within_delta"] and g["pool_loss_violation_rate"] <= 0.05 + 3 * (0.05 * 0.95 / 100) ** 0.5
        assert p["violation_rate"] > 0.15 > g["violation_rate"]  # the point estimate breaks it often
        assert p["mean_speedup"] >= g["mean_speedup"] and budget["speedup_cost"] >= 0
        assert g["mean_speedup"] > 1.0
    assert report["pool_size"] == 3000 and report["test_size"] == 1500


def test_command_writes_results_then_page_and_plot(tmp_path, capsys):
    ckpt, dev = train_tiny(tmp_path, "--calibration-fraction", "0.25")
    out = tmp_path / "results" / "custom.json"
    cache = tmp_path / "cache.pt"
    argv = ["validate-calibration", "--checkpoint", str(ckpt), "--dev-file", str(dev), "--max-drop", "5,10",
            "--splits", "100", "--output", str(out), "--logits-cache", str(cache), "--no-progress"]
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["task"] == "custom" and record["checkpoint"] == "ckpt" and record["splits"] == 100
    assert record["calibration_size"] == 9 and record["pool_size"] == 9 + 8
    assert [b["max_drop"] for b in record["budgets"]] == [5.0, 10.0]
    assert cache.is_file()
    assert main(argv) == 0  # from the cache
    assert json.loads(out.read_text())["budgets"] == record["budgets"]
    page, plot = tmp_path / "CALIBRATION.md", tmp_path / "calibration.png"
    assert main(["validate-calibration", "--summarise", str(out), "--markdown", str(page), "--plot", str(plot)]) == 0
    text = page.read_text()
    assert "| custom | accuracy | 17 (9 / 8) | 100 | 5 |" in text and "![" in text and record["hardware"] in text
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["validate-calibration", "--checkpoint", str(ckpt), "--splits", "10"]) == 2
    assert "at least 100" in capsys.readouterr().err


def test_the_consistency_promise_holds_on_resampled_splits_where_the_point_estimate_does_not():
    """Label-free: exits that agree with the last one more often the later they are; the guaranteed
    rule breaks "agreement ≥ c" on at most about δ of the splits, the point estimate on many."""
    from metabert.eval.validate import validate_consistency

    gen = torch.Generator().manual_seed(0)
    n, layers = 3000, 4
    full = torch.randint(0, 2, (n,), generator=gen)
    logits = torch.zeros(layers, n, 2)
    for i in range(layers):
        confidence = torch.rand(n, generator=gen) * (i + 1)  # later exits: surer
        agree = torch.rand(n, generator=gen) < 0.9 + 0.1 * (confidence / (i + 1))
        pred = torch.where(agree | (i == layers - 1), full, 1 - full)
        logits[i, torch.arange(n), pred] = confidence + 0.05
    report = validate_consistency(logits, 0.97, 600, splits=200, delta=0.1, seed=1)
    assert report["guaranteed"]["violation_rate"] <= 0.1 + 0.06  # δ up to the splits' sampling error
    assert report["point_estimate"]["violation_rate"] > report["guaranteed"]["violation_rate"]
    assert report["guaranteed"]["mean_speedup"] > 1.0
