"""Batch-1 early exit in one ONNX Runtime call: the exported graphs composed into one graph whose
exit test runs inside it.

The per-layer runner (``OrtMultiExit.step``) pays, for every layer a sample runs, a session call
and a torch exit test on the host (docs/BENCHMARKS.md, profile). Here the embeddings graph and every
layer-with-exit graph of an exported folder (fp32 or INT8, unchanged) are chained inside nested
``If`` nodes: after layer i the policy's rule is computed on exit i's logits in the graph, and the
``then`` branch answers with them while the ``else`` branch holds layers i+1..L. A sample that
leaves at layer k runs k layers and one session call. The graph takes the threshold γ as an
input, so one graph serves every γ of a policy.

Only the stateless threshold rules are built (``entropy``, ``norm-entropy``, ``max-prob``), each
written as its ``metabert.engine.policies`` counterpart computes it, in float32; the patience policies carry
state between exits and run through the per-layer steps. ``tests/test_engine.py`` checks that the
exits equal the simulator's over the runner's own per-layer logits.
"""

from __future__ import annotations

import math
import onnx
from onnx import TensorProto, helper

FUSED_POLICIES = ("entropy", "norm-entropy", "max-prob")


def renamed(graph: onnx.GraphProto, prefix: str, inputs: dict[str, str]) -> tuple[list, list, dict[str, str]]:
    """Copies of the nodes and initializers of ``graph`` with every name prefixed, except the names in
    ``inputs``, which are wired to the outer names given there (its inputs, or any name to keep);
    returns (nodes, initializers, {output name: new name}). One home for inlining an exported graph
    into another (this module, ``single_file``, ``fused_layers``)."""
    def name(n: str) -> str:
        return inputs.get(n, prefix + n) if n else n

    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + (node.name or node.op_type)
        new.input[:] = [name(n) for n in node.input]
        new.output[:] = [name(n) for n in node.output]
        nodes.append(new)
    inits = []
    for init in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(init)
        new.name = name(init.name)
        inits.append(new)
    return nodes, inits, {o.name: name(o.name) for o in graph.output}


def _exit_test(policy: str, logits: str, num_labels: int, prefix: str) -> tuple[list, list, str]:
    """Nodes computing the scalar bool "leave now" of ``policy`` on (1, C) ``logits`` against the
    graph input ``threshold``, as ``metabert.engine.policies`` computes it. Every node runs after each layer a
    sample passes, so the rule is written in as few as it takes: the reductions run over every axis
    of the (1, C) logits into the scalar ``If`` needs, and the entropy rule H < γ is tested as
    sum(p log p) > -γ (``neg_threshold``, computed once per call), the same comparison in float32."""
    p = prefix
    inits = []
    if policy == "max-prob":
        nodes = [helper.make_node("Softmax", [logits], [p + "probs"], axis=-1),
                 helper.make_node("ReduceMax", [p + "probs"], [p + "stat"], keepdims=0),
                 helper.make_node("Greater", [p + "stat", "threshold"], [p + "leave"])]
        return nodes, inits, p + "leave"
    nodes = [helper.make_node("LogSoftmax", [logits], [p + "logp"], axis=-1),
             helper.make_node("Exp", [p + "logp"], [p + "p"]),
             helper.make_node("Mul", [p + "p", p + "logp"], [p + "plogp"]),
             helper.make_node("ReduceSum", [p + "plogp"], [p + "negh"], keepdims=0)]  # -H, a scalar
    if policy == "norm-entropy":
        inits.append(helper.make_tensor(p + "logc", TensorProto.FLOAT, [], [math.log(num_labels)]))
        nodes += [helper.make_node("Neg", [p + "negh"], [p + "stat"]),
                  helper.make_node("Div", [p + "stat", p + "logc"], [p + "nstat"]),
                  helper.make_node("Less", [p + "nstat", "threshold"], [p + "leave"])]
    else:
        nodes.append(helper.make_node("Greater", [p + "negh", "neg_threshold"], [p + "leave"]))
    return nodes, inits, p + "leave"


def _outputs(logits: str, layer: str) -> list:
    return [helper.make_tensor_value_info(logits, TensorProto.FLOAT, None),
            helper.make_tensor_value_info(layer, TensorProto.INT64, None)]


def _parts(graphs: list[onnx.ModelProto], meta: dict, policy: str):
    """(embeddings graph, layer graphs, {domain: opset}) of an exported folder's graphs, for ``policy``."""
    if policy not in FUSED_POLICIES:
        raise ValueError(f"the fused graph has the threshold rules {', '.join(FUSED_POLICIES)}, not {policy!r}")
    opsets = {}
    for g in graphs:
        for o in g.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    return graphs[0], graphs[1:1 + meta["num_layers"]], opsets


def _start(embed: onnx.ModelProto, policy: str) -> tuple[list, list, dict[str, str]]:
    """The embeddings graph's nodes (its outputs by their new names: ``state``), the hidden state
    named ``h0``, and the negated threshold the entropy rule compares with."""
    from metabert.deploy.onnx_export import TOKENS  # here, not above: onnx_export loads torch

    nodes, inits, state = renamed(embed.graph, "e/", {n: n for n in TOKENS})
    if policy == "entropy":
        nodes.append(helper.make_node("Neg", ["threshold"], ["neg_threshold"]))
    nodes.append(helper.make_node("Identity", [state["hidden"]], ["h0"]))
    return nodes, inits, state


