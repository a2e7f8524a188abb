"""Exit-aware ONNX Runtime inference.

``export`` writes the embeddings, every layer with its exit head, and (as the baseline) the whole
model with its last exit, as separate ONNX graphs. ``OrtMultiExit`` is the engine's runner over
them: ``metabert.engine.run`` steps it layer by layer as it does the eager model, so that after each
layer the policy decides which rows leave and only the others go on to the next graph.
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

from metabert.adapters import LayerInputs, additive_mask, pool_weights
from metabert.modeling import CONFIG_NAME, MultiExitBert

log = logging.getLogger(__name__)
META_NAME = "onnx_meta.json"
# 2: the layer graphs take the exits' pooling weights ("pool", from the embeddings graph) instead of
# the 0/1 mask. An older folder is refused with the command that re-exports it.
FORMAT = 2
EXPORTABLE = ("bert", "roberta", "xlm-roberta", "electra")  # one additive mask is all their layers need


class _Embed(nn.Module):
    """Embeddings and what every layer needs: the mask as the layers take it (``raw_mask``: the
    (B, T) 0/1 mask as int32, for fused attention; else the additive (B, 1, 1, T) mask) and the
    exits' pooling weights."""

    def __init__(self, model: MultiExitBert, raw_mask: bool = False):
        super().__init__()
        self.model, self.raw_mask = model, raw_mask

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.model.embed(input_ids, token_type_ids)
        mask = attention_mask.to(torch.int32) if self.raw_mask else additive_mask(attention_mask, hidden.dtype)
        return hidden, mask, pool_weights(attention_mask, hidden.dtype)


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


LAYERS = ("fused", "torch")


def export(model: MultiExitBert, checkpoint: str | Path | None, output: str | Path, layers: str = "fused",
           attention: str | None = None, skip_norms: bool = False) -> Path:
    """Write the graphs, ``onnx_meta.json``, the tokenizer and the metabert config to ``output``.

    layers: ``fused`` (default) writes each layer from its weights with ONNX Runtime's attention
      kernel (``metabert.deploy.fused_layers``) where the model's layers allow it, else falls back to
      ``torch``: ``torch.onnx.export`` of the layers (about 30 unfused nodes each).
      ``onnx_meta.json`` records which was written.
    attention, skip_norms: the fused layers' attention kernel and norms (``fused_layers.layer``;
      the defaults measured fastest, the others are there to measure them: benchmarks/fused_attention.py)."""
    from metabert.deploy import fused_layers

    attention = attention or fused_layers.DEFAULT_ATTENTION

    family = model.encoder.config.model_type
    if family not in EXPORTABLE:
        raise ValueError(f"ONNX export supports the BERT-layout families ({', '.join(EXPORTABLE)}); "
                         f"this model is {family!r}")
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
    if layers == "fused" and (reason := fused_layers.unsupported(model)):
        log.info("layers exported unfused through torch.onnx.export: %s", reason)
        layers = "torch"
    fused = layers == "fused"
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    tok = model.tokenizer(["an example sentence", "and a second, longer example sentence"], padding=True,
                          return_tensors="pt")
    ids, att = tok["input_ids"], tok["attention_mask"]
    types = tok.get("token_type_ids", torch.zeros_like(ids))
    seq = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        raw = fused and fused_layers.raw_mask(attention)
        _export(_Embed(model, raw_mask=raw), (ids, att, types), output / "embeddings.onnx",
                ["input_ids", "attention_mask", "token_type_ids"], ["hidden", "mask", "pool"],
                {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "hidden": seq,
                 "mask": seq if raw else {0: "batch", 3: "sequence"}, "pool": seq})
        if fused:
            import onnx

            for i in range(model.num_layers):
                onnx.save(fused_layers.layer_graph(model, i, attention, skip_norms), str(output / f"layer_{i + 1}.onnx"))
            embeddings = onnx.load(str(output / "embeddings.onnx"))
            onnx.save(fused_layers.full_graph(model, embeddings, attention, skip_norms), str(output / "full.onnx"))
        else:
            _export_torch_layers(model, output, (ids, att, types), seq)
    model.tokenizer.save_pretrained(output)
    if checkpoint is not None and (Path(checkpoint) / CONFIG_NAME).is_file():
        shutil.copy(Path(checkpoint) / CONFIG_NAME, output / CONFIG_NAME)
    else:
        model.save_config_to(output)
    meta = {"num_layers": model.num_layers, "num_labels": model.config.num_labels, "opset": 17, "precision": "fp32",
            "format": FORMAT, "layers": layers,
            **({"attention": attention, "skip_norms": skip_norms} if fused else {}),
            "graphs": ["embeddings.onnx"] + [f"layer_{i + 1}.onnx" for i in range(model.num_layers)] + ["full.onnx"]}
    (output / META_NAME).write_text(json.dumps(meta, indent=2))
    return output


