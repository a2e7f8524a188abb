"""Plain full-model runners: the model a user would run without metabert, to time early exit against.

Each is a full-model-only runner (``full``, ``name``, ``plain = True`` and its ``backend``;
``engine.loop.run_full`` and ``bench.timing.Variant`` with no policy run it): a Hugging Face
``*ForSequenceClassification`` in eager PyTorch (``TransformersRunner``); a model exported the plain
way (``torch.onnx.export`` of the whole classifier, then ONNX Runtime's ``quantize_dynamic`` for
INT8) in ONNX Runtime (``OrtFullRunner``); and for a metabert checkpoint, the recipes a deploying
user would pick for its full model (``plain_runners``): ORT INT8 of the plain export, ORT's
transformer optimizer then INT8, OpenVINO INT8 by NNCF (an optional extra), PyTorch dynamic INT8.
Nothing here knows about exits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TransformersRunner:
    """A ``*ForSequenceClassification`` run as its library runs it (eager PyTorch, inference mode)."""

    plain, backend = True, "torch"

    def __init__(self, model, name: str = "plain-eager"):
        self.model = model.eval()
        self.name = name
        self.num_layers = model.config.num_hidden_layers

    def full(self, inputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(**{k: v for k, v in inputs.items() if k in INPUTS}).logits


def export_classifier(model, tokenizer, path: str | Path) -> Path:
    """The whole classifier as one ONNX graph (``torch.onnx.export``, dynamic batch and length):
    what a user gets from the plain export recipe."""
    from metabert.deploy.onnx_export import SEQ, _export

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = tokenizer(["an example sentence", "and a second, longer example sentence"], padding=True, return_tensors="pt")
    names = [k for k in INPUTS if k in enc]  # the classifier's own inputs (DistilBERT: no token types)

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).logits

    with torch.no_grad():
        _export(Logits(model.eval()), tuple(enc[k] for k in names), path, names, ["logits"],
                {**{k: SEQ for k in names}, "logits": {0: "batch"}})
    return path


def quantize_classifier(source: str | Path, target: str | Path, per_channel: bool = True) -> Path:
    """ONNX Runtime's dynamic INT8 quantization of a plain export (the one call its docs suggest);
    tensors whose type shape inference cannot see through ORT's contrib ops (an optimized graph)
    are taken as float, as its error message advises."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return Path(target)


class OrtFullRunner:
    """One ONNX graph of a whole classifier in ONNX Runtime (all optimisations on, ``threads``; the
    same session options as the early-exit runner's, ``ort_runner.session_options``)."""

    plain, backend = True, "onnxruntime"

    def __init__(self, path: str | Path, name: str, num_layers: int, threads: int | None = None):
        import onnxruntime as ort

        from metabert.deploy.ort_runner import session_options

        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.name, self.num_layers, self.host_threads = name, num_layers, 1

    def full(self, inputs) -> torch.Tensor:
        from metabert.deploy.ort_runner import token_feeds

        feeds = token_feeds(inputs, self.inputs)
        return torch.from_numpy(self.session.run(None, feeds)[0])


# ------------------------------------------------------------------ the plain recipes of a checkpoint
# What a deploying user would do with the full model of a metabert checkpoint (every layer, the last
# exit) without metabert's early exit: each a full-model runner named ``plain-*``, ``plain = True``.
PLAIN = ("plain-ort-int8", "plain-ort-opt-int8", "plain-openvino-int8", "plain-torch-int8")


def export_full(model, path: str | Path) -> Path:
    """A checkpoint's full model (every layer, the last exit) as one plain ONNX graph: the export's
    own full graph as ``torch.onnx.export`` writes it (``onnx_export._Full``), dynamic batch and length."""
    from metabert.deploy.onnx_export import SEQ, TOKENS, _export, _Full, sample_inputs

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = sample_inputs(model.tokenizer)
    with torch.no_grad():
        _export(_Full(model.eval()), tuple(enc[k] for k in TOKENS), path, list(TOKENS), ["logits"],
                {**{k: SEQ for k in TOKENS}, "logits": {0: "batch"}})
    return path


def _optimize(source: str, target: str, num_heads: int, hidden_size: int, opt_level: int) -> None:
    from onnxruntime.transformers import optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimizer.optimize_model(source, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                             opt_level=opt_level)
        optimized.save_model_to_file(target)


