"""Exit-aware ONNX Runtime inference.

``export`` writes the embeddings, every layer with its exit head, and (as the baseline) the whole
model with its last exit, as separate ONNX graphs. ``OrtMultiExit`` runs the early-exit loop over
them in ONNX Runtime, batched and per sample as ``MultiExitBert.early_exit`` does: after each layer
the policy decides which rows leave, and only the others go on to the next graph.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metabert.exits import ExitPolicy, policy_from_dict
from metabert.modeling import CONFIG_NAME, EarlyExitOutput, MultiExitBert, additive_mask

log = logging.getLogger(__name__)
META_NAME = "onnx_meta.json"


class _Embed(nn.Module):
    def __init__(self, model: MultiExitBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model.embed(input_ids, token_type_ids)
        return hidden, additive_mask(attention_mask, hidden.dtype)


class _Layer(nn.Module):
    """Layer i and exit i: (hidden, additive mask, 0/1 mask) -> (next hidden, exit logits)."""

    def __init__(self, model: MultiExitBert, index: int):
        super().__init__()
        self.model, self.index = model, index

    def forward(self, hidden, mask, attention_mask):
        hidden = self.model.encoder.encoder.layer[self.index](hidden, attention_mask=mask)
        return hidden, self.model.exits[self.index](self.model.pool(hidden, attention_mask))


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


def export(model: MultiExitBert, checkpoint: str | Path | None, output: str | Path) -> Path:
    """Write the graphs, ``onnx_meta.json``, the tokenizer and the metabert config to ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    tok = model.tokenizer(["an example sentence", "and a second, longer example sentence"], padding=True,
                          return_tensors="pt")
    ids, att = tok["input_ids"], tok["attention_mask"]
    types = tok.get("token_type_ids", torch.zeros_like(ids))
    seq = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        _export(_Embed(model), (ids, att, types), output / "embeddings.onnx",
                ["input_ids", "attention_mask", "token_type_ids"], ["hidden", "mask"],
                {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "hidden": seq,
                 "mask": {0: "batch", 3: "sequence"}})
        hidden, mask = _Embed(model)(ids, att, types)
        for i in range(model.num_layers):
            _export(_Layer(model, i), (hidden, mask, att), output / f"layer_{i + 1}.onnx",
                    ["hidden", "mask", "attention_mask"], ["hidden_out", "logits"],
                    {"hidden": seq, "mask": {0: "batch", 3: "sequence"}, "attention_mask": seq,
                     "hidden_out": seq, "logits": {0: "batch"}})
        _export(_Full(model), (ids, att, types), output / "full.onnx",
                ["input_ids", "attention_mask", "token_type_ids"], ["logits"],
                {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "logits": {0: "batch"}})
    model.tokenizer.save_pretrained(output)
    if checkpoint is not None and (Path(checkpoint) / CONFIG_NAME).is_file():
        shutil.copy(Path(checkpoint) / CONFIG_NAME, output / CONFIG_NAME)
    else:
        model.save_config_to(output)
    meta = {"num_layers": model.num_layers, "num_labels": model.config.num_labels, "opset": 17,
            "graphs": ["embeddings.onnx"] + [f"layer_{i + 1}.onnx" for i in range(model.num_layers)] + ["full.onnx"]}
    (output / META_NAME).write_text(json.dumps(meta, indent=2))
    return output


_POOL: dict = {}


def _shared_thread_pool(threads: int | None) -> bool:
    """One intra-op thread pool for all our sessions (the early-exit loop hops between 8 of them;
    per-session pools that spin would fight over the cores, and pools that do not spin wake up
    slowly). It must be set before ONNX Runtime creates its environment, once per process."""
    import os

    try:
        from onnxruntime.capi import _pybind_state as capi
    except ImportError:  # pragma: no cover
        return False
    wanted = threads or os.cpu_count() or 1
    if "threads" not in _POOL:
        try:
            capi.set_global_thread_pool_sizes(wanted, 1)
        except Exception:  # the environment exists already (another ORT user in this process)
            _POOL["threads"] = None
            return False
        _POOL["threads"] = wanted
    if _POOL["threads"] not in (None, wanted):
        log.warning("ONNX Runtime's shared thread pool has %s threads already; %s asked", _POOL["threads"], wanted)
    return _POOL["threads"] is not None


