import json

import pytest
import torch

from metabert.calibration import choose
from metabert.cli import main
from metabert.exits import simulate_exits
from test_cli import train_tiny


def synthetic(n=200, layers=4, seed=0):
    """Exits that grow surer and more often right with depth."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    logits = torch.zeros(layers, n, 2)
    for i in range(layers):
        margin = torch.randn(n, generator=gen) * (i + 1) + (i + 1) * 0.8
        logits[i, torch.arange(n), labels] = margin
    return logits, labels.tolist()


def test_target_speedup_picks_least_aggressive_setting_that_meets_it():
    logits, labels = synthetic()
    choice = choose(logits, labels, "accuracy", target_speedup=1.5)
    assert choice["result"].layer_speedup >= 1.5
    layers = simulate_exits(logits, choice["policy"])
    assert 4 / layers.float().mean().item() == pytest.approx(choice["result"].layer_speedup)
    faster = choose(logits, labels, "accuracy", target_speedup=2.5)
    assert faster["policy"].threshold > choice["policy"].threshold


def test_max_drop_respects_budget_and_zero_budget_is_safe():
    logits, labels = synthetic()
    for drop in (0.0, 1.0, 5.0):
        choice = choose(logits, labels, "accuracy", max_drop=drop)
        assert choice["result"].score >= choice["full_score"] - drop - 1e-9
    loose = choose(logits, labels, "accuracy", max_drop=50.0)
    assert loose["result"].layer_speedup == pytest.approx(4.0)  # anything goes: all leave at layer 1


@pytest.mark.parametrize("policy", ["max-prob", "patience", "norm-entropy", "patience-entropy"])
def test_every_policy_calibrates(policy):
    logits, labels = synthetic()
    choice = choose(logits, labels, "accuracy", policy=policy, max_drop=2.0)
    assert choice["policy"].name == policy
    assert choice["result"].score >= choice["full_score"] - 2.0 - 1e-9


def test_bad_goals():
    logits, labels = synthetic()
    with pytest.raises(ValueError, match="exactly one"):
        choose(logits, labels, "accuracy")
    with pytest.raises(ValueError, match="reaches 9.0x"):
        choose(logits, labels, "accuracy", target_speedup=9.0)


def test_calibrate_command_stores_policy_used_by_evaluate(tmp_path, capsys):
    ckpt, dev = train_tiny(tmp_path, "--calibration-fraction", "0.25")
    assert main(["calibrate", "--checkpoint", str(ckpt), "--target-speedup", "1.5"]) == 0
    stored = json.loads((ckpt / "metabert_config.json").read_text())["exit_policy"]
    assert stored["name"] == "entropy" and "held-out 25%" in stored["chosen_on"]
    assert stored["calibration_layer_speedup"] >= 1.5
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--task", "custom", "--dev-file", str(dev),
                 "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["timed"]["threshold"] == stored["threshold"]
    assert report["policy_source"].startswith("calibrated")
    # a file given explicitly
    assert main(["calibrate", "--checkpoint", str(ckpt), "--max-drop", "1", "--policy", "patience",
                 "--calibration-data", str(dev)]) == 0
    stored = json.loads((ckpt / "metabert_config.json").read_text())["exit_policy"]
    assert stored["name"] == "patience" and "--calibration-data" in stored["chosen_on"]
