"""The state of a training run on disk: the resumable state saved beside the checkpoint (weights,
optimizers, scheduler, RNG states and position), and the log of every evaluation."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

RESUME_FREE = ("save_every",)  # options that may change between a run and its resumption


def state_path(output: Path) -> Path:
    """Where the resumable training state lives: beside the checkpoint, removed when training ends."""
    return output.with_name(output.name + ".state")


def state_file(output: Path) -> Path:
    """The saved training state of the run whose checkpoint folder is ``output`` (present only while
    a run started with ``save_every`` is unfinished)."""
    return state_path(output) / "state.pt"


def save_state(directory: Path, config, model, optimizers: dict, scheduler, state) -> None:
    """Everything needed to continue exactly: weights, optimizers, scheduler, RNG states, position."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({
        "config": config.to_dict(), "model": model.state_dict(),
        **{name: opt.state_dict() for name, opt in optimizers.items()},
        "scheduler": scheduler.state_dict(), "run": asdict(state), "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
    }, tmp / "state.pt")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_state(directory: Path, config, model, optimizers: dict, scheduler) -> dict:
    path = directory / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist (was the run started with "
                                "--save-every, and has it finished already?)")
    state = torch.load(path, weights_only=False)
    stored = {k: v for k, v in state["config"].items() if k not in RESUME_FREE}
    given = {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE}
    changed = sorted(k for k in given if json.dumps(given[k]) != json.dumps(stored.get(k)))
    if changed:
        raise ValueError(f"--resume with different options than the interrupted run: {', '.join(changed)}")
    model.load_state_dict(state["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(state[name])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    return state["run"]  # the TrainState's fields


def read_log(checkpoint: str | Path) -> list[dict]:
    """Every evaluation a training run logged (``write_log``), oldest first."""
    path = Path(checkpoint) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_log(path: Path, records: list[dict]) -> None:
    """Every evaluation so far, one JSON object per line (rewritten whole, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)  # before a staged method's first checkpoint
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
