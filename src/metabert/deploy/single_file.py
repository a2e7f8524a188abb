"""One ONNX file with per-sample early exit inside, batched: ``early_exit.onnx``.

``metabert export`` writes one graph per layer (with its exit head) and leaves the loop between
them, the exit test and dropping the rows that left, to metabert's engine (``metabert.engine.loop.run``).
This module composes the graphs of an exported folder (fp32 or INT8, unchanged) into one graph that
runs that loop itself, so any ONNX Runtime binding gets the early exit without metabert (the tests
run it from plain Python ``onnxruntime`` and from Node.js ``onnxruntime-node``; Triton's ONNX
Runtime backend gets a model repository, ``write_triton``):

* inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the embeddings graph takes
  it), (B, T) int64, and ``threshold`` (float scalar; ``patience``, int64 scalar, for the patience
  rules), optional: their default is stored in the file, the γ (t) calibrated for the folder's
  runner (``metabert.engine.resolve.record_for``);
* outputs ``logits`` (B, C) of the exit each sample left at, ``exit_layer`` (B,) int64 (1-based) and
  ``probabilities`` (B, C), in input order.

After layer i the policy's rule runs on exit i's logits inside the graph. Nested ``If`` nodes hold
the rest: where every row left, the ``then`` branch answers and no later layer runs; else the rows
still running are gathered (``NonZero`` + ``Gather``), the trailing positions that are padding in all
of them are cut (as ``OrtMultiExit.select`` does), layers i+1.. run on them alone, and their answers
are put back in place (``ScatterND``). Where no row left, small ``If`` nodes pass the batch on
without a copy and its answers back without a scatter. So the graph takes the engine's decisions:
same rows, same shapes at every layer (which INT8's per-batch activation ranges depend on), and a
sample that leaves at layer k costs k layers.

Before the embeddings, the columns that are padding in every row are cut too (a client that pads
every batch to a fixed length pays for its longest row only); the engine gets batches padded to
their longest row, where this cuts nothing.

Every rule of ``metabert.engine.policies`` is built, each computed as its torch ``step`` computes it, in
float32: the threshold rules (entropy, norm-entropy, max-prob) and the patience rules, whose state
(previous argmax, run length) travels with the rows. The rule's operators are standard ONNX (opset
17); the layers are the folder's, so a folder exported with fused attention (the default for the BERT
layout) brings ONNX Runtime's ``Attention``/``QAttention`` and ``export(layers="torch")`` none;
``metadata_props`` name them (``contrib_ops``), and carry the labels, the policy and γ, what the
calibration promised, the tokenizer and the precision.

Batches of one row take a path of their own (``build(batch_one=True)``, the default): the layers
chained with no row bookkeeping, as ``onnx_fused`` chains them (the bookkeeping slowed batch 1 by 3
to 9%); the layers are then in the file twice. ``write_triton`` lays the file out as a Triton model
repository (ONNX Runtime backend, dynamic batching). docs/SINGLE_FILE.md tells the rest.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from metabert.deploy.onnx_fused import renamed
from metabert.engine.policies import ExitPolicy

log = logging.getLogger(__name__)

FILE_NAME = "early_exit.onnx"
FORMAT = "metabert-early-exit/1"  # metadata_props["format"]: what a reader of the file may expect
POLICIES = ("entropy", "norm-entropy", "max-prob", "patience", "patience-entropy")
OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")
I64, I32, F32, BOOL = TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT, TensorProto.BOOL


def _const(name: str, value, dtype=I64, dims=()) -> onnx.NodeProto:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, list(dims), values))


def _out(name: str, dtype: int, shape: list | None = None) -> onnx.ValueInfoProto:
    """A (sub)graph output; ``shape`` (symbolic dims as strings) lets ONNX Runtime infer the shapes
    inside the branches, which its fusions check (without them, a layer inside a branch kept
    Add + LayerNormalization where the layer graph alone got SkipLayerNormalization)."""
    return helper.make_tensor_value_info(name, dtype, shape)


def _inline(graph: onnx.GraphProto, prefix: str, inputs: dict[str, str],
            dims: dict[str, str]) -> tuple[list, list, list, dict[str, str]]:
    """``graph``'s nodes, initializers and value_info with every name prefixed and its inputs wired
    to ``inputs``, the symbolic dimensions of its value_info renamed by ``dims`` ("batch" -> the
    rows of this level, "sequence" -> its length): (nodes, initializers, value_info, {output name:
    new name}). The exporter's shapes are what ONNX Runtime's fusions (SkipLayerNormalization and
    the like) check; inlined without them, they did not fuse, and INT8 logits moved by ~1e-3. The
    initializers stay with the nodes, in the branch that runs them: read from an enclosing graph,
    ONNX Runtime did not pre-pack them, and batch 1 ran 1.2x slower."""
    nodes, inits, outputs = renamed(graph, prefix, inputs)
    stored = {init.name for init in graph.initializer}
    infos = []
    for info in list(graph.value_info) + list(graph.output):  # outputs too: what the next graph reads
        if info.name in stored:
            continue
        new = onnx.ValueInfoProto()
        new.CopyFrom(info)
        new.name = inputs.get(info.name, prefix + info.name)
        for dim in new.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = dims.get(dim.dim_param, f"{prefix}{dim.dim_param}")
        infos.append(new)
    return nodes, inits, infos, outputs


class _Graph:
    """Nodes, initializers and value_info of one (sub)graph under construction."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.infos: list[onnx.ValueInfoProto] = []

    def add(self, op: str, inputs: list[str], output: str | list[str], **attrs) -> str | list[str]:
        outputs = [output] if isinstance(output, str) else output
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return output

    def const(self, name: str, value, dtype=I64, dims=()) -> str:
        self.nodes.append(_const(name, value, dtype, dims))
        return name

    def fill(self, like: str, value: int, name: str) -> str:
        """(R,) int64 of ``value``, R the first dimension of ``like``."""
        rows = self.add("Shape", [like], name + "_n", start=0, end=1)
        return self.add("ConstantOfShape", [rows], name, value=helper.make_tensor(name + "_v", I64, [1], [value]))

    def graph(self, name: str, outputs: list[onnx.ValueInfoProto]) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, [], outputs, self.inits, value_info=self.infos)


