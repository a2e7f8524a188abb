"""End-to-end: the CLI in-process on the tiny model and small files."""

import json

import pytest

from metabert.cli import main
from metabert.model.multi_exit import MultiExitBert
from metabert.data.tasks import calibration_count
from metabert.training.config import TrainConfig


def custom_files(tmp_path):
    rows = [("a delightful , moving film", "pos"), ("dull and lifeless", "neg"), ("great fun", "pos"),
            ("a mess", "neg"), ("wonderful acting", "pos"), ("boring", "neg")] * 6
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows[:8]))
    return train, dev


def train_tiny(tmp_path, *extra: str):
    """A 1-epoch tiny checkpoint trained on ``custom_files``; returns (checkpoint, dev file)."""
    train, dev = custom_files(tmp_path)
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--task", "custom", "--train-file", str(train), "--dev-file", str(train),
                 "--text-columns", "text", "--label-column", "label", "--model", "tiny", "--epochs", "1",
                 "--output", str(ckpt), "--no-progress", *extra]) == 0
    return ckpt, dev


def test_train_and_evaluate_custom_end_to_end(tmp_path, capsys):
    train, dev = custom_files(tmp_path)
    ckpt = tmp_path / "ckpt"
    code = main(["train", "--task", "custom", "--train-file", str(train), "--dev-file", str(train),
                 "--text-columns", "text", "--label-column", "label", "--model", "tiny", "--epochs", "2",
                 "--batch-size", "8", "--output", str(ckpt), "--no-progress", "--learning-rate", "1e-3"])
    assert code == 0
    log = [json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert len(log[0]["dev_per_exit"]) == 3
    model = MultiExitBert.from_pretrained(ckpt)
    assert model.config.label_names == ("neg", "pos")
    assert model.config.task["text_columns"] == ["text"]
    assert model.config.calibration["count"] == calibration_count(36) == 7  # 20% of a small file, held out

    # evaluate on a JSONL dev file (columns come from the checkpoint), a sweep with CSV and plot
    out = tmp_path / "eval" / "sweep.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--task", "custom", "--dev-file", str(dev),
                 "--thresholds", "0,0.3,10", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"schema_version", "task", "metric", "num_layers", "per_exit", "sweep", "timed"} <= set(report)
    assert report["schema_version"] == 2 and report["timed"] is None
    assert report["num_layers"] == 3 and [e["layer"] for e in report["per_exit"]] == [1, 2, 3]
    sweep = report["sweep"]
    assert [r["threshold"] for r in sweep] == [0, 0.3, 10]
    assert sweep[0]["layer_speedup"] == 1.0 and sweep[-1]["layer_speedup"] == 3.0
    assert sweep[0]["score"] == report["per_exit"][-1]["score"]
    assert sweep[-1]["score"] == report["per_exit"][0]["score"]
    assert out.with_suffix(".csv").read_text().startswith("policy,threshold,patience,score")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"

    single = tmp_path / "one.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--task", "custom", "--dev-file", str(dev),
                 "--threshold", "0.5", "--output", str(single)]) == 0
    timed = json.loads(single.read_text())["timed"]
    assert {"threshold", "score", "mean_exit_layer", "layer_speedup", "wall_time_s"} <= set(timed)
    assert "exit" in capsys.readouterr().out


def test_bad_input_exits_with_message(tmp_path, capsys):
    train, _ = custom_files(tmp_path)
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfine\tpos\nbroken row\n")
    code = main(["train", "--task", "custom", "--train-file", str(train), "--dev-file", str(bad),
                 "--text-columns", "text", "--label-column", "label", "--model", "tiny",
                 "--output", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    assert "bad.tsv:3: expected 2 columns, found 1" in capsys.readouterr().err
    assert main(["train", "--task", "sst2", "--data-dir", str(tmp_path / "none"), "--model", "tiny",
                 "--output", str(tmp_path / "y")]) == 2
    assert "download-glue" in capsys.readouterr().err


def test_invalid_options_name_the_field():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(task="sst2", output="x", learning_rate=-1)
    with pytest.raises(ValueError, match="method 'magic'.*joint"):
        TrainConfig(task="sst2", output="x", method="magic")


def test_module_entry_point_runs():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "metabert", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "evaluate" in done.stdout


def test_custom_columns_found_by_name_and_labels_kept_as_names(tmp_path, capsys):
    train = tmp_path / "reviews.tsv"
    rows = [("loved it", "positive"), ("hated it", "negative"), ("it was fine", "neutral")] * 8
    train.write_text("Text\tLabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--task", "custom", "--train-file", str(train), "--dev-file", str(train), "--model", "tiny",
                 "--epochs", "1", "--output", str(ckpt), "--no-progress"]) == 0
    model = MultiExitBert.from_pretrained(ckpt)
    assert model.config.task["text_columns"] == ["Text"] and model.config.task["label_column"] == "Label"
    assert model.config.label_names == ("negative", "neutral", "positive")
    src, out = tmp_path / "in.tsv", tmp_path / "out.jsonl"
    src.write_text("Text\nwhat a film\n")
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(src), "--output", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["label"] in model.config.label_names and set(row["probabilities"]) == set(model.config.label_names)


def test_custom_header_without_a_usable_column_names_file_columns_and_flag(tmp_path, capsys):
    train = tmp_path / "reviews.tsv"
    train.write_text("review\tsentiment\ngood\tpos\nbad\tneg\n")
    argv = ["train", "--task", "custom", "--train-file", str(train), "--dev-file", str(train), "--model", "tiny",
            "--epochs", "1", "--output", str(tmp_path / "ckpt"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{train}:1: no text column found among the columns ['review', 'sentiment']" in err
    assert "--text-columns" in err
    assert main([*argv, "--text-columns", "review"]) == 2  # the flag overrides; the label is still missing
    err = capsys.readouterr().err
    assert "no label column found" in err and "--label-column" in err
