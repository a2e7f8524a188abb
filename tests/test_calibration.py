import json

import pytest
import torch

from metabert.eval.calibrate import choose
from metabert.cli import main
from metabert.engine.policies import simulate_exits
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


def test_calibrate_max_drop_is_guaranteed_and_stores_the_promise(tmp_path, capsys):
    ckpt, dev = train_tiny(tmp_path, "--calibration-fraction", "0.25", "--no-calibrate")
    assert "exit_policy" not in json.loads((ckpt / "metabert_config.json").read_text()) or not \
        json.loads((ckpt / "metabert_config.json").read_text())["exit_policy"]
    assert main(["calibrate", "--checkpoint", str(ckpt), "--max-drop", "2", "--confidence", "0.9"]) == 0
    stored = json.loads((ckpt / "metabert_config.json").read_text())["exit_policy"]
    promise = stored["promise"]
    assert promise["kind"] == "max_drop" and promise["max_drop"] == 2 and promise["delta"] == pytest.approx(0.1)
    assert promise["calibration_size"] == 9 and promise["runner"] == "eager" and promise["metric"] == "accuracy"
    assert not promise["certified"] and stored["threshold"] == 0.0  # 9 examples cannot certify 2 points
    out = capsys.readouterr().out  # the ways out are named, each a command to run
    assert "9 calibration examples certified no early exit" in out and "needs 114" in out
    for way in ("--calibration-fraction 0.2", f"metabert calibrate --checkpoint {ckpt} --max-drop 2 --calibration-data FILE",
                "--consistency 0.99 --texts FILE", "--max-drop 2", "--confidence 0.9", "--no-guarantee"):
        assert way in out, way
    assert main(["evaluate", "--checkpoint", str(ckpt), "--task", "custom", "--dev-file", str(dev)]) == 0
    out = capsys.readouterr().out
    assert "promised at calibration: accuracy drop ≤ 2 points with confidence 0.9 (9 calibration examples" in out
    assert "measured here: drop 0.00 points" in out
    # the point estimate, as before
    assert main(["calibrate", "--checkpoint", str(ckpt), "--max-drop", "2", "--no-guarantee"]) == 0
    stored = json.loads((ckpt / "metabert_config.json").read_text())["exit_policy"]
    assert "promise" not in stored and "no guarantee" in stored["goal"]


def test_consistency_calibrates_on_unlabelled_texts(tmp_path, capsys):
    ckpt, _ = train_tiny(tmp_path, "--no-calibrate")
    texts = tmp_path / "traffic.txt"
    texts.write_text("".join(f"review number {i} was {'great' if i % 2 else 'dull'}\n" for i in range(400)))
    assert main(["calibrate", "--checkpoint", str(ckpt), "--consistency", "0.95", "--texts", str(texts)]) == 0
    stored = json.loads((ckpt / "metabert_config.json").read_text())["exit_policy"]
    promise = stored["promise"]
    assert promise["kind"] == "consistency" and promise["consistency"] == 0.95 and promise["metric"] is None
    assert promise["calibration_size"] == 400 and "disagrees with the full model" in promise["bounded"]
    assert "traffic.txt (400 unlabelled texts" in stored["chosen_on"]
    assert "calibration_score" not in stored  # no labels, no score
    texts.write_text("one\n\nthree\n")
    assert main(["calibrate", "--checkpoint", str(ckpt), "--consistency", "0.95", "--texts", str(texts)]) == 2
    assert "traffic.txt:2: empty line" in capsys.readouterr().err
    assert main(["calibrate", "--checkpoint", str(ckpt), "--max-drop", "1", "--texts", str(texts)]) == 2
    assert "goes with --consistency" in capsys.readouterr().err


def test_train_then_predict_needs_no_other_step(tmp_path, glue_dir, capsys):
    ckpt = tmp_path / "sst2"
    assert main(["train", "--task", "sst2", "--data-dir", str(glue_dir), "--model", "tiny", "--epochs", "1",
                 "--max-train-samples", "64", "--output", str(ckpt), "--no-progress"]) == 0
    assert "calibrated on the held-out 5% of SST-2/train.tsv" in capsys.readouterr().out
    promise = json.loads((ckpt / "metabert_config.json").read_text())["exit_policy"]["promise"]
    assert promise["max_drop"] == 1.0 and promise["delta"] == pytest.approx(0.05)
    assert promise["calibration_size"] == 3367
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"text": "a gorgeous, witty film"}\n{"text": "tedious and overlong"}\n')
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2] and {r["label"] for r in rows} <= {"0", "1"}
    err = capsys.readouterr().err
    assert "calibrated for eager, stored in the checkpoint" in err and "no calibrated" not in err