def _trim(g: _Graph, attention: str, tensors: dict[str, tuple[str, int]], p: str) -> dict[str, str]:
    """Nodes cutting the trailing positions that are padding in every row of ``attention`` (R, T)
    (a 0/1 mask) from ``tensors`` ({name: (value, sequence axis)}): the length kept is one past the
    last position any row attends (the last maximum of the column-wise maximum), all of T where no
    position is attended (the last maximum of zeros is the last position). Returns {name: cut value}."""
    col = g.add("ReduceMax", [attention], p + "col", axes=[0], keepdims=0)  # (T,)
    last = g.add("ArgMax", [col], p + "last", axis=0, keepdims=1, select_last_index=1)  # (1,)
    length = g.add("Add", [last, g.const(p + "one", [1], dims=[1])], p + "len")
    start = g.const(p + "start", [0], dims=[1])
    out = {}
    for name, (value, axis) in tensors.items():
        out[name] = g.add("Slice", [value, start, length, g.const(f"{p}ax_{name}", [axis], dims=[1])],
                          f"{p}{name}")
    return out


def _exit_test(g: _Graph, policy: str, logits: str, state: dict[str, str], num_labels: int,
               p: str) -> tuple[str, dict[str, str]]:
    """Nodes of ``policy``'s rule on (R, C) ``logits`` as ``metabert.engine.policies`` computes it (float32):
    (R,) bool "leave now", and the new per-row state (patience rules: ``pred``, ``runs``)."""
    def neg_entropy() -> str:  # sum p log p = -H, (R,)
        logp = g.add("LogSoftmax", [logits], p + "logp", axis=-1)
        plogp = g.add("Mul", [g.add("Exp", [logp], p + "p"), logp], p + "plogp")
        return g.add("ReduceSum", [plogp, g.const(p + "last_axis", [-1], dims=[1])], p + "negh", keepdims=0)

    if policy == "max-prob":
        probs = g.add("Softmax", [logits], p + "probs", axis=-1)
        stat = g.add("ReduceMax", [probs], p + "maxp", axes=[-1], keepdims=0)
        return g.add("Greater", [stat, "threshold"], p + "leave"), {}
    if policy == "entropy":  # H < γ, tested as -H > -γ: the same comparison in float32
        return g.add("Greater", [neg_entropy(), "neg_threshold"], p + "leave"), {}
    if policy == "norm-entropy":
        logc = g.const(p + "logc", math.log(num_labels), F32)
        stat = g.add("Div", [g.add("Neg", [neg_entropy()], p + "h"), logc], p + "nh")
        return g.add("Less", [stat, "threshold"], p + "leave"), {}
    # patience rules: state (previous argmax, length of the current run), exits.PatiencePolicy
    pred = g.add("ArgMax", [logits], p + "pred", axis=-1, keepdims=0)
    one = g.const(p + "one", 1)
    same = g.add("Equal", [pred, state["pred"]], p + "same")
    longer = g.add("Add", [state["runs"], one], p + "longer")
    if policy == "patience":
        runs = g.add("Where", [same, longer, g.add("Expand", [one, g.add("Shape", [pred], p + "R")], p + "ones")],
                     p + "runs")
        return g.add("Greater", [runs, "patience"], p + "leave"), {"pred": pred, "runs": runs}
    # patience-entropy: a run continues only after a confident exit with the same argmax; counts
    # confident exits only (H < γ)
    confident = g.add("Greater", [neg_entropy(), "neg_threshold"], p + "confident")
    agree = g.add("And", [same, g.add("Greater", [state["runs"], g.const(p + "zero", 0)], p + "was")], p + "agree")
    rows = g.add("Shape", [pred], p + "R")
    counted = g.add("Where", [agree, longer, g.add("Expand", [one, rows], p + "ones")], p + "counted")
    runs = g.add("Where", [confident, counted, g.add("Expand", [g.const(p + "zero0", 0), rows], p + "zeros")],
                 p + "runs")
    return g.add("GreaterOrEqual", [runs, "patience"], p + "leave"), {"pred": pred, "runs": runs}