def _layer(layers: list[onnx.ModelProto], i: int, state: dict[str, str]) -> tuple[list, list, str]:
    """Layer graph ``i`` (0-based) on hidden state ``h{i}`` (its other inputs the embeddings graph's
    outputs ``state``), its output named ``h{i + 1}``: (nodes, initializers, its exit's logits)."""
    nodes, inits, out = renamed(layers[i].graph, f"l{i + 1}/", {**state, "hidden": f"h{i}"})
    nodes.append(helper.make_node("Identity", [out["hidden_out"]], [f"h{i + 1}"]))
    return nodes, inits, out["logits"]


def _model(graph: onnx.GraphProto, opsets: dict, like: onnx.ModelProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = like.ir_version
    return model


def _inputs(embed: onnx.ModelProto) -> list:
    from metabert.deploy.onnx_export import TOKENS

    return [i for i in embed.graph.input if i.name in TOKENS] + [
        helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [])]


def build(graphs: list[onnx.ModelProto], meta: dict, policy: str) -> onnx.ModelProto:
    """The fused batch-1 early-exit graph for ``policy`` from an exported folder's embeddings and
    layer graphs (``graphs``, in ``meta["graphs"]`` order; ``meta``: its ``onnx_meta.json``): inputs
    ``input_ids``, ``attention_mask``, ``token_type_ids`` (1, T) and ``threshold`` (scalar float);
    outputs ``logits`` (1, C) of the exit taken and ``exit_layer`` (scalar, 1-based)."""
    embed, layers, opsets = _parts(graphs, meta, policy)
    nodes, inits, state = _start(embed, policy)

    def block(i: int) -> tuple[list, list, str, str]:
        """Layers i..L (0-based i) after hidden state ``h{i}``: (nodes, initializers, logits, layer)."""
        nodes, inits, logits = _layer(layers, i, state)
        if i == len(layers) - 1:
            layer = f"l{i + 1}/exit_layer"
            inits.append(helper.make_tensor(layer, TensorProto.INT64, [], [i + 1]))
            return nodes, inits, logits, layer
        test, test_inits, leave = _exit_test(policy, logits, meta["num_labels"], f"t{i + 1}/")
        nodes += test
        inits += test_inits
        then = helper.make_graph(
            [helper.make_node("Identity", [logits], [f"then{i + 1}/logits"]),
             helper.make_node("Constant", [], [f"then{i + 1}/layer"],
                              value=helper.make_tensor("v", TensorProto.INT64, [], [i + 1]))],
            f"exit_{i + 1}", [], _outputs(f"then{i + 1}/logits", f"then{i + 1}/layer"))
        rest_nodes, rest_inits, rest_logits, rest_layer = block(i + 1)
        otherwise = helper.make_graph(
            rest_nodes + [helper.make_node("Identity", [rest_logits], [f"else{i + 1}/logits"]),
                          helper.make_node("Identity", [rest_layer], [f"else{i + 1}/layer"])],
            f"after_{i + 1}", [], _outputs(f"else{i + 1}/logits", f"else{i + 1}/layer"), rest_inits)
        out_logits, out_layer = f"if{i + 1}/logits", f"if{i + 1}/layer"
        nodes.append(helper.make_node("If", [leave], [out_logits, out_layer], then_branch=then, else_branch=otherwise))
        return nodes, inits, out_logits, out_layer

    rest_nodes, rest_inits, logits, layer = block(0)
    nodes += rest_nodes + [helper.make_node("Identity", [logits], ["logits"]),
                           helper.make_node("Identity", [layer], ["exit_layer"])]
    graph = helper.make_graph(nodes, f"early_exit_{policy}", _inputs(embed), _outputs("logits", "exit_layer"),
                              inits + rest_inits)
    return _model(graph, opsets, graphs[0])


def unrolled(graphs: list[onnx.ModelProto], meta: dict, policy: str, tests: bool = True) -> onnx.ModelProto:
    """What ``build``'s graph computes when no sample leaves, without its control flow: the same
    embeddings, layers and exit heads (and with ``tests`` every exit's rule), all run, no ``If``;
    outputs every exit's logits ``logits_i`` (and ``leave_i``). Timed beside ``build``'s graph run with
    a threshold no exit passes, it splits what an exit costs into its head, its test and the control
    flow (``metabert.bench.profile.profile_ort``)."""
    embed, layers, opsets = _parts(graphs, meta, policy)
    nodes, inits, state = _start(embed, policy)
    outputs = []
    for i in range(len(layers)):
        layer_nodes, layer_inits, logits = _layer(layers, i, state)
        nodes, inits = nodes + layer_nodes, inits + layer_inits
        outputs.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
        if tests and i < len(layers) - 1:
            test, test_inits, leave = _exit_test(policy, logits, meta["num_labels"], f"t{i + 1}/")
            nodes, inits = nodes + test, inits + test_inits
            outputs.append(helper.make_tensor_value_info(leave, TensorProto.BOOL, None))
    graph = helper.make_graph(nodes, f"unrolled_{policy}", _inputs(embed), outputs, inits)
    return _model(graph, opsets, graphs[0])