class OrtMultiExit:
    """ONNX Runtime sessions over an exported folder; the same API as the PyTorch model's inference."""

    def __init__(self, directory: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        directory = Path(directory)
        shared = _shared_thread_pool(threads)
        if not (directory / META_NAME).is_file():
            raise FileNotFoundError(f"{directory} is not an exported metabert ONNX folder (no {META_NAME}); "
                                    "run `metabert export --format onnx` first")
        self.meta = json.loads((directory / META_NAME).read_text())
        self.config = json.loads((directory / CONFIG_NAME).read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if shared:
            options.use_per_session_threads = False
        else:  # each session has its own pool: spinning pools of 8 sessions would fight over the cores
            if threads:
                options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")

        def session(name):
            return ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])

        self.embeddings = session("embeddings.onnx")
        self.layers = [session(f"layer_{i + 1}.onnx") for i in range(self.meta["num_layers"])]
        self.full = session("full.onnx")
        self.num_layers = self.meta["num_layers"]

    def default_policy(self) -> ExitPolicy:
        stored = self.config.get("exit_policy")
        if not stored:
            raise ValueError("no exit policy given and the exported checkpoint was not calibrated")
        return policy_from_dict(stored)

    @staticmethod
    def _feeds(input_ids, attention_mask, token_type_ids):
        ids = np.asarray(input_ids, dtype=np.int64)
        att = np.asarray(attention_mask, dtype=np.int64)
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
        return ids, att, types

    def full_logits(self, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
        ids, att, types = self._feeds(input_ids, attention_mask, token_type_ids)
        return self.full.run(None, {"input_ids": ids, "attention_mask": att, "token_type_ids": types})[0]

    def all_exit_logits(self, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
        """Every exit's logits (L, B, C), for checking the export against PyTorch."""
        ids, att, types = self._feeds(input_ids, attention_mask, token_type_ids)
        hidden, mask = self.embeddings.run(None, {"input_ids": ids, "attention_mask": att, "token_type_ids": types})
        out = []
        for layer in self.layers:
            hidden, logits = layer.run(None, {"hidden": hidden, "mask": mask, "attention_mask": att})
            out.append(logits)
        return np.stack(out)

    def early_exit(self, input_ids, attention_mask, token_type_ids=None, policy: ExitPolicy | None = None):
        """Per-sample batched early exit in ONNX Runtime (see ``MultiExitBert.early_exit``)."""
        policy = policy or self.default_policy()
        ids, att, types = self._feeds(input_ids, attention_mask, token_type_ids)
        batch = ids.shape[0]
        hidden, mask = self.embeddings.run(None, {"input_ids": ids, "attention_mask": att, "token_type_ids": types})
        rows = np.arange(batch)
        state = policy.init_state(batch)
        out_logits = np.zeros((batch, self.meta["num_labels"]), dtype=np.float32)
        exit_layer = np.full(batch, self.num_layers, dtype=np.int64)
        for i, layer in enumerate(self.layers, start=1):
            hidden, logits = layer.run(None, {"hidden": hidden, "mask": mask, "attention_mask": att})
            if i == self.num_layers:
                out_logits[rows] = logits
                break
            done_t, state = policy.step(torch.from_numpy(logits), state)
            done = done_t.numpy()
            leaving = int(done.sum())
            if leaving == 0:
                continue
            out_logits[rows[done]] = logits[done]
            exit_layer[rows[done]] = i
            if leaving == len(rows):
                break
            keep = ~done
            rows, hidden, mask, att, state = rows[keep], hidden[keep], mask[keep], att[keep], state[torch.from_numpy(keep)]
        return EarlyExitOutput(logits=torch.from_numpy(out_logits), exit_layer=torch.from_numpy(exit_layer))