def _layer(g: _Graph, layers: list[onnx.GraphProto], i: int, rows: dict[str, str], prefix: str,
           level: int | None = None) -> tuple[str, str, int | None]:
    """Append layer ``i`` with its exit (and its weights) to ``g``, its names under ``prefix``, its
    shapes in the symbols of ``level`` (default: its own; the symbols of the layer that feeds it
    must be the same, or ONNX Runtime leaves its shape arithmetic unfolded): (hidden out, logits,
    hidden size)."""
    k = i + 1 if level is None else level
    dims = next(v.type.tensor_type.shape.dim for v in layers[i].input if v.name == "hidden")
    hidden_size = dims[2].dim_value if len(dims) == 3 and dims[2].dim_value else None
    nodes, inits, infos, out = _inline(layers[i], prefix, {"hidden": rows["hidden"], "mask": rows["mask"],
                                                           "pool": rows["pool"]},
                                       {"batch": f"rows_{k}", "sequence": f"seq_{k}"})
    g.nodes += nodes
    g.inits += inits
    g.infos += infos
    return out["hidden_out"], out["logits"], hidden_size


def _chain(g: _Graph, layers: list[onnx.GraphProto], i: int, rows: dict[str, str], policy: str,
           num_labels: int) -> tuple[str, str]:
    """The batch-1 path (``build(batch_one=True)``): layer ``i`` and the rest for one row, without
    row bookkeeping (the row leaves or goes on, as ``onnx_fused`` builds it): (logits, exit layer)."""
    k = i + 1
    hidden, logits, _ = _layer(g, layers, i, rows, f"o{k}/", level=1)  # one row, one length throughout
    if k == len(layers):
        return logits, g.fill(logits, k, f"o{k}/layer")
    p = f"y{k}/"
    leave, new_state = _exit_test(g, policy, logits, {n: rows[n] for n in ("pred", "runs") if n in rows},
                                  num_labels, p)
    done = _Graph()
    done.add("Identity", [logits], f"od{k}/logits")
    done.fill(logits, k, f"od{k}/layer")
    rest = _Graph()
    after_logits, after_layer = _chain(rest, layers, i + 1, {**rows, "hidden": hidden, **new_state}, policy,
                                       num_labels)
    rest.add("Identity", [after_logits], f"or{k}/logits")
    rest.add("Identity", [after_layer], f"or{k}/layer")
    outputs = [f"y{k}/logits", f"y{k}/layer"]
    g.add("If", [leave], outputs,
          then_branch=done.graph(f"exit1_{k}", [_out(f"od{k}/logits", F32, [1, num_labels]),
                                                 _out(f"od{k}/layer", I64, [1])]),
          else_branch=rest.graph(f"after1_{k}", [_out(f"or{k}/logits", F32, [1, num_labels]),
                                                  _out(f"or{k}/layer", I64, [1])]))
    return outputs[0], outputs[1]


