"""Plain full-model runners: the model a user would run without metabert, to time early exit against.

Each is a full-model-only runner (``full`` and ``name``; ``engine.loop.run_full`` and
``bench.timing.Variant`` with no policy run it): a Hugging Face ``*ForSequenceClassification`` in
eager PyTorch (``TransformersRunner``), and one exported the plain way (``torch.onnx.export`` of the
whole classifier, then ONNX Runtime's ``quantize_dynamic`` for INT8) in ONNX Runtime
(``OrtFullRunner``). Nothing here knows about exits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TransformersRunner:
    """A ``*ForSequenceClassification`` run as its library runs it (eager PyTorch, inference mode)."""

    def __init__(self, model, name: str = "plain-eager"):
        self.model = model.eval()
        self.name = name
        self.num_layers = model.config.num_hidden_layers

    def full(self, inputs) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(**{k: v for k, v in inputs.items() if k in INPUTS}).logits


def export_classifier(model, tokenizer, path: str | Path, opset: int = 17) -> Path:
    """The whole classifier as one ONNX graph (``torch.onnx.export``, dynamic batch and length):
    what a user gets from the plain export recipe."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = tokenizer(["an example sentence", "and a second, longer example sentence"], padding=True, return_tensors="pt")
    names = [k for k in INPUTS if k in enc]
    seq = {0: "batch", 1: "sequence"}

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args))).logits

    wrapper = Logits(model.eval()).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(enc[k] for k in names), str(path), input_names=names, output_names=["logits"],
                          dynamic_axes={**{k: seq for k in names}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    return path


def quantize_classifier(source: str | Path, target: str | Path, per_channel: bool = True) -> Path:
    """ONNX Runtime's dynamic INT8 quantization of a plain export (the one call its docs suggest)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    return Path(target)


class OrtFullRunner:
    """One ONNX graph of a whole classifier in ONNX Runtime (all optimisations on, ``threads``; the
    same session options as the early-exit runner's, ``ort_runner.session_options``)."""

    def __init__(self, path: str | Path, name: str, num_layers: int, threads: int | None = None):
        import onnxruntime as ort

        from metabert.deploy.ort_runner import session_options

        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.name, self.num_layers, self.host_threads = name, num_layers, 1

    def full(self, inputs) -> torch.Tensor:
        feeds = {k: np.asarray(inputs[k], dtype=np.int64) for k in self.inputs if k in inputs}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return torch.from_numpy(self.session.run(None, feeds)[0])
