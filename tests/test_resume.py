"""A training run killed with SIGKILL mid-epoch and resumed ends with the same weights."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from metabert.cli import main
from metabert.training.state import read_log


def write_data(tmp_path):
    rows = [(f"sentence number {i} " + "word " * (i % 7), "pos" if i % 3 else "neg") for i in range(120)]
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    return path


def args_for(data, out, extra=()):
    return ["train", "--task", "custom", "--train-file", str(data), "--dev-file", str(data), "--text-columns", "text",
            "--label-column", "label", "--model", "tiny", "--epochs", "3", "--batch-size", "4", "--save-every", "3",
            "--learning-rate", "1e-3", "--output", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("extra", [(), ("--method", "meta", "--meta-optimizer", "adam", "--meta-support-size", "1")],
                         ids=["joint", "meta-adam"])  # meta-adam: the meta-optimiser's moments are restored too
def test_sigkill_then_resume_gives_the_same_weights(tmp_path, extra):
    data = write_data(tmp_path)
    torch.set_num_threads(1)
    assert main(args_for(data, tmp_path / "straight", extra)) == 0
    assert not (tmp_path / "straight.state").exists()  # removed when training ends

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys, torch; torch.set_num_threads(1); from metabert.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *args_for(data, killed, extra)], env=env)
    state = tmp_path / "killed.state" / "state.pt"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:  # kill once a mid-epoch state is on disk
        try:
            run = torch.load(state, weights_only=False)["run"]
        except (FileNotFoundError, EOFError, RuntimeError):
            continue
        if run["epoch"] >= 1 and run["batch"] > 0:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    run = torch.load(state, weights_only=False)["run"]
    assert run["batch"] > 0  # it stopped mid-epoch

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    log_b = (killed / "log.jsonl").read_text().splitlines()
    assert len(log_a) == len(log_b) == 3
    assert '"resumed_at_batch": null' not in log_b[run["epoch"]]  # that epoch was finished after the restart
    # the resumed epoch's loss and meta diagnostics cover the steps before the cut too
    for a_rec, b_rec in zip(read_log(tmp_path / "straight"), read_log(killed)):
        assert a_rec["train_loss"] == pytest.approx(b_rec["train_loss"])
        assert ("meta" in a_rec) == ("meta" in b_rec) == ("--method" in extra)
        if "meta" in a_rec:
            assert a_rec["meta"] == pytest.approx(b_rec["meta"])


def test_resume_without_state_says_so(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
