"""Two CPU processes (torchrun, gloo) train like one process with the same global batch."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny
from metabert.cli import main
from metabert.training.distributed import World, shard
from test_resume import write_data


def common(data, out, method="joint"):
    return ["train", "--method", method, "--task", "custom", "--train-file", str(data), "--dev-file", str(data), "--text-columns", "text",
            "--label-column", "label", "--model", "tiny", "--epochs", "2", "--batch-size", "8",
            "--learning-rate", "1e-3", "--dropout", "0", "--backbone-dropout", "0", "--output", str(out),
            "--meta-support-size", "2", "--meta-lr", "1e-3", "--meta-inner-lr", "1e-3",
            "--no-progress"]


@pytest.mark.parametrize("method", ["joint", "meta"])
def test_two_processes_match_one(tmp_path, method):
    data = write_data(tmp_path)  # 114 training rows: the last batch of 2 rows is split unevenly too
    assert main(common(data, tmp_path / "single", method)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "metabert", *common(data, tmp_path / "ddp", method)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(tmp_path / "single" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=2e-5, rtol=1e-4), (key, (a[key] - b[key]).abs().max())
    init = make_tiny(("neg", "pos"), seed=42, backbone_dropout=0.0).state_dict()
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    assert moved > 1e-3  # training moved the weights far more than the tolerance above


def test_shard_weights_sum_to_the_whole_batch():
    batch = {"labels": torch.arange(5), "input_ids": torch.arange(10).view(5, 2)}
    parts = [shard(batch, World(r, 2)) for r in range(2)]
    assert [len(p["labels"]) for p, _ in parts] == [3, 2]
    assert sum(w for _, w in parts) / 2 == 1.0  # the all-reduce averages: sum of weights / world
    tiny = {"labels": torch.arange(1)}
    (_, w0), (p1, w1) = shard(tiny, World(0, 2)), shard(tiny, World(1, 2))
    assert (w0, w1) == (2.0, 0.0) and len(p1["labels"]) == 1  # the empty side runs one row at weight 0
