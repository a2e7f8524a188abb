"""A newcomer's first hour: train on a GLUE task, then predict on that task's own dev file with no
other step; every long command takes --progress/--no-progress; the default calibration slice is
large enough for the default promise on small files."""

import json

import pytest

from conftest import make_tiny
from metabert.cli import build_parser, main
from metabert.data.tasks import GLUE_TASKS, calibration_count, glue_file, load_glue

TRAINED = ("sst2", "mrpc", "rte", "cola")  # the tasks whose training file the GLUE folder holds
DEV_ONLY = ("qnli", "mnli")
LONG_COMMANDS = ("train", "evaluate", "calibrate", "validate-calibration", "export", "bench", "curves", "predict",
                 "reproduce", "fuzz-server")


def dev_rows(task: str, glue_dir) -> int:
    return len(load_glue(task, "dev", str(glue_dir)))


@pytest.mark.parametrize("task", TRAINED)
def test_train_then_predict_on_the_tasks_own_dev_file(task, glue_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--task", task, "--model", "tiny", "--epochs", "1", "--max-train-samples", "32",
                 "--batch-size", "16", "--output", str(ckpt), "--no-progress", "--no-calibrate"]) == 0
    out = tmp_path / "pred.jsonl"
    dev = glue_file(task, "dev", str(glue_dir))
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(dev), "--output", str(out), "--no-progress"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == dev_rows(task, glue_dir)
    assert {r["label"] for r in lines} <= set(GLUE_TASKS[task].labels)
    first_data_line = 1 if task == "cola" else 2  # CoLA's files have no header
    assert lines[0]["line"] == first_data_line
    assert f"{len(lines)} rows predicted, 0 skipped" in capsys.readouterr().err


@pytest.mark.parametrize("task", DEV_ONLY)
def test_a_checkpoint_of_a_dev_only_task_predicts_its_dev_file(task, glue_dir, tmp_path):
    spec = GLUE_TASKS[task]
    model = make_tiny(spec.labels)
    model.with_config(task={"name": task, "folder": spec.folder, "text_columns": list(spec.text_columns),
                            "label_column": spec.label_column})  # as a checkpoint written before 0.2 stores it
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "pred.jsonl"
    dev = glue_file(task, "dev", str(glue_dir))
    assert main(["predict", "--checkpoint", str(tmp_path / "ckpt"), "--input", str(dev), "--output", str(out),
                 "--threshold", "0", "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == dev_rows(task, glue_dir)


@pytest.mark.parametrize("command", LONG_COMMANDS)
def test_every_long_command_takes_progress_flags(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    flags = {flag for action in sub._actions for flag in action.option_strings}
    assert {"--progress", "--no-progress"} <= flags


def test_the_default_calibration_slice_grows_on_small_files_within_a_cap():
    assert calibration_count(67_349) == 3367  # 5% of SST-2's training file, as before
    assert calibration_count(4_950) == 990  # a small file: 20% of it, towards the 1,000 rows the promise needs
    assert calibration_count(50_000) == 2500
    assert calibration_count(12_000) == 1000  # 5% would be 600: at least 1,000
    assert calibration_count(4_950, 0.05) == 248  # an explicit fraction is kept
