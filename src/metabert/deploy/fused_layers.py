"""BERT-layout layers written from their weights, with ONNX Runtime's fused attention.

``torch.onnx.export`` of a transformers-5 BERT layer gives ONNX Runtime about 30 small nodes per
layer and no pattern its transformer optimizer turns into fused attention (the export scales Q and K
each by d^-1/4, adds a Reshape before the output transpose, and the layer graphs take a ready
additive mask). ``layer`` writes each layer directly from its weights:

* ``Attention`` (domain ``com.microsoft``): packed Q/K/V projection, scaled dot product over the
  heads, softmax with the (B, T) 0/1 ``mask`` (int32, 0 on padding), heads merged: one node instead
  of about 20; ``quantize_dynamic`` makes it ``QAttention``;
* output projections as ``MatMul`` + bias ``Add`` (INT8: ``MatMulInteger``, which ONNX Runtime fuses
  with the bias into one ``DynamicQuantizeMatMul``), the residual ``Add`` and ``LayerNormalization``;
* the intermediate activation: ``Gelu`` (erf), ``FastGelu`` (the tanh GELUs), ReLU or SiLU.

The layer norms are not ONNX Runtime's ``SkipLayerNormalization`` nor the GELU its ``BiasGelu``: on
CPU those kernels are slower than the plain ops they replace (``SLOW_FUSIONS``), and our sessions keep
ONNX Runtime from fusing them back. docs/FUSED_LAYERS.md has the measurements behind each choice.

The exit heads are not written here: ``metabert.deploy.onnx_export`` exports each head (ours, or a
classifier's own, ``metabert.model.heads``) through ``torch.onnx.export`` and ``attach`` joins it to
the layer's nodes, so every head kind exports one way. ``unsupported`` says why a model cannot have
fused layers (another layout, relative positions, a decoder, an activation without a kernel); the
export then writes its layers through ``torch.onnx.export``.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from metabert.deploy.onnx_fused import renamed

MS = "com.microsoft"
OPSET = 17
# hidden_act -> the kernel of the intermediate activation
ACTIVATIONS = {"gelu": "Gelu", "gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu",
               "relu": "Relu", "silu": "Silu", "swish": "Silu"}
# ONNX Runtime graph fusions left out of our sessions: on CPU their kernels are slower than the ops
# they replace (benchmarks/ort_kernels.py, Intel Xeon with AMX, 1 thread, fastest of 50 calls: bias
# + residual + layer norm of 25 x 384 floats 48.6 µs as SkipLayerNormalization, 14.0 µs as Add + Add +
# LayerNormalization; bias + GELU of 25 x 1536 34.8 µs as BiasGelu, 27.0 µs as Add + Gelu). Left to
# its defaults ONNX Runtime fuses the plain ops into those kernels, in fused and torch-exported graphs.
SLOW_FUSIONS = ("SkipLayerNormFusion", "BiasGeluFusion")


def unsupported(model) -> str | None:
    """Why ``model`` (a ``MultiExitBert``) cannot have fused layers, or None when it can."""
    from metabert.model.families import BertLayout

    config = model.encoder.config
    if not isinstance(model.adapter, BertLayout):
        return f"family {config.model_type!r} is not of the BERT layout"
    if getattr(config, "position_embedding_type", None) not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} adds relative positions to attention"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder layers"
    if not isinstance(config.hidden_act, str) or config.hidden_act not in ACTIVATIONS:
        return f"activation {config.hidden_act!r} has no kernel here"
    if config.hidden_size % config.num_attention_heads:
        return "hidden size is not a multiple of the head count"
    return None


class _Graph:
    """Nodes and initializers with names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.inits, self.types = prefix, [], [], []

    def const(self, name: str, array, dtype=np.float32) -> str:
        full = self.prefix + name
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        self.inits.append(numpy_helper.from_array(np.array(array, dtype=dtype, order="C"), full))
        return full

    def node(self, op: str, inputs: list[str], name: str, domain: str | None = None, output: str | None = None,
             **attrs) -> str:
        """Append a node named ``name`` (under the prefix); its output is ``output`` if given."""
        out = output or self.prefix + name
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.prefix + name, domain=domain, **attrs))
        # every value here is float; stated, since ONNX shape inference does not know the contrib ops
        # and the quantizer needs each input's type
        self.types.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        return out


def _t(linear: torch.nn.Linear) -> np.ndarray:
    """A Linear's weight as MatMul's right operand, (in, out)."""
    return linear.weight.detach().float().numpy().T


