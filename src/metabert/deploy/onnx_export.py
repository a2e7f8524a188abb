"""Exit-aware ONNX export: the embeddings, every layer with its exit head, and (as the baseline) the
whole model with its last exit, as separate ONNX graphs, with ``onnx_meta.json`` saying what the
folder holds. ``metabert.deploy.ort_runner.OrtMultiExit`` runs them as the engine's runner;
``check_export`` compares every exit's logits with PyTorch.

Every family of ``metabert.model.families`` exports the same way. The embeddings graph outputs the
hidden state and every tensor of the family's ``LayerInputs`` under its own name (``Slot``): ``mask``
and ``pool`` (BERT layout, DistilBERT), plus ``rows.<key>`` and ``shared.<key>`` (DeBERTa-v2's input
mask, relative positions and relative embeddings; ModernBERT's global and sliding-window masks and
its rotary tables, ``.0``/``.1`` for cos/sin). Each layer graph takes ``hidden`` and those names
(the exporter drops what a layer does not read), so every layer graph's inputs come from the
embeddings graph's outputs alone. The family's own masking and position code (transformers'
``create_bidirectional_mask``, sliding windows, DeBERTa's relative-position buckets) is traced once,
inside the embeddings graph: the tensors it makes are data the layers read, not code they run.

BERT-layout layers are written by default with ONNX Runtime's fused attention
(``metabert.deploy.fused_layers``; ``layers="torch"`` keeps to standard operators): their ``mask`` is
then the (B, T) int32 0/1 mask, and each exit head is exported alone and joined to its layer.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from torch import nn

from metabert.model.families import LayerInputs
from metabert.model.multi_exit import CONFIG_NAME, MultiExitBert

log = logging.getLogger(__name__)
META_NAME = "onnx_meta.json"
# 2: the layer graphs take the exits' pooling weights ("pool", from the embeddings graph) instead of
# the 0/1 mask. 3: every family: the embeddings graph outputs every tensor of the family's layer
# inputs by name, the layer graphs read them by name, and onnx_meta.json describes them ("state").
# An older folder is refused with the command that re-exports it.
FORMAT = 3
TOKENS = ["input_ids", "attention_mask", "token_type_ids"]


@dataclass(frozen=True)
class Slot:
    """One tensor of ``LayerInputs`` as a named graph input: ``name`` is ``mask``, ``pool``,
    ``rows.<key>`` or ``shared.<key>``, with ``.<i>`` for item i of a tuple (ModernBERT's rotary
    (cos, sin)); ``group``, ``key`` and ``item`` say where it goes back."""

    name: str
    group: str  # "mask", "pool", "rows", "shared"
    key: str = ""
    item: int | None = None


def slots_of(inputs: LayerInputs) -> list[Slot]:
    """The named tensors of ``inputs`` in a fixed order (None entries are left out)."""
    out = [Slot("mask", "mask")] if inputs.mask is not None else []
    if inputs.pool_weights is not None:
        out.append(Slot("pool", "pool"))
    for group in ("rows", "shared"):
        for key, value in getattr(inputs, group).items():
            if isinstance(value, (tuple, list)):
                out += [Slot(f"{group}.{key}.{i}", group, key, i) for i in range(len(value))]
            elif value is not None:
                out.append(Slot(f"{group}.{key}", group, key))
    return out


def flatten(inputs: LayerInputs, slots: list[Slot]) -> tuple:
    """The tensors of ``inputs`` in the order of ``slots``."""
    def value(slot):
        if slot.group == "mask":
            return inputs.mask
        if slot.group == "pool":
            return inputs.pool_weights
        found = getattr(inputs, slot.group)[slot.key]
        return found if slot.item is None else found[slot.item]

    return tuple(value(slot) for slot in slots)


def unflatten(slots: list[Slot], tensors, like: LayerInputs) -> LayerInputs:
    """``LayerInputs`` from the tensors of ``slots`` (``like``: one whose None entries and tuple
    lengths they came from)."""
    found = dict(zip((s.name for s in slots), tensors))
    groups = {"rows": dict(like.rows), "shared": dict(like.shared)}
    for group, entries in groups.items():
        for key, value in entries.items():
            if isinstance(value, (tuple, list)):
                entries[key] = tuple(found[f"{group}.{key}.{i}"] for i in range(len(value)))
            elif value is not None:
                entries[key] = found[f"{group}.{key}"]
    return LayerInputs(found.get("mask"), found.get("pool"), groups["rows"], groups["shared"])


@dataclass(frozen=True)
class LayerState:
    """What the layers of a model read besides the hidden state, as the graphs pass it.

    slots: the named tensors, in the embeddings graph's output order (after ``hidden``).
    axes: per slot name, its dynamic axes for ``torch.onnx.export`` ({0: "batch"} for a per-row
      tensor, "sequence" on every axis sized by the length).
    example: a ``LayerInputs`` of the model (None entries, tuple lengths) to rebuild them from.
    """

    slots: list[Slot]
    axes: dict[str, dict[int, str]]
    example: LayerInputs

    @property
    def names(self) -> list[str]:
        return [slot.name for slot in self.slots]


def _padded_batch(model: MultiExitBert, batch: int, length: int) -> dict:
    """A padded batch of ``batch`` rows of ``length`` positions (row 0 full, row b b positions shorter)."""
    tok = model.tokenizer
    ids = torch.full((batch, length), int(tok.unk_token_id if tok.unk_token_id is not None else 1))
    ids[:, 0] = int(tok.cls_token_id if tok.cls_token_id is not None else 0)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(1, batch):
        mask[b, length - b:] = 0
    ids[mask == 0] = int(tok.pad_token_id or 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def layer_state(model: MultiExitBert) -> LayerState:
    """The family's ``layer_inputs`` (with masks, as for a padded batch) run on two padded batches
    of other sizes: an axis that follows the batch size is the batch axis (first, per-row tensors
    only), one that follows the length a sequence axis; nothing else may vary."""
    sizes = ((2, 5), (3, 9))
    probes = []
    with torch.no_grad():
        for batch, length in sizes:
            enc = _padded_batch(model, batch, length)
            probes.append(model.begin(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[1])
    slots = slots_of(probes[0])
    if [s.name for s in slots_of(probes[1])] != [s.name for s in slots]:
        raise ValueError("the family's layer inputs change with the batch's shape; they cannot be exported")
    axes = {}
    for slot, one, two in zip(slots, flatten(probes[0], slots), flatten(probes[1], slots)):
        pairs = list(zip(one.shape, two.shape))
        batch = [a for a, pair in enumerate(pairs) if pair == sizes[0][:1] + sizes[1][:1]]
        sequence = [a for a, pair in enumerate(pairs) if pair == sizes[0][1:] + sizes[1][1:]]
        if one.dim() != two.dim() or batch not in ([], [0]) or (batch and slot.group == "shared") or any(
                x != y and a not in batch + sequence for a, (x, y) in enumerate(pairs)):
            raise ValueError(f"layer input {slot.name!r} is {tuple(one.shape)}, then {tuple(two.shape)} for batches "
                             f"of (rows, length) {sizes}: only a leading batch axis (not for shared state) and "
                             "sequence axes may vary")
        axes[slot.name] = {**({0: "batch"} if batch else {}), **{a: "sequence" for a in sequence}}
    return LayerState(slots, axes, probes[0])


def graph_state(outputs) -> dict[str, dict]:
    """``onnx_meta.json``'s ``state`` from the embeddings graph's outputs after ``hidden`` (ONNX
    value infos): per name, ``rows`` (its first axis is the batch: the runner keeps the rows still
    running) and ``sequence_axes`` (the axes the exporter named "sequence")."""
    state = {}
    for value in outputs:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        state[value.name] = {"rows": dims[:1] == ["batch"],
                             "sequence_axes": [a for a, d in enumerate(dims) if d == "sequence"]}
    return state


class _Embed(nn.Module):
    """The embeddings and every tensor the layers read: (ids, mask, types) -> (hidden, *slots).
    ``raw_mask``: the ``mask`` slot is the (B, T) 0/1 mask as int32, as fused attention reads it."""

    def __init__(self, model: MultiExitBert, state: LayerState, raw_mask: bool = False):
        super().__init__()
        self.model, self.slots, self.raw_mask = model, state.slots, raw_mask

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden, inputs = self.model.begin(input_ids, attention_mask, token_type_ids)
        tensors = flatten(inputs, self.slots)
        if self.raw_mask:
            tensors = tuple(attention_mask.to(torch.int32) if s.name == "mask" else t
                            for s, t in zip(self.slots, tensors))
        return (hidden,) + tensors


class _Exit(nn.Module):
    """Exit i alone on its layer's output: (hidden, *slots) -> logits (the fused layers' heads)."""

    def __init__(self, model: MultiExitBert, index: int, state: LayerState):
        super().__init__()
        self.model, self.index, self.state = model, index, state

    def forward(self, hidden, *tensors):
        inputs = unflatten(self.state.slots, tensors, self.state.example)
        return self.model.exit_logits(self.index, hidden, inputs, train=False)


class _Layer(_Exit):
    """Layer i and exit i: (hidden, *slots) -> (next hidden, exit logits)."""

    def forward(self, hidden, *tensors):
        hidden = self.model.run_layer(self.index, hidden, unflatten(self.state.slots, tensors, self.state.example))
        return hidden, super().forward(hidden, *tensors)


class _Full(nn.Module):
    """The plain classifier: every layer, then the last exit only."""

    def __init__(self, model: MultiExitBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model.full_logits(input_ids, attention_mask, token_type_ids)


def _export(module: nn.Module, args: tuple, path, inputs: list[str], outputs: list[str], dynamic: dict):
    # the wrapper must be in eval mode: the exporter puts it back in its mode afterwards, and a
    # fresh nn.Module is in training mode, which would switch the model's dropout on
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path if isinstance(path, io.BytesIO) else str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)


SEQ = {0: "batch", 1: "sequence"}


def sample_inputs(tokenizer) -> dict:
    """The padded batch of two sentences the exporter traces with (token types zero where the
    tokenizer gives none)."""
    enc = tokenizer(["an example sentence", "and a second, longer example sentence"], padding=True,
                    return_tensors="pt")
    return {**enc, "token_type_ids": enc.get("token_type_ids", torch.zeros_like(enc["input_ids"]))}


def _export_embeddings(model: MultiExitBert, state: LayerState, args: tuple, output: Path, raw_mask: bool) -> None:
    axes = {**state.axes, **({"mask": SEQ} if raw_mask else {})}
    _export(_Embed(model, state, raw_mask), args, output / "embeddings.onnx", TOKENS, ["hidden"] + state.names,
            {**{name: SEQ for name in TOKENS}, "hidden": SEQ, **axes})


def _export_torch_layers(model: MultiExitBert, state: LayerState, args: tuple, output: Path, bar) -> None:
    """Every layer graph and the full graph through ``torch.onnx.export``."""
    hidden, *tensors = _Embed(model, state)(*args)
    for i in range(model.num_layers):
        _export(_Layer(model, i, state), (hidden, *tensors), output / f"layer_{i + 1}.onnx",
                ["hidden"] + state.names, ["hidden_out", "logits"],
                {"hidden": SEQ, **state.axes, "hidden_out": SEQ, "logits": {0: "batch"}})
        bar.update()
    _export(_Full(model), args, output / "full.onnx", TOKENS, ["logits"],
            {**{name: SEQ for name in TOKENS}, "logits": {0: "batch"}})
    bar.update()


def _exit_graph(model: MultiExitBert, index: int, state: LayerState, hidden, tensors):
    """Exit ``index``'s head alone as an ONNX graph (inputs ``hidden`` and the state it reads)."""
    import onnx

    buffer = io.BytesIO()
    _export(_Exit(model, index, state), (hidden, *tensors), buffer, ["hidden"] + state.names, ["logits"],
            {"hidden": SEQ, **state.axes, "logits": {0: "batch"}})
    head = onnx.load_from_string(buffer.getvalue())
    if "mask" in {i.name for i in head.graph.input}:
        raise ValueError("an exit head that reads the attention mask cannot sit on fused layers")
    return head


