"""Exit-aware ONNX export: the embeddings, every layer with its exit head, and (as the baseline) the
whole model with its last exit, as separate ONNX graphs, with ``onnx_meta.json`` saying what the
folder holds. ``metabert.deploy.ort_runner.OrtMultiExit`` runs them as the engine's runner;
``check_export`` compares every exit's logits with PyTorch.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm
from torch import nn

from metabert.model.families import LayerInputs, additive_mask, pool_weights
from metabert.model.multi_exit import CONFIG_NAME, MultiExitBert

log = logging.getLogger(__name__)
META_NAME = "onnx_meta.json"
# 2: the layer graphs take the exits' pooling weights ("pool", from the embeddings graph) instead of
# the 0/1 mask. An older folder is refused with the command that re-exports it.
FORMAT = 2
EXPORTABLE = ("bert", "roberta", "xlm-roberta", "electra")  # one additive mask is all their layers need


class _Embed(nn.Module):
    def __init__(self, model: MultiExitBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model.embed(input_ids, token_type_ids)
        return hidden, additive_mask(attention_mask, hidden.dtype), pool_weights(attention_mask, hidden.dtype)


class _Layer(nn.Module):
    """Layer i and exit i: (hidden, additive mask, pooling weights) -> (next hidden, exit logits)."""

    def __init__(self, model: MultiExitBert, index: int):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, hidden, mask, pool):
        inputs = LayerInputs(mask, pool)
        hidden = self.model.run_layer(self.index, hidden, inputs)
        return hidden, self.model.exit_logits(self.index, hidden, inputs)


class _Full(nn.Module):
    """The plain classifier: every layer, then the last exit only."""

    def __init__(self, model: MultiExitBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model.full_logits(input_ids, attention_mask, token_type_ids)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict):
    # the wrapper must be in eval mode: the exporter puts it back in its mode afterwards, and a
    # fresh nn.Module is in training mode, which would switch the model's dropout on
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)


def export(model: MultiExitBert, checkpoint: str | Path | None, output: str | Path, progress: bool = False) -> Path:
    """Write the graphs, ``onnx_meta.json``, the tokenizer and the metabert config to ``output``
    (``progress``: a bar of graphs written, on stderr)."""
    family = model.encoder.config.model_type
    if family not in EXPORTABLE:
        raise ValueError(f"ONNX export supports the BERT-layout families ({', '.join(EXPORTABLE)}); "
                         f"this model is {family!r}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    tok = model.tokenizer(["an example sentence", "and a second, longer example sentence"], padding=True,
                          return_tensors="pt")
    ids, att = tok["input_ids"], tok["attention_mask"]
    types = tok.get("token_type_ids", torch.zeros_like(ids))
    seq = {0: "batch", 1: "sequence"}
    bar = tqdm(total=model.num_layers + 2, desc="export", unit="graph", disable=not progress)
    with torch.no_grad():
        _export(_Embed(model), (ids, att, types), output / "embeddings.onnx",
                ["input_ids", "attention_mask", "token_type_ids"], ["hidden", "mask", "pool"],
                {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "hidden": seq,
                 "mask": {0: "batch", 3: "sequence"}, "pool": seq})
        bar.update()
        hidden, mask, pool = _Embed(model)(ids, att, types)
        for i in range(model.num_layers):
            _export(_Layer(model, i), (hidden, mask, pool), output / f"layer_{i + 1}.onnx",
                    ["hidden", "mask", "pool"], ["hidden_out", "logits"],
                    {"hidden": seq, "mask": {0: "batch", 3: "sequence"}, "pool": seq,
                     "hidden_out": seq, "logits": {0: "batch"}})
            bar.update()
        _export(_Full(model), (ids, att, types), output / "full.onnx",
                ["input_ids", "attention_mask", "token_type_ids"], ["logits"],
                {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "logits": {0: "batch"}})
        bar.update()
    bar.close()
    model.tokenizer.save_pretrained(output)
    if checkpoint is not None and (Path(checkpoint) / CONFIG_NAME).is_file():
        shutil.copy(Path(checkpoint) / CONFIG_NAME, output / CONFIG_NAME)
    else:
        model.save_config_to(output)
    meta = {"num_layers": model.num_layers, "num_labels": model.config.num_labels, "opset": 17, "precision": "fp32",
            "format": FORMAT,
            "graphs": ["embeddings.onnx"] + [f"layer_{i + 1}.onnx" for i in range(model.num_layers)] + ["full.onnx"]}
    (output / META_NAME).write_text(json.dumps(meta, indent=2))
    return output


def check_export(model: MultiExitBert, runtime) -> float:
    """Largest absolute difference of every exit's logits, PyTorch against ONNX Runtime, on a
    padded batch of three sentences of different lengths."""
    texts = ["a short one", "a somewhat longer input sentence , with punctuation and more words in it", "mid size"]
    enc = dict(model.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        ref = model(**enc)
    return float((ref - runtime.all_exit_logits(enc)).abs().max())