def layer(g: _Graph, module, config, hidden: str, mask: str, out: str | None = None) -> str:
    """Nodes of one BERT-layout layer ``module`` on ``hidden`` (B, T, H) with ``mask`` (the (B, T)
    int32 0/1 mask); returns the name of its output (B, T, H), ``out`` if given."""
    attn, att_out, inter, ffn = module.attention.self, module.attention.output, module.intermediate, module.output
    qkv = np.concatenate([_t(attn.query), _t(attn.key), _t(attn.value)], axis=1)
    qkv_bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])
    context = g.node("Attention", [hidden, g.const("qkv_weight", qkv), g.const("qkv_bias", qkv_bias), mask],
                     "attention", domain=MS, num_heads=config.num_attention_heads, scale=float(attn.scaling))

    def residual_norm(x, dense, residual, norm, name, output=None):
        """LayerNorm(x @ W + b + residual)."""
        projected = g.node("MatMul", [x, g.const(f"{name}_weight", _t(dense))], name)
        biased = g.node("Add", [projected, g.const(f"{name}_bias", dense.bias)], f"{name}_biased")
        summed = g.node("Add", [biased, residual], f"{name}_residual")
        return g.node("LayerNormalization", [summed, g.const(f"{name}_norm_weight", norm.weight),
                                             g.const(f"{name}_norm_bias", norm.bias)],
                      f"{name}_norm", axis=-1, epsilon=float(norm.eps), output=output)

    first = residual_norm(context, att_out.dense, hidden, att_out.LayerNorm, "attention_output")
    up = g.node("MatMul", [first, g.const("intermediate_weight", _t(inter.dense))], "intermediate")
    up_bias = g.const("intermediate_bias", inter.dense.bias)
    kind = ACTIVATIONS[config.hidden_act]
    if kind == "FastGelu":  # its bias input is as fast as a separate Add
        act = g.node("FastGelu", [up, up_bias], "activation", domain=MS)
    else:
        biased = g.node("Add", [up, up_bias], "intermediate_biased")
        if kind == "Gelu":
            act = g.node("Gelu", [biased], "activation", domain=MS)
        elif kind == "Relu":
            act = g.node("Relu", [biased], "activation")
        else:
            act = g.node("Mul", [biased, g.node("Sigmoid", [biased], "sigmoid")], "activation")
    return residual_norm(act, ffn.dense, first, ffn.LayerNorm, "output", output=out)


def attach(head: onnx.ModelProto, prefix: str, hidden: str):
    """The nodes of an exported exit-head graph (inputs ``hidden`` and the state it reads, output
    ``logits``) to be joined to a graph where its hidden state is ``hidden``: its inner names put under
    ``prefix``, its inputs and its output keeping theirs. Returns (nodes, initializers, value infos,
    inputs other than ``hidden``)."""
    graph = head.graph
    kept = {n: n for n in [i.name for i in graph.input] + [o.name for o in graph.output]}
    outer = {**kept, "hidden": hidden}
    nodes, inits, _ = renamed(graph, prefix, outer)
    infos = []
    for info in graph.value_info:
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(info)
        copy.name = outer.get(info.name, prefix + info.name)
        infos.append(copy)
    return nodes, inits, infos, [i for i in graph.input if i.name != "hidden"]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="metabert")
    model.ir_version = 8  # what ONNX Runtime 1.13 and newer read for opset 17
    return model


def _seq(name: str, elem, *tail) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", "sequence", *tail])


def _graph(nodes, name, inputs, outputs, inits, types) -> onnx.ModelProto:
    declared = {o.name for o in outputs} | {i.name for i in inputs}
    return _model(helper.make_graph(nodes, name, inputs, outputs, inits,
                                    value_info=[t for t in types if t.name not in declared]))


def _logits(model) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.config.num_labels])


def layer_graph(model, index: int, head: onnx.ModelProto) -> onnx.ModelProto:
    """Layer ``index`` (0-based) and its exit ``head`` (its exported graph) as one graph: inputs
    ``hidden`` (B, T, H) float, ``mask`` (B, T) int32 and what the head reads (``pool``); outputs
    ``hidden_out`` and ``logits`` (B, C)."""
    config = model.encoder.config
    g = _Graph("")
    layer(g, model.adapter.layers(model.encoder)[index], config, "hidden", "mask", out="hidden_out")
    nodes, inits, infos, extra = attach(head, "exit/", "hidden_out")
    inputs = [_seq("hidden", TensorProto.FLOAT, config.hidden_size), _seq("mask", TensorProto.INT32), *extra]
    outputs = [_seq("hidden_out", TensorProto.FLOAT, config.hidden_size), _logits(model)]
    return _graph(g.nodes + nodes, f"layer_{index + 1}", inputs, outputs, g.inits + inits, g.types + infos)


def full_graph(model, embeddings: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
    """The plain classifier in one graph: the exported ``embeddings`` graph (outputs ``hidden``,
    ``mask`` (B, T) int32 and the other state), every layer, and the last exit's ``head``; inputs the
    embeddings graph's, output ``logits`` (B, C)."""
    nodes, inits = list(embeddings.graph.node), list(embeddings.graph.initializer)
    types = list(embeddings.graph.value_info)
    hidden = "hidden"
    for i, module in enumerate(model.adapter.layers(model.encoder)):
        g = _Graph(f"layer_{i + 1}/")
        hidden = layer(g, module, model.encoder.config, hidden, "mask")
        nodes, inits, types = nodes + g.nodes, inits + g.inits, types + g.types
    head_nodes, head_inits, head_infos, _ = attach(head, "exit/", hidden)
    return _graph(nodes + head_nodes, "full", list(embeddings.graph.input), [_logits(model)], inits + head_inits,
                  types + head_infos)