def _write_fused_layers(model: MultiExitBert, state: LayerState, args: tuple, output: Path, bar,
                        embeddings) -> None:
    """Every layer graph and the full graph (after the written ``embeddings`` graph) with ONNX
    Runtime's fused attention (``metabert.deploy.fused_layers``), each exit head exported through
    ``torch.onnx.export``."""
    import onnx

    from metabert.deploy import fused_layers

    hidden, *tensors = _Embed(model, state)(*args)
    for i in range(model.num_layers):
        head = _exit_graph(model, i, state, hidden, tensors)
        onnx.save(fused_layers.layer_graph(model, i, head), str(output / f"layer_{i + 1}.onnx"))
        bar.update()
    onnx.save(fused_layers.full_graph(model, embeddings, head), str(output / "full.onnx"))
    bar.update()


LAYERS = ("fused", "torch")


def export(model: MultiExitBert, checkpoint: str | Path | None, output: str | Path, progress: bool = False,
           layers: str = "fused") -> Path:
    """Write the graphs, ``onnx_meta.json``, the tokenizer and the metabert config to ``output``
    (``progress``: a bar of graphs written, on stderr). Every family: the embeddings graph computes
    the family's layer inputs once (``layer_state``), the layer graphs read them by name.

    layers: ``fused`` (default) writes each BERT-layout layer from its weights with ONNX Runtime's
      fused attention (``metabert.deploy.fused_layers``: contrib operators, ONNX Runtime only) where
      the model allows it, else ``torch``; ``torch``: ``torch.onnx.export`` of the layers (standard
      operators only). ``onnx_meta.json`` records which was written."""
    import onnx

    from metabert.deploy import fused_layers

    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    if layers == "fused" and (reason := fused_layers.unsupported(model)):
        log.info("layers exported through torch.onnx.export, without fused attention: %s", reason)
        layers = "torch"
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    state = layer_state(model)
    args = tuple(sample_inputs(model.tokenizer)[k] for k in TOKENS)
    bar = tqdm(total=model.num_layers + 2, desc="export", unit="graph", disable=not progress)
    with torch.no_grad():
        _export_embeddings(model, state, args, output, raw_mask=layers == "fused")
        embeddings = onnx.load(str(output / "embeddings.onnx"))
        bar.update()
        if layers == "fused":
            _write_fused_layers(model, state, args, output, bar, embeddings)
        else:
            _export_torch_layers(model, state, args, output, bar)
    bar.close()
    model.tokenizer.save_pretrained(output)
    if checkpoint is not None and (Path(checkpoint) / CONFIG_NAME).is_file():
        shutil.copy(Path(checkpoint) / CONFIG_NAME, output / CONFIG_NAME)
    else:
        model.save_config_to(output)
    names = [o.name for o in embeddings.graph.output][1:]
    meta = {"num_layers": model.num_layers, "num_labels": model.config.num_labels, "opset": 17, "precision": "fp32",
            "format": FORMAT, "family": model.encoder.config.model_type, "layers": layers,
            # the layer graphs' inputs besides "hidden", every one an output of the embeddings graph
            "state": graph_state(embeddings.graph.output[1:]),
            # cut trailing padding when rows leave only where nothing but the masks is sized by the
            # sequence (as metabert.model.families.trim_padding does)
            "trim_padding": "pool" in names and set(names) <= {"mask", "pool"},
            "graphs": ["embeddings.onnx"] + [f"layer_{i + 1}.onnx" for i in range(model.num_layers)] + ["full.onnx"]}
    (output / META_NAME).write_text(json.dumps(meta, indent=2))
    return output


def read_meta(folder: str | Path) -> dict:
    """An exported folder's ``onnx_meta.json``; a folder without one is refused with the command that
    writes it."""
    path = Path(folder) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported metabert ONNX folder (no {META_NAME}); "
                                "run `metabert export` first")
    return json.loads(path.read_text())


def runner_name(meta: dict) -> str:
    """The runner an exported folder is for, from its ``onnx_meta.json``: ``ort-int8`` or ``ort``."""
    return "ort-int8" if meta.get("precision") == "int8" else "ort"


def check_export(model: MultiExitBert, runtime) -> float:
    """Largest absolute difference of every exit's logits (layer graphs) and of the full graph's,
    PyTorch against ONNX Runtime, on a padded batch of three sentences of different lengths."""
    texts = ["a short one", "a somewhat longer input sentence , with punctuation and more words in it", "mid size"]
    enc = dict(model.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.inference_mode():
        ref, full = model(**enc), model.full_logits(**enc)
    return max(float((ref - runtime.all_exit_logits(enc)).abs().max()), float((full - runtime.full(enc)).abs().max()))
