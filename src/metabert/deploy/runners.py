"""The runners a user can deploy, by name: ``eager``, ``eager-int8``, ``ort``, ``ort-int8``, and the
single ONNX file of an ``ort`` or ``ort-int8`` export (``ort-single``, ``ort-int8-single``).

Every command that runs a model (calibrate, predict, serve, bench) builds its runner here, so that
a runner's name always means the same backend and precision, and the calibrated policy stored for
that name (``metabert.engine.resolve.record_for``) is the one it answers with.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path


from metabert.model.multi_exit import EagerRunner, MultiExitBert

log = logging.getLogger(__name__)

RUNNERS = ("eager", "eager-int8", "ort", "ort-int8", "ort-single", "ort-int8-single")


class EagerInt8Runner(EagerRunner):
    """The eager runner over a copy of the model with INT8 dynamically quantized encoder Linear
    layers, word embeddings and exit heads' dense layers (``metabert.deploy.quantize.quantize_eager``)."""

    name = "eager-int8"

    def __init__(self, model: MultiExitBert):
        from metabert.deploy.quantize import quantize_eager

        super().__init__(quantize_eager(model))


def onnx_folder_runner(folder: str | Path) -> str:
    """The runner name an exported folder is for (``ort`` or ``ort-int8``), from its metadata."""
    from metabert.deploy.onnx_export import read_meta, runner_name

    return runner_name(read_meta(folder))


def export_for(model: MultiExitBert, checkpoint: str | Path | None, runner: str, output: str | Path | None = None,
               quantize_config=None, calibration_batches=None, progress: bool = False, layers: str = "fused") -> Path:
    """Export (and for ``ort-int8`` quantize, see ``metabert.deploy.quantize.quantize_export``) ``model``
    into ``output`` (default: a temporary folder; ``layers``: see ``onnx_export.export``). The fp32
    graphs (every exit and the full graph) are checked against PyTorch (INT8 ones differ by design;
    calibration chooses γ on their own logits)."""
    from metabert.deploy.onnx_export import check_export, export
    from metabert.deploy.ort_runner import OrtMultiExit

    if runner not in ("ort", "ort-int8"):
        raise ValueError(f"only the ort runners are exported, not {runner!r}")
    int8 = runner == "ort-int8"
    fp32 = export(model, checkpoint, temporary_folder("metabert-onnx-") if int8 or output is None else output,
                  progress=progress, layers=layers)
    diff = check_export(model, OrtMultiExit(fp32))
    if diff > 1e-4:
        raise ValueError(f"exported graphs differ from PyTorch by {diff:.2e} (> 1e-4)")
    log.info("exported %d layers with their exits to %s; max |PyTorch - ORT| over every exit's logits and the "
             "full graph's: %.2e",
             model.num_layers, fp32, diff)
    if not int8:
        return fp32
    from metabert.deploy.quantize import quantize_export

    try:
        return quantize_export(fp32, output or temporary_folder("metabert-onnx-int8-"), quantize_config,
                               calibration_batches, progress=progress)
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
    from metabert.deploy.ort_runner import OrtMultiExit

    base = name.removesuffix("-single")  # the single file lives in its folder's export
    if onnx is None:
        log.info("exporting the checkpoint for %s to a temporary folder (give --onnx to reuse an export)", name)
        onnx = export_for(model, checkpoint, base)
    found = onnx_folder_runner(onnx)
    if found != base:
        raise ValueError(f"{onnx} is an export for {found}, not {base} "
                         f"({'export with --quantize int8' if base == 'ort-int8' else 'export without --quantize'})")
    if name == base:
        return OrtMultiExit(onnx, threads=threads)
    from metabert.deploy.single_file import FILE_NAME, SingleFileRunner, write

    if not (Path(onnx) / FILE_NAME).is_file():
        log.info("writing %s into %s", FILE_NAME, onnx)
        write(onnx, checkpoint=checkpoint)
    return SingleFileRunner(onnx, threads=threads)