def _level(g: _Graph, layers: list[onnx.GraphProto], i: int, rows: dict[str, str], policy: str,
           num_labels: int, raw_mask: bool = False) -> tuple[str, str]:
    """Append to ``g`` layer ``i`` (0-based) on the rows ``rows`` ({hidden, mask, pool, attention,
    and the policy's state}), its exit test and the rest of the model for the rows that stay:
    returns the names of those rows' (R, C) logits and (R,) exit layers. ``raw_mask``: the layers'
    mask is the (B, T) int32 0/1 mask of fused attention, not the additive (B, 1, 1, T) one."""
    k = i + 1
    hidden, logits, hidden_size = _layer(g, layers, i, rows, f"l{k}/")
    if k == len(layers):
        return logits, g.fill(logits, k, f"x{k}/layer")
    p = f"x{k}/"
    leave, new_state = _exit_test(g, policy, logits, {n: rows[n] for n in ("pred", "runs") if n in rows},
                                  num_labels, p)
    flags = g.add("Cast", [leave], p + "leave_i", to=I64)
    every = g.add("Cast", [g.add("ReduceMin", [flags], p + "min", keepdims=0)], p + "all", to=BOOL)

    done = _Graph()  # every row left: exit k answers them all, no later layer runs
    done.add("Identity", [logits], f"d{k}/logits")
    done.fill(logits, k, f"d{k}/layer")

    rest = _Graph()  # some rows stay: they go on, alone, and their answers are put back in place
    q = f"r{k}/"
    some = rest.add("Cast", [rest.add("ReduceMax", [flags], q + "max", keepdims=0)], q + "any", to=BOOL)
    carried = {"hidden": hidden, "mask": rows["mask"], "pool": rows["pool"], "attention": rows["attention"],
               **new_state}
    names = list(carried)
    chosen = _Graph()  # some rows left: the others, without the padding only the leavers needed
    s = f"s{k}/"
    index = chosen.add("NonZero", [chosen.add("Not", [leave], s + "stay")], s + "nz")  # (1, R')
    flat = chosen.add("Squeeze", [index, chosen.const(s + "axis0", [0], dims=[1])], s + "idx")  # (R',)
    chosen.add("Transpose", [index], s + "column")  # (R', 1), where ScatterND puts their answers back
    picked = {n: chosen.add("Gather", [carried[n], flat], s + "g_" + n, axis=0) for n in names}
    axes = {"hidden": 1, "mask": 1 if raw_mask else 3, "pool": 1, "attention": 1}
    cut = _trim(chosen, picked["attention"], {n: (picked[n], axes[n]) for n in axes}, s + "t/")
    picked.update(cut)
    for n in names:
        chosen.add("Identity", [picked[n]], f"{s}{n}")
    every_row = _Graph()  # no row left: the batch goes on as it is
    for n in names:
        every_row.add("Identity", [carried[n]], f"a{k}/{n}")
    every_row.const(f"a{k}/column", [], dims=[0, 1])  # not read: no answer to put back
    types = {n: (I64 if n in ("attention", "pred", "runs") else F32) for n in names}
    types["mask"] = I32 if raw_mask else F32
    rows_, seq = f"rows_{k + 1}", f"seq_{k + 1}"
    shapes = {"hidden": [rows_, seq, hidden_size], "mask": [rows_, seq] if raw_mask else [rows_, 1, 1, seq],
              "pool": [rows_, seq, 1],
              "attention": [rows_, seq], "pred": [rows_], "runs": [rows_]}
    selected = [f"{q}{n}" for n in names]
    rest.add("If", [some], selected + [q + "column"],
             then_branch=chosen.graph(f"select_{k}", [_out(f"{s}{n}", types[n], shapes[n]) for n in names]
                                      + [_out(s + "column", I64, [rows_, 1])]),
             else_branch=every_row.graph(f"keep_{k}", [_out(f"a{k}/{n}", types[n], shapes[n]) for n in names]
                                         + [_out(f"a{k}/column", I64, [0, 1])]))
    after_logits, after_layer = _level(rest, layers, i + 1, dict(zip(names, selected)), policy, num_labels, raw_mask)
    back = _Graph()  # some rows had left: the others' answers go back to their places
    back.add("ScatterND", [logits, q + "column", after_logits], f"b{k}/logits")
    back.add("ScatterND", [back.fill(logits, k, f"b{k}/here"), q + "column", after_layer], f"b{k}/layer")
    same = _Graph()  # no row had left: their answers are the batch's
    same.add("Identity", [after_logits], f"n{k}/logits")
    same.add("Identity", [after_layer], f"n{k}/layer")
    rest.add("If", [some], [f"r{k}/logits", f"r{k}/layer"],
             then_branch=back.graph(f"put_back_{k}", [_out(f"b{k}/logits", F32, [f"rows_{k}", num_labels]),
                                                      _out(f"b{k}/layer", I64, [f"rows_{k}"])]),
             else_branch=same.graph(f"as_is_{k}", [_out(f"n{k}/logits", F32, [f"rows_{k}", num_labels]),
                                                   _out(f"n{k}/layer", I64, [f"rows_{k}"])]))

    outputs = [f"x{k}/logits", f"x{k}/layer"]
    g.add("If", [every], outputs,
          then_branch=done.graph(f"exit_{k}", [_out(f"d{k}/logits", F32, [f"rows_{k}", num_labels]),
                                                _out(f"d{k}/layer", I64, [f"rows_{k}"])]),
          else_branch=rest.graph(f"after_{k}", [_out(f"r{k}/logits", F32, [f"rows_{k}", num_labels]),
                                                _out(f"r{k}/layer", I64, [f"rows_{k}"])]))
    return outputs[0], outputs[1]


