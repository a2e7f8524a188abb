"""The runners a user can deploy, by name: ``eager``, ``eager-int8``, ``ort``, ``ort-int8``.

Every command that runs a model (calibrate, predict, serve, bench) builds its runner here, so that
a runner's name always means the same backend and precision, and the calibrated policy stored for
that name (``metabert.policy.record_for``) is the one it answers with.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from metabert.batching import Encoded, model_inputs
from metabert.modeling import EagerRunner, MultiExitBert

log = logging.getLogger(__name__)

RUNNERS = ("eager", "eager-int8", "ort", "ort-int8")


class EagerInt8Runner(EagerRunner):
    """The eager runner over a copy of the model with INT8 dynamically quantized encoder Linear
    layers, word embeddings and exit heads' dense layers (``metabert.quantize.quantize_eager``)."""

    name = "eager-int8"

    def __init__(self, model: MultiExitBert):
        from metabert.quantize import quantize_eager

        super().__init__(quantize_eager(model))


def onnx_folder_runner(folder: str | Path) -> str:
    """The runner name an exported folder is for (``ort`` or ``ort-int8``), from its metadata."""
    from metabert.onnx_runtime import META_NAME

    meta_file = Path(folder) / META_NAME
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder} is not an exported metabert ONNX folder (no {META_NAME}); "
                                "run `metabert export` first")
    return "ort-int8" if json.loads(meta_file.read_text()).get("precision") == "int8" else "ort"


def export_for(model: MultiExitBert, checkpoint: str | Path | None, runner: str, output: str | Path | None = None,
               quantize_config=None, calibration_batches=None) -> Path:
    """Export (and for ``ort-int8`` quantize, see ``metabert.quantize.quantize_export``) ``model``
    into ``output`` (default: a temporary folder). The fp32 graphs are checked against PyTorch
    (INT8 ones differ by design; calibration chooses γ on their own logits)."""
    from metabert.onnx_runtime import OrtMultiExit, check_export, export

    if runner not in ("ort", "ort-int8"):
        raise ValueError(f"only the ort runners are exported, not {runner!r}")
    int8 = runner == "ort-int8"
    fp32 = export(model, checkpoint, temporary_folder("metabert-onnx-") if int8 or output is None else output)
    diff = check_export(model, OrtMultiExit(fp32))
    if diff > 1e-4:
        raise ValueError(f"exported graphs differ from PyTorch by {diff:.2e} (> 1e-4)")
    log.info("exported %d layers with their exits to %s; max |PyTorch - ORT| over every exit's logits and the "
             "full graph's: %.2e",
             model.num_layers, fp32, diff)
    if not int8:
        return fp32
    from metabert.quantize import quantize_export

    try:
        return quantize_export(fp32, output or temporary_folder("metabert-onnx-int8-"), quantize_config,
                               calibration_batches)
    finally:
        shutil.rmtree(fp32, ignore_errors=True)  # the fp32 graphs were only the quantizer's input


def temporary_folder(prefix: str) -> Path:
    """A folder for an export nobody asked to keep (bench, predict or serve without ``--onnx``),
    removed when the process exits: each holds about 180 MB of graphs for MiniLM-L6, and runs that
    left theirs behind filled the temporary directory."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def load_runner(name: str | None, model: MultiExitBert, onnx: str | Path | None = None, checkpoint=None,
                threads: int | None = None):
    """The runner ``name`` (None: ``ort``/``ort-int8`` as the folder ``onnx`` is, else ``eager``) for
    ``model``. ORT runners read ``onnx``; without it the model is exported to a temporary folder."""
    if name is None:
        name = onnx_folder_runner(onnx) if onnx else "eager"
    if name not in RUNNERS:
        raise ValueError(f"unknown runner {name!r}; choose one of: {', '.join(RUNNERS)}")
    if onnx is not None and not name.startswith("ort"):
        raise ValueError(f"--onnx is for the ort runners, not {name!r}")
    if name == "eager":
        return EagerRunner(model)
    if name == "eager-int8":
        return EagerInt8Runner(model)
    from metabert.onnx_runtime import OrtMultiExit

    if onnx is None:
        log.info("exporting the checkpoint for %s to a temporary folder (give --onnx to reuse an export)", name)
        onnx = export_for(model, checkpoint, name)
    found = onnx_folder_runner(onnx)
    if found != name:
        raise ValueError(f"{onnx} is an export for {found}, not {name} "
                         f"({'export with --quantize int8' if name == 'ort-int8' else 'export without --quantize'})")
    return OrtMultiExit(onnx, threads=threads)


def all_exit_logits(runner, data: Encoded, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """Every exit's logits (L, N, C) for every example, in the dataset's order, through ``runner``'s
    own layer steps (what calibration chooses γ on)."""
    from metabert.evaluation import over_dataset

    def every_exit(batch):
        state, logits = runner.start(model_inputs(batch)), []
        for i in range(runner.num_layers):
            state, exit_logits = runner.step(i, state)
            logits.append(exit_logits.float())
        return torch.stack(logits)  # (L, B, C)

    return over_dataset(data, batch_size, pad_id, every_exit)
