"""INT8 inference: the exported ONNX graphs quantized for ONNX Runtime, and the eager model with
dynamically quantized Linear layers for PyTorch users.

ONNX Runtime (``quantize_export``): every graph of an exported folder (embeddings, each layer with
its exit, the full model) is quantized the same way, so that INT8 early exit is measured against
INT8 full. *Dynamic* quantization (weights INT8 ahead of time, activations quantized per call from
their observed range; ONNX Runtime's ``quantize_dynamic``, the one call its docs suggest for
transformers) quantizes the MatMul and Gather (embedding) nodes; *static* quantization (QDQ, ranges
fixed from calibration data) is the alternative. The exit heads' ``Gemm`` nodes are quantized too
(INT8 ``MatMulInteger``, which ONNX Runtime fuses with its scale and bias into
``DynamicQuantizeMatMul``).
docs/INT8_OPTIONS.md records what each option does to speed and to each exit's accuracy.

PyTorch (``quantize_eager``): ``torch.ao.quantization.quantize_dynamic`` on the encoder's
``nn.Linear`` layers (INT8 weights per channel, fbgemm/x86 kernels), 8-bit word embeddings, and
the exit heads' pooler dense layers (their small classifiers stay fp32).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from metabert.model.multi_exit import ExitHead

log = logging.getLogger(__name__)

METHODS = ("dynamic", "static")


@dataclass(frozen=True)
class QuantizeConfig:
    """How the graphs are quantized.

    method: ``dynamic`` (activations quantized at run time) or ``static`` (QDQ, activation ranges
      from calibration inputs).
    per_channel: one weight scale per output channel instead of one per tensor (the default: on
      SST-2 dev it keeps every exit within 0.81 point of fp32, per tensor loses up to 1.04, for about
      7% more full-model latency, 2.50 against 2.33 ms; docs/INT8_OPTIONS.md).
    reduce_range: 7-bit weights (for CPUs without VNNI, where 8-bit products can saturate).
    preprocess: ONNX Runtime's ``quant_pre_process`` (shape inference and graph optimisation) first.
    """

    method: str = "dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    preprocess: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


class _NoPreprocessAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs advice to pre-process on the root logger for every graph; we
    tried it (``QuantizeConfig.preprocess``), see docs/BENCHMARKS.md."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _quantize_graph(source: Path, target: Path, config: QuantizeConfig, feeds: list[dict] | None) -> None:
    quiet = _NoPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        _quantize(source, target, config, feeds)
    finally:
        logging.getLogger().removeFilter(quiet)


def _quantize(source: Path, target: Path, config: QuantizeConfig, feeds: list[dict] | None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="metabert-quant-") as tmp:
        model_path = source
        if config.preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            model_path = Path(tmp) / source.name
            quant_pre_process(str(source), str(model_path), skip_symbolic_shape=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if config.method == "dynamic":
                quantize_dynamic(str(model_path), str(target), weight_type=QuantType.QInt8,
                                 per_channel=config.per_channel, reduce_range=config.reduce_range)
                return
            from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

            if not feeds:
                raise ValueError(f"static quantization of {source.name} needs calibration inputs")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter(feeds)

                def get_next(self):
                    return next(self.items, None)

            quantize_static(str(model_path), str(target), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=config.per_channel, reduce_range=config.reduce_range,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def calibration_feeds(runtime, batches: Iterable[dict]) -> dict[str, list[dict]]:
    """Inputs of every graph of an fp32 ``OrtMultiExit`` for the given padded batches (for static
    quantization): {graph file name: [feeds]}."""
    out: dict[str, list[dict]] = {name: [] for name in runtime.meta["graphs"]}
    for inputs in batches:
        feeds = runtime.feeds(inputs)
        out["embeddings.onnx"].append(feeds)
        out["full.onnx"].append(feeds)
        state = runtime.start(inputs)
        for i in range(runtime.num_layers):
            out[f"layer_{i + 1}.onnx"].append(runtime.layer_feeds(i, state))
            state, _ = runtime.step(i, state)
    return out


def quantize_export(source: str | Path, output: str | Path, config: QuantizeConfig | None = None,
                    calibration_batches: Iterable[dict] | None = None, progress: bool = False) -> Path:
    """An INT8 copy of the exported folder ``source`` (``metabert.deploy.onnx_export.export``) in
    ``output``: every graph quantized by ``config``, the tokenizer and config copied, and
    ``onnx_meta.json`` recording ``precision: int8`` and the settings (the runner's name, ``ort-int8``,
    comes from it). Static quantization needs ``calibration_batches`` (padded model inputs)."""
    from metabert.deploy.onnx_export import META_NAME, read_meta
    from metabert.deploy.ort_runner import OrtMultiExit

    config = config or QuantizeConfig()
    source, output = Path(source), Path(output)
    if source.resolve() == output.resolve():
        raise ValueError("quantize into a new folder, not over the fp32 export")
    meta = read_meta(source)
    if meta.get("precision", "fp32") != "fp32":
        raise ValueError(f"{source} is already {meta['precision']}")
    feeds = None
    if config.method == "static":
        if calibration_batches is None:
            raise ValueError("static quantization needs calibration batches")
        feeds = calibration_feeds(OrtMultiExit(source), calibration_batches)
    output.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.suffix != ".onnx" and item.name != META_NAME and item.is_file():
            shutil.copy(item, output / item.name)
    jobs = [(source / name, output / name, config, feeds and feeds[name]) for name in meta["graphs"]]
    if config.method == "static":
        # the static calibrator opens ONNX Runtime sessions of its own, which a process that set up
        # our shared thread pool (onnx_runtime._shared_thread_pool) refuses: a fresh process does it
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_quantize_graph, *zip(*jobs)))
    else:
        for job in tqdm(jobs, desc="quantize", unit="graph", disable=not progress):
            _quantize_graph(*job)
    log.info("quantized %d graphs of %s (%s)", len(jobs), source, config.method)
    meta = {**meta, "precision": "int8", "quantization": asdict(config)}
    (output / META_NAME).write_text(json.dumps(meta, indent=2))
    return output


def quantize_eager(model: nn.Module, per_channel: bool = True, heads: bool = True) -> nn.Module:
    """A copy of a ``MultiExitBert`` whose encoder Linear layers are dynamically quantized to INT8
    (``torch.ao.quantization.quantize_dynamic``; ``per_channel``: one weight scale per output channel,
    as the ONNX Runtime export does by default; docs/INT8_OPTIONS.md has each exit's score and the
    speed of both) and whose word embeddings are stored in 8 bits with
    one scale per row (weight-only, as ONNX Runtime quantizes its Gather; they are half of
    MiniLM-L6's weights, so without them the INT8 model is 0.66 of the fp32 one on disk).
    ``heads``: the exit heads' pooler dense layers (H x H) are quantized the same way. At batch 1
    an exit head runs after every layer a sample passes, and its fp32 H x H weights are a third of
    an INT8 layer's bytes (MiniLM-L6: 0.56 MiB against 1.69 MiB); ``scripts/probes/int8heads.py`` (removed after commit 9fc3d93)
    measures what INT8 heads save (docs/ENGINE.md). The heads' classifiers (H x C) stay fp32, as
    do position and type embeddings (small, and their lookups pass index views that the quantized
    lookup refuses)."""
    from torch.ao.quantization import (default_dynamic_qconfig, float_qparams_weight_only_qconfig,
                                      per_channel_dynamic_qconfig, quantize_dynamic)

    quantized = copy.deepcopy(model).eval()
    words = quantized.encoder.get_input_embeddings()
    linear = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    spec = {nn.Linear: linear}
    spec.update({name: float_qparams_weight_only_qconfig for name, module in quantized.encoder.named_modules()
                 if module is words})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantized.encoder = quantize_dynamic(quantized.encoder, spec, dtype=torch.qint8)
        if heads:
            # ExitHeads with a dense layer; a classifier's own last head (metabert.model.heads) stays fp32
            pooler = [i for i, head in enumerate(quantized.exits)
                      if isinstance(head, ExitHead) and head.dense is not None]
            spec = {f"{i}.dense": linear for i in pooler}
            quantized.exits = quantize_dynamic(quantized.exits, spec, dtype=torch.qint8)
            for i in pooler:  # same module, same weights: only its fast inference path changes
                quantized.exits[i].__class__ = Int8ExitHead
    return quantized


class Int8ExitHead(ExitHead):
    """An ``ExitHead`` whose pooler dense layer ``quantize_eager`` made a dynamic INT8 module: its
    fast inference path calls that module (the fp32 one reads the Linear's weights directly)."""

    def infer(self, pooled):
        return F.linear(torch.tanh(self.dense(pooled)), self.classifier.weight, self.classifier.bias)