def build(graphs: list[onnx.ModelProto], num_labels: int, policy: ExitPolicy,
          metadata: dict[str, str] | None = None, batch_one: bool = True) -> onnx.ModelProto:
    """The single early-exit graph of ``policy`` from an exported folder's embeddings graph and
    layer graphs (``graphs``: embeddings first, then layer 1..L), with ``metadata`` as its
    ``metadata_props``. The policy's γ (and t) are the defaults of the ``threshold`` (``patience``)
    inputs. ``batch_one``: batches of one row take a path of their own, the layers chained in nested
    ``If`` nodes with no row bookkeeping (as ``onnx_fused`` chains them); the layers are then in the
    file twice (weights read from an enclosing graph were not pre-packed by ONNX Runtime, which made
    batch 1 slower than the bookkeeping it saves)."""
    if policy.name not in POLICIES:
        raise ValueError(f"the single file has the exit rules {', '.join(POLICIES)}, not {policy.name!r}")
    embed, layers = graphs[0], [m.graph for m in graphs[1:]]
    if not layers:
        raise ValueError("no layer graphs")
    for m in graphs:
        for o in m.opset_import:
            if o.domain in STANDARD_DOMAINS and o.version > OPSET:
                raise ValueError(f"the exported graphs use opset {o.version}; the single file is built at {OPSET}")
    g = _Graph()
    feeds = [i for i in embed.graph.input if i.name in ("input_ids", "attention_mask", "token_type_ids")]
    sized = {i.name: (i.name, 1) for i in feeds}
    cut = _trim(g, "attention_mask", sized, "in/")
    g.infos += [helper.make_tensor_value_info(name, I64, ["rows_1", "seq_1"]) for name in cut.values()]
    nodes, inits, infos, out = _inline(embed.graph, "e/", cut, {"batch": "rows_1", "sequence": "seq_1"})
    g.nodes += nodes
    g.inits += inits
    g.infos += infos
    rows = {"hidden": out["hidden"], "mask": out["mask"], "pool": out["pool"], "attention": cut["attention_mask"]}
    raw_mask = next(o for o in embed.graph.output if o.name == "mask").type.tensor_type.elem_type == I32
    inputs = list(feeds)
    defaults = []
    if policy.name != "patience":
        inputs.append(helper.make_tensor_value_info("threshold", F32, []))
        defaults.append(helper.make_tensor("threshold", F32, [], [policy.threshold]))
    if policy.name in ("entropy", "patience-entropy"):
        g.add("Neg", ["threshold"], "neg_threshold")
    if policy.name.startswith("patience"):
        inputs.append(helper.make_tensor_value_info("patience", I64, []))
        defaults.append(helper.make_tensor("patience", I64, [], [policy.patience]))
        rows["pred"] = g.fill(cut["input_ids"], -1, "state/pred")
        rows["runs"] = g.fill(cut["input_ids"], 0, "state/runs")
    if batch_one:
        one, many = _Graph(), _Graph()
        one_logits, one_layer = _chain(one, layers, 0, rows, policy.name, num_labels)
        one.add("Identity", [one_logits], "one/logits")
        one.add("Identity", [one_layer], "one/layer")
        many_logits, many_layer = _level(many, layers, 0, rows, policy.name, num_labels, raw_mask)
        many.add("Identity", [many_logits], "many/logits")
        many.add("Identity", [many_layer], "many/layer")
        size = g.add("Shape", [cut["input_ids"]], "in/B", start=0, end=1)
        single = g.add("Equal", [size, g.const("in/B_is", [1], dims=[1])], "in/single")
        g.add("If", [single], ["logits_", "exit_layer_"],
              then_branch=one.graph("batch_of_one", [_out("one/logits", F32, [1, num_labels]),
                                                      _out("one/layer", I64, [1])]),
              else_branch=many.graph("batch", [_out("many/logits", F32, ["rows_1", num_labels]),
                                               _out("many/layer", I64, ["rows_1"])]))
        logits, layer = "logits_", "exit_layer_"
    else:
        logits, layer = _level(g, layers, 0, rows, policy.name, num_labels, raw_mask)
    g.add("Identity", [logits], "logits")
    g.add("Identity", [layer], "exit_layer")
    g.add("Softmax", ["logits"], "probabilities", axis=-1)
    outputs = [helper.make_tensor_value_info("logits", F32, ["batch", num_labels]),
               helper.make_tensor_value_info("exit_layer", I64, ["batch"]),
               helper.make_tensor_value_info("probabilities", F32, ["batch", num_labels])]
    graph = helper.make_graph(g.nodes, f"metabert_early_exit_{policy.name}", inputs, outputs, defaults + g.inits,
                              value_info=g.infos)
    domains = {o.domain: o.version for m in graphs for o in m.opset_import}
    domains[""] = OPSET
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains.items()],
                              producer_name="metabert")
    model.ir_version = max(m.ir_version for m in graphs)
    helper.set_model_props(model, metadata or {})
    return model


