"""Golden training runs: every registered method (and the meta options that take other paths through
the trainer) trains the tiny model for 6 steps, and its checkpoint, log and stored config must equal
the ones recorded in ``tests/golden/train_fingerprints.json`` (same torch, same seed).

The checkpoint's weights are compared by a fingerprint (per tensor: sum, sum of squares and the first
elements, in float64) within 1e-6; the log's records (but for timings) and ``train_config.json``
exactly, scores within 1e-6. To record the file again after a change that is *meant* to change
training: ``METABERT_REGENERATE_GOLDEN=1 pytest tests/test_golden_training.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metabert.training.methods import METHODS, entry
from metabert.training.config import TrainConfig
from metabert.training.trainer import train

GOLDEN = Path(__file__).parent / "golden" / "train_fingerprints.json"
REGENERATE = os.environ.get("METABERT_REGENERATE_GOLDEN") == "1"
TIMINGS = ("train_seconds", "examples_per_second", "elapsed_seconds")
TOLERANCE = 1e-6
HEAD = 3  # first elements of each tensor kept in the fingerprint

# every registered method at its defaults, and the meta options that take other paths in the loop
CASES: dict[str, dict] = {name: {"method": name} for name in sorted(METHODS)}
CASES.update({
    "meta-adam": {"method": "meta", "meta_optimizer": "adam"},  # a stateful meta-optimiser
    "meta-second-order": {"method": "meta", "meta_order": "second"},
    "meta-shared": {"method": "meta", "meta_share_gradients": True},  # the Adam step reuses before_step's grads
    "meta-warmstart": {"method": "meta", "meta_schedule": "warmstart"},  # epoch 1: meta-updates only
    "joint-matched-warmstart": {"method": "joint-matched", "meta_schedule": "warmstart"},
    "joint-no-buckets": {"method": "joint", "bucket_pool": 1, "head": "linear", "pooling": "cls"},
    "pkd-patient": {"method": "pkd", "student_layers": 3},  # tiny's 3 layers: a student deep enough for L_PT
    "gaml-unaligned": {"method": "gaml", "gaml_align": False},
})


def needs_teacher(case: str) -> bool:
    return entry(CASES[case]["method"]).needs_teacher


def write_files(folder: Path) -> tuple[Path, Path]:
    rows = [(f"sentence {i} " + "word " * (i % 5) + ("good" if i % 3 else "bad"), "pos" if i % 3 else "neg")
            for i in range(20)]
    train_file, dev_file = folder / "train.tsv", folder / "dev.tsv"
    train_file.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows))
    dev_file.write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in rows[::2]))
    return train_file, dev_file


def options(case: str, folder: Path) -> dict:
    """Two epochs of three batches of 4 (12 training rows): 6 steps, both stages of a staged method."""
    train_file, dev_file = write_files(folder)
    return {"task": "custom", "output": str(folder / "ckpt"), "model": "tiny", "train_file": str(train_file),
            "dev_file": str(dev_file), "text_columns": ["text"], "label_column": "label", "epochs": 2,
            "batch_size": 4, "max_train_samples": 12, "learning_rate": 1e-3, "seed": 7, "save_every": 0,
            "calibration_fraction": 0.05,  # the recorded runs' slice (the default now holds out more of small files)
            "meta_support_size": 1, "meta_diagnose_every": 2,
            **({"teacher": str(folder / "teacher")} if needs_teacher(case) else {}), **CASES[case]}


def fingerprint(weights: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    out = {}
    for name in sorted(weights):
        t = weights[name].detach().to(torch.float64).flatten()
        out[name] = [float(t.sum()), float(t.pow(2).sum()), *map(float, t[:HEAD])]
    return out


def run_case(case: str, folder: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions whatever the machine
    try:
        if needs_teacher(case):  # the fine-tuned full-depth model the student learns from, trained here first
            teacher = {**options(case, folder), "method": "last", "output": str(folder / "teacher")}
            train(TrainConfig.from_dict({k: v for k, v in teacher.items() if k != "student_layers"}), progress=False)
        summary = train(TrainConfig.from_dict(options(case, folder)), progress=False)
    finally:
        torch.set_num_threads(threads)
    ckpt = Path(summary["output"])
    where = str(folder)
    records = [{k: v for k, v in r.items() if k not in TIMINGS}
               for r in (json.loads(line) for line in (ckpt / "log.jsonl").read_text().splitlines())]
    stored = (ckpt / "train_config.json").read_text().replace(where, "<tmp>")
    best = {k: v for k, v in summary["best"].items() if k not in TIMINGS}
    return {"weights": fingerprint(load_file(ckpt / "model.safetensors")), "log": records,
            "train_config": stored, "best": best, "train_examples": summary["train_examples"],
            "summary_keys": sorted(summary)}


def close(got, want, path: str = "") -> None:
    """Equal, but for floats, which may differ by TOLERANCE (relative to large values)."""
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert got == pytest.approx(want, rel=TOLERANCE, abs=TOLERANCE), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (path, list(got), list(want))
        for k in want:
            close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_matches_the_golden_run(case, tmp_path):
    got = run_case(case, tmp_path)
    if REGENERATE:
        data = golden()
        data.setdefault("cases", {})[case] = got
        data["torch"] = torch.__version__
        data["cases"] = dict(sorted(data["cases"].items()))
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
        return
    data = golden()
    if data.get("torch") != torch.__version__:
        pytest.skip(f"golden runs were recorded with torch {data.get('torch')}, this is {torch.__version__}")
    assert case in data["cases"], f"no golden run for {case}: record it (see the module docstring)"
    close(got, data["cases"][case], case)


def test_every_registered_method_has_a_golden_run():
    assert set(METHODS) <= set(CASES)
    if not REGENERATE:
        assert set(golden()["cases"]) == set(CASES)