def optimize_transformer(source: str | Path, target: str | Path, num_heads: int, hidden_size: int,
                         opt_level: int = 2) -> Path:
    """ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``, model type bert):
    its fusions, then ORT's graph optimisations at ``opt_level``. In a fresh process: the optimizer
    opens ONNX Runtime sessions of its own, which a process that set up the shared thread pool
    (``ort_runner._shared_thread_pool``) refuses."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_optimize, str(source), str(target), num_heads, hidden_size, opt_level).result()
    return Path(target)


class TorchInt8Runner:
    """PyTorch's one-call recipe: ``torch.ao.quantization.quantize_dynamic`` on every Linear layer of
    a copy of the encoder (the exit heads stay fp32), then the full model in eager mode."""

    plain, backend = True, "torch"

    def __init__(self, model, name: str = "plain-torch-int8"):
        import copy

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
            self.model = copy.deepcopy(model).eval()
            self.model.encoder = quantize_dynamic(self.model.encoder, {torch.nn.Linear}, dtype=torch.qint8)
        self.name, self.num_layers = name, model.num_layers

    def full(self, inputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.full_logits(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))


class OpenVinoRunner:
    """OpenVINO INT8: the plain ONNX export quantized post-training by NNCF (its transformer preset,
    SmoothQuant included) on calibration inputs, compiled for the CPU at ``threads``."""

    plain, backend = True, "openvino"

    def __init__(self, onnx_path: str | Path, calibration: list[dict], num_layers: int, threads: int | None = None,
                 name: str = "plain-openvino-int8"):
        import nncf
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(onnx_path))
        feeds = [{k: np.asarray(v, dtype=np.int64) for k, v in item.items() if k in INPUTS} for item in calibration]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(feeds))
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.compiled = core.compile_model(quantized, "CPU", config)
        self.inputs = [i.get_any_name() for i in self.compiled.inputs]
        self.name, self.num_layers = name, num_layers

    def full(self, inputs) -> torch.Tensor:
        from metabert.deploy.ort_runner import token_feeds

        feeds = token_feeds(inputs, self.inputs)
        return torch.from_numpy(np.asarray(self.compiled(feeds)[0]))


def plain_runners(model, names, folder: str | Path, threads: int | None = None,
                  calibration: list[dict] | None = None) -> tuple[list, dict[str, str]]:
    """The plain full-model runners ``names`` (of ``PLAIN``) for a checkpoint's ``model``, their files
    in ``folder``; (runners, notes): a recipe whose library is not installed, or that needs
    ``calibration`` inputs it was not given, is left out with a note saying why."""
    unknown = [n for n in names if n not in PLAIN]
    if unknown:
        raise ValueError(f"unknown plain recipe(s) {', '.join(unknown)}; choose from {', '.join(PLAIN)}")
    folder = Path(folder)
    runners, notes = [], {}
    onnx_names = [n for n in names if n != "plain-torch-int8"]
    fp32 = export_full(model, folder / "plain.onnx") if onnx_names else None
    for name in names:
        if name == "plain-torch-int8":
            runners.append(TorchInt8Runner(model))
        elif name == "plain-ort-int8":
            path = quantize_classifier(fp32, folder / "plain-int8.onnx")
            runners.append(OrtFullRunner(path, name, model.num_layers, threads))
        elif name == "plain-ort-opt-int8":
            config = model.encoder.config
            optimized = optimize_transformer(fp32, folder / "plain-opt.onnx", config.num_attention_heads,
                                             config.hidden_size)
            runners.append(OrtFullRunner(quantize_classifier(optimized, folder / "plain-opt-int8.onnx"), name,
                                         model.num_layers, threads))
        elif name == "plain-openvino-int8":
            try:
                import nncf  # noqa: F401
                import openvino  # noqa: F401
            except ImportError:
                notes[name] = "skipped: OpenVINO and NNCF are not installed (pip install 'metabert[openvino]')"
                continue
            if not calibration:
                notes[name] = "skipped: NNCF needs calibration inputs (the checkpoint's held-out slice)"
                continue
            runners.append(OpenVinoRunner(fp32, calibration, model.num_layers, threads))
    return runners, notes