def _export_torch_layers(model: MultiExitBert, output: Path, args: tuple, seq: dict) -> None:
    """The layer graphs and the full graph through ``torch.onnx.export`` (``layers="torch"``)."""
    hidden, mask, pool = _Embed(model)(*args)
    for i in range(model.num_layers):
        _export(_Layer(model, i), (hidden, mask, pool), output / f"layer_{i + 1}.onnx",
                ["hidden", "mask", "pool"], ["hidden_out", "logits"],
                {"hidden": seq, "mask": {0: "batch", 3: "sequence"}, "pool": seq,
                 "hidden_out": seq, "logits": {0: "batch"}})
    _export(_Full(model), args, output / "full.onnx",
            ["input_ids", "attention_mask", "token_type_ids"], ["logits"],
            {"input_ids": seq, "attention_mask": seq, "token_type_ids": seq, "logits": {0: "batch"}})


# ONNX Runtime graph fusions left out of our sessions: on CPU their kernels are slower than the ops
# they replace. results/bench/ort_kernels.json (benchmarks/ort_kernels.py, Intel Xeon with AMX,
# 1 thread, fastest of 50 calls): bias + residual + layer norm of 25 x 384 floats 48.6 µs as
# SkipLayerNormalization, 14.0 as Add + Add + LayerNormalization (3335 against 1013 µs on 1920 x
# 384); bias + GELU of 25 x 1536 34.8 µs as BiasGelu, 27.0 as Add + Gelu. Left to its defaults ONNX
# Runtime fuses the plain ops into those kernels, in our graphs and in torch-exported ones.
SLOW_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")

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
    """ONNX Runtime sessions over an exported folder: a ``metabert.engine.Runner`` (``engine.run``
    drives its early exit; ``engine.run_full`` its full model)."""

    def __init__(self, directory: str | Path, threads: int | None = None, fused: bool = True,
                 disabled_fusions: tuple[str, ...] = SLOW_FUSIONS):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        directory = Path(directory)
        shared = _shared_thread_pool(threads)
        if not (directory / META_NAME).is_file():
            raise FileNotFoundError(f"{directory} is not an exported metabert ONNX folder (no {META_NAME}); "
                                    "run `metabert export --format onnx` first")
        self.meta = json.loads((directory / META_NAME).read_text())
        if self.meta.get("format", 1) != FORMAT:
            raise ValueError(f"{directory} was exported by an older metabert (ONNX folder format "
                             f"{self.meta.get('format', 1)}, this one reads {FORMAT}); export it again with "
                             "`metabert export --checkpoint CHECKPOINT --output FOLDER` (add `--quantize int8` for INT8)")
        self.config = json.loads((directory / CONFIG_NAME).read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(directory)

        def make_options(level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized_path: str | None = None):
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            if optimized_path:
                options.optimized_model_filepath = optimized_path
                options.log_severity_level = 3  # not the "hardware-specific graph" notice: it is used here and now
            if shared:
                options.use_per_session_threads = False
            else:  # each session has its own pool: spinning pools of 8 sessions would fight over the cores
                if threads:
                    options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return options

        options = make_options()

        def session(name, session_options=options):
            return ort.InferenceSession(str(directory / name), session_options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=list(disabled_fusions))

        self._make_options, self._directory, self._session = make_options, directory, session
        self.fused = fused  # batch 1 through one graph per threshold policy (metabert.onnx_fused)
        self._fused_sessions: dict = {}

        self.embeddings = session("embeddings.onnx")
        self.layers = [session(f"layer_{i + 1}.onnx") for i in range(self.meta["num_layers"])]
        # what each layer graph reads (the exporter drops an unused input: "pool" under cls pooling)
        self._layer_inputs = [{i.name for i in s.get_inputs()} for s in self.layers]
        self.full_session = session("full.onnx")
        self.num_layers = self.meta["num_layers"]
        # the runner's name says its precision: calibrated policies are stored per name
        self.name = "ort-int8" if self.meta.get("precision") == "int8" else "ort"
        self.host_threads = 1  # the engine's exit tests in torch leave the cores to ORT's pool (engine.host_threads)

    @staticmethod
    def _feeds(inputs) -> dict[str, np.ndarray]:
        ids = np.asarray(inputs["input_ids"], dtype=np.int64)
        types = inputs.get("token_type_ids")
        return {"input_ids": ids, "attention_mask": np.asarray(inputs["attention_mask"], dtype=np.int64),
                "token_type_ids": np.zeros_like(ids) if types is None else np.asarray(types, dtype=np.int64)}

    # metabert.engine.Runner: the state is (hidden, additive mask, pooling weights) as numpy arrays
    def start(self, inputs):
        hidden, mask, pool = self.embeddings.run(None, self._feeds(inputs))
        return hidden, mask, pool

    def layer_feeds(self, index, state) -> dict[str, np.ndarray]:
        """Layer graph ``index``'s inputs from the runner's state."""
        hidden, mask, pool = state
        feeds = {"hidden": hidden, "mask": mask, "pool": pool}
        return {name: value for name, value in feeds.items() if name in self._layer_inputs[index]}

    def step(self, index, state):
        hidden, logits = self.layers[index].run(None, self.layer_feeds(index, state))
        return (hidden, state[1], state[2]), torch.from_numpy(logits)

    def select(self, state, keep):
        """The kept rows, without the trailing positions that are padding in all of them (as
        ``adapters.trim_padding`` does for the eager runner)."""
        rows = keep.numpy()
        hidden, mask, pool = state
        pool = pool[rows]
        used = np.flatnonzero((pool[..., 0] != 0).any(0))
        length = int(used[-1]) + 1 if used.size else pool.shape[1]
        if length == pool.shape[1]:
            return hidden[rows], mask[rows], pool
        return (hidden[rows, :length], np.ascontiguousarray(mask[rows][..., :length]),
                np.ascontiguousarray(pool[:, :length]))

    def full(self, inputs) -> torch.Tensor:
        return torch.from_numpy(self.full_session.run(None, self._feeds(inputs))[0])

    def early_exit_one(self, inputs, policy):
        """The whole early exit of one sample in one session call (``metabert.onnx_fused``): the
        engine's batch-1 path for the threshold policies; None where it does not apply (another
        policy, a batch, ``fused=False``), and the engine steps layer by layer."""
        from metabert.engine import ExitResult
        from metabert.onnx_fused import FUSED_POLICIES, build

        if not self.fused or policy.name not in FUSED_POLICIES or int(inputs["input_ids"].shape[0]) != 1:
            return None
        session = self._fused_sessions.get(policy.name)
        if session is None:
            session = self._fused_sessions[policy.name] = self._fused_session(policy.name, build)
        feeds = self._feeds(inputs)
        feeds["threshold"] = np.array(policy.threshold, dtype=np.float32)
        logits, layer = session.run(None, feeds)
        return ExitResult(logits=torch.from_numpy(logits), exit_layer=torch.from_numpy(layer.reshape(1)))

    def _fused_session(self, policy_name: str, build):
        """The fused graph composed from the graphs as ONNX Runtime optimised them for the per-layer
        sessions, run without optimising again: the same kernels, so the same logits as the steps
        (optimised inside ``If`` branches instead, INT8 kernels were fused differently and logits
        moved by 0.1%)."""
        import tempfile

        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="metabert-fused-") as tmp:
            graphs = []
            for name in self.meta["graphs"][: 1 + self.num_layers]:
                target = str(Path(tmp) / name)
                self._session(name, self._make_options(optimized_path=target))
                graphs.append(onnx.load(target))
        graph = build(graphs, self.meta, policy_name).SerializeToString()
        options = self._make_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def all_exit_logits(self, inputs) -> torch.Tensor:
        """Every exit's logits (L, B, C), for checking the export against PyTorch."""
        state = self.start(inputs)
        out = []
        for i in range(self.num_layers):
            state, logits = self.step(i, state)
            out.append(logits)
        return torch.stack(out)


def check_export(model: MultiExitBert, runtime: OrtMultiExit) -> float:
    """Largest absolute difference of every exit's logits (layer graphs) and of the full graph's
    logits, PyTorch against ONNX Runtime, on a padded batch of three sentences of different lengths."""
    texts = ["a short one", "a somewhat longer input sentence , with punctuation and more words in it", "mid size"]
    enc = dict(model.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        ref, ref_full = model(**enc), model.full_logits(**enc)
    return max(float((ref - runtime.all_exit_logits(enc)).abs().max()),
               float((ref_full - runtime.full(enc)).abs().max()))