def carries(meta: dict) -> bool:
    """Whether the single graph can carry an exported folder's layer state (its ``onnx_meta.json``)
    from layer to layer: the BERT layout's ``mask`` (additive (B, 1, 1, T), or fused attention's
    (B, T)) and ``pool``."""
    state = meta.get("state", {})
    return sorted(state) == ["mask", "pool"] and state["mask"]["sequence_axes"] in ([3], [1])


def contrib_ops(model: onnx.ModelProto) -> list[str]:
    """The operators of ``model`` (subgraphs included) outside the standard ONNX domain, as
    ``domain:Op``."""
    found = set()

    def visit(graph):
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                found.add(f"{node.domain}:{node.op_type}")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    return sorted(found)


TOKENIZERS = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2", "tiny": "sentence-transformers/all-MiniLM-L6-v2"}


def _tokenizer_name(backbone: str) -> str:
    """The tokenizer's public name for the backbone ``--model`` named; a local folder by its last
    component only (the file must not carry a path of the machine that wrote it)."""
    if backbone in TOKENIZERS:
        return TOKENIZERS[backbone]
    if Path(backbone).expanduser().exists() or backbone.startswith((".", "/", "~")):
        return f"local folder {Path(backbone).name!r} (its tokenizer files are saved beside the file)"
    return backbone


def _default_max_length() -> int:
    from metabert.data import DEFAULT_MAX_LENGTH

    return DEFAULT_MAX_LENGTH


def metadata(folder: Path, meta: dict, config: dict, resolved, runner: str, max_length: int,
             max_length_source: str) -> dict[str, str]:
    """The file's ``metadata_props`` (every value a string; structured ones as JSON)."""
    import metabert
    from metabert.engine.resolve import record_for

    policy = resolved.policy
    record, note = record_for(config.get("exit_policy"), runner, warn=False)
    calibrated = resolved.calibrated and bool(record)
    tok_config = folder / "tokenizer_config.json"
    tok = json.loads(tok_config.read_text()) if tok_config.is_file() else {}
    props = {
        "format": FORMAT,
        "metabert_version": metabert.__version__,
        "labels": json.dumps(list(config["label_names"])),
        "num_labels": str(meta["num_labels"]),
        "num_layers": str(meta["num_layers"]),
        "precision": meta.get("precision", "fp32"),
        "runner": runner,
        "policy": policy.name,
        "threshold": repr(float(policy.threshold)),
        "patience": str(int(policy.patience)),
        "policy_inputs": json.dumps(["threshold"] * (policy.name != "patience")
                                    + ["patience"] * policy.name.startswith("patience")),
        "policy_source": resolved.source,
        "calibrated": json.dumps(calibrated),
        "calibration_goal": record.get("goal", "") if calibrated else "",
        "calibration_promise": json.dumps(record.get("promise")) if calibrated else "null",
        "calibration_chosen_on": record.get("chosen_on", "") if calibrated else "",
        "calibration_layer_speedup": json.dumps(record.get("calibration_layer_speedup")) if calibrated else "null",
        "calibration_note": note if calibrated else "",
        "tokenizer": _tokenizer_name(str(config.get("backbone", ""))),
        "tokenizer_class": str(tok.get("tokenizer_class", "")),
        "do_lower_case": json.dumps(tok.get("do_lower_case")),
        "max_length": str(max_length),
        "max_length_source": max_length_source,
        "inputs": "input_ids, attention_mask" + (", token_type_ids" if "token_type_ids" in meta.get("inputs", ())
                                                 else "") + " (B, T) int64, padded on the right",
        "outputs": "logits (B, C) float32 of the exit taken; exit_layer (B,) int64, 1-based; "
                   "probabilities (B, C) float32",
    }
    if meta.get("quantization"):
        props["quantization"] = json.dumps(meta["quantization"])
    return props


def write(folder: str | Path, output: str | Path | None = None, policy: ExitPolicy | None = None,
          name: str | None = None, threshold: float | None = None, patience: int | None = None,
          checkpoint: str | Path | None = None, batch_one: bool = True) -> Path:
    """Write ``early_exit.onnx`` (or ``output``) for the exported folder ``folder`` (fp32 or INT8).
    The policy: ``policy``, or ``name``/``threshold``/``patience`` over the folder's calibrated
    record for its runner, by ``metabert.engine.resolve.resolve``'s precedence. ``checkpoint``: the
    checkpoint the folder was exported from, whose config holds the newest calibrated records
    (``metabert export --quantize int8`` calibrates the INT8 runner after copying the config into
    the folder) and whose ``train_config.json`` the tokenizer's max length; without it, the folder's
    config and metabert's default length. ``batch_one``: a second copy of the layers for batches of
    one row, without the row bookkeeping (``build``): the layers twice in the file (MiniLM-L6 INT8:
    36 MB instead of 24; the embeddings are shared), batch 1 about 5% faster (docs/SINGLE_FILE.md)."""
    from metabert.deploy.onnx_export import read_meta, runner_name
    from metabert.engine.resolve import resolve
    from metabert.model.multi_exit import CONFIG_NAME

    folder = Path(folder)
    meta = read_meta(folder)
    carried = sorted(meta.get("state", {}))
    if not carries(meta):  # the layers' state this graph cuts and carries row by row
        raise ValueError(f"{folder}: the single file carries the BERT layout's layer state (mask, pool) from layer to "
                         f"layer; this export's layers read {carried or 'another state'} ({meta.get('family', '?')}). "
                         "Serve it with the per-layer runner (`metabert serve --onnx`), which every family has")
    config = folder_config = json.loads((folder / CONFIG_NAME).read_text())
    if checkpoint is not None and (Path(checkpoint) / CONFIG_NAME).is_file():
        config = json.loads((Path(checkpoint) / CONFIG_NAME).read_text())
        if list(config["label_names"]) != folder_config["label_names"]:
            raise ValueError(f"{checkpoint} has other labels than the folder {folder} exported from it")
    runner = runner_name(meta)
    resolved = resolve(policy=policy, name=name, threshold=threshold, patience=patience,
                       stored=config.get("exit_policy"), runner=runner)
    if resolved.default:
        log.warning("%s holds no calibrated exit policy: the file's default threshold is 0, the full model "
                    "(pass a threshold per call, or export with --threshold)", folder)
    names = meta["graphs"][: 1 + meta["num_layers"]]
    graphs = [onnx.load(str(folder / n)) for n in names]
    meta = {**meta, "inputs": [i.name for i in graphs[0].graph.input]}
    max_length, source = _default_max_length(), "metabert's default (--max-seq-length)"
    train_config = Path(checkpoint) / "train_config.json" if checkpoint else None
    if train_config is not None and train_config.is_file():
        max_length = json.loads(train_config.read_text()).get("max_seq_length", max_length)
        source = "the checkpoint's training (max_seq_length)"
    props = metadata(folder, meta, config, resolved, runner, max_length, source)
    props["batch_one_path"] = json.dumps(batch_one)
    model = build(graphs, meta["num_labels"], resolved.policy, props, batch_one=batch_one)
    extra = contrib_ops(model)
    helper.set_model_props(model, {**props, "contrib_ops": ", ".join(extra) if extra else "none"})
    model.doc_string = (f"metabert early exit ({resolved.policy.describe()}, {props['precision']}): "
                        "per-sample exit inside the graph; see metadata_props")
    onnx.checker.check_model(model)
    target = Path(output) if output is not None else folder / FILE_NAME
    onnx.save(model, str(target))
    return target


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of a written file (without loading its weights into memory twice)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


TRITON_LABELS = "labels.txt"


def triton_config(name: str, inputs: list[str], num_labels: int, max_batch_size: int = 32,
                  max_queue_delay_us: int = 5000, instances: int = 1) -> str:
    """A Triton ``config.pbtxt`` for the single file: ONNX Runtime backend, batched on the first
    dimension with dynamic batching; ``exit_layer`` (B,) is presented as (B, 1). The policy inputs
    (``threshold``, ``patience``) are left out: Triton feeds an overridable initializer only to
    models without batching, so the file's stored γ answers (export with ``--threshold`` to change
    it). Requests are batched together only when their shapes agree: clients pad to one length
    (the max length in the file's metadata), and the graph cuts the columns that are padding in
    every row of the batch before the first layer."""
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}", "input ["]
    lines.append(",\n".join(f'  {{\n    name: "{n}"\n    data_type: TYPE_INT64\n    dims: [ -1 ]\n  }}'
                            for n in inputs))
    lines += ["]", "output [",
              f'  {{\n    name: "logits"\n    data_type: TYPE_FP32\n    dims: [ {num_labels} ]\n  }},',
              (f'  {{\n    name: "probabilities"\n    data_type: TYPE_FP32\n    dims: [ {num_labels} ]\n'
               f'    label_filename: "{TRITON_LABELS}"\n  }},'),
              ('  {\n    name: "exit_layer"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n'
               '    reshape: { shape: [ ] }\n  }'),
              "]",
              f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}",
              f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]"]
    return "\n".join(lines) + "\n"


def write_triton(model_file: str | Path, directory: str | Path, name: str = "metabert_early_exit",
                 max_batch_size: int = 32, max_queue_delay_us: int = 5000, version: int = 1) -> Path:
    """A Triton model repository for the single file ``model_file``: ``directory/name/config.pbtxt``,
    ``directory/name/<version>/model.onnx`` and ``directory/name/labels.txt`` (one label a line, in
    class order). Returns the model's folder."""
    import shutil

    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError(f"Triton model name {name!r}: one path component, no spaces")
    props = read_metadata(model_file)
    if props.get("format") != FORMAT:
        raise ValueError(f"{model_file} is not a metabert single file (metadata format {props.get('format')!r})")
    model = onnx.load(str(model_file), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    labels = json.loads(props["labels"])
    root = Path(directory) / name
    (root / str(version)).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, root / str(version) / "model.onnx")
    (root / TRITON_LABELS).write_text("".join(f"{label}\n" for label in labels))
    (root / "config.pbtxt").write_text(triton_config(name, inputs, len(labels), max_batch_size, max_queue_delay_us))
    return root


class SingleFileRunner:
    """``early_exit.onnx`` as an engine runner: the whole per-sample early exit of a batch in one
    session call (``early_exit_all``, which ``engine.loop.run`` takes at every batch size), and the
    full model as the same call with a threshold no exit passes. Its name is its folder's runner's
    with ``-single`` (``ort-single``, ``ort-int8-single``): the γ calibrated for ``ort``/``ort-int8``
    answers for it (the file's layers are that folder's graphs, their logits the same)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        from metabert.deploy.fused_layers import SLOW_FUSIONS
        from metabert.deploy.ort_runner import session_options

        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no single ONNX file; write it with `metabert export ... --single-file`")
        from transformers import AutoTokenizer

        self.path, self.metadata = path, read_metadata(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent)
        options = session_options(threads)
        options.log_severity_level = 3  # not the notice that the rule's settings are inputs with defaults: by design
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=list(SLOW_FUSIONS))
        # the rule's settings are inputs with a stored default: ONNX Runtime lists them apart
        self.inputs = {i.name for i in [*self.session.get_inputs(), *self.session.get_overridable_initializers()]}
        self.policy = self.metadata["policy"]
        self.num_layers = int(self.metadata["num_layers"])
        self.name, self.host_threads, self.backend = self.metadata["runner"] + "-single", 1, "onnxruntime"

    def _run(self, inputs, policy) -> tuple[torch.Tensor, torch.Tensor]:
        from metabert.deploy.ort_runner import token_feeds

        feeds = token_feeds(inputs, self.inputs)
        if policy is not None:
            if policy.name != self.policy:
                raise ValueError(f"this single file decides by {self.policy}, not {policy.name}: export it again "
                                 f"with `--single-file --policy {policy.name}`")
            if "threshold" in self.inputs:
                feeds["threshold"] = np.array(policy.threshold, dtype=np.float32)
            if "patience" in self.inputs:
                feeds["patience"] = np.array(policy.patience, dtype=np.int64)
        logits, layers, _ = self.session.run(["logits", "exit_layer", "probabilities"], feeds)
        return torch.from_numpy(logits), torch.from_numpy(layers.reshape(-1))

    def early_exit_all(self, inputs, policy):
        """The engine's early exit of a whole batch, in one call."""
        from metabert.engine.loop import ExitResult

        logits, layers = self._run(inputs, policy)
        return ExitResult(logits=logits, exit_layer=layers)

    def full(self, inputs) -> torch.Tensor:
        """Every sample at the last exit: the file's rule at a setting no exit passes."""
        from metabert.engine.policies import get_policy

        if self.policy == "patience":
            policy = get_policy("patience", patience=self.num_layers)
        elif self.policy == "patience-entropy":  # entropy below 0: never
            policy = get_policy(self.policy, threshold=0.0, patience=1)
        else:
            policy = get_policy(self.policy).never_exits()
        return self._run(inputs, policy)[0]

    def start(self, inputs):
        raise ValueError(f"{self.name} runs a whole early exit per call, not layer by layer: calibrate and score "
                         f"every exit with the {self.name.removesuffix('-single')} runner over the same export")
