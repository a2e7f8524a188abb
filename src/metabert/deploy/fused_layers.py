"""BERT-layout layers written with ONNX Runtime's fused contrib kernels.

``torch.onnx.export`` of a transformers-5 BERT layer gives ONNX Runtime about 30 small nodes per
layer and no pattern its transformer optimizer turns into fused attention (the export scales Q and K
each by d^-1/4, adds a Reshape before the output transpose, and our layer graphs took a ready additive
mask). Here each layer is written directly from its weights with the kernels ONNX Runtime has for a
BERT layer (domain ``com.microsoft``):

* ``Attention``: packed Q/K/V projection, scaled dot product over the heads, softmax with the (B, T)
  0/1 ``mask`` (int32, 0 on padding), heads merged: one node instead of about 20;
* ``SkipLayerNormalization``: output projection's bias + residual + LayerNorm, twice per layer;
* ``BiasGelu`` (erf GELU, ``gelu``) or ``FastGelu`` (tanh GELU, ``gelu_new`` and its aliases) after
  the intermediate projection; ReLU and SiLU as plain nodes.

Projections stay plain ``MatMul`` on constant weights, so ``quantize_dynamic`` turns them into INT8
``MatMulInteger`` (fused by ONNX Runtime into ``DynamicQuantizeMatMul``) and ``Attention`` into
``QAttention``. Exit heads are written as the torch export writes them (``Gemm``), which dynamic
quantization leaves in fp32, so that INT8 exits compare with the earlier export.

``unsupported`` says why a model cannot be written this way (another family, relative position
attention, a decoder, an activation without a kernel here); ``metabert.onnx_runtime.export`` then
exports the layers through ``torch.onnx.export`` as before.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
OPSET = 17
BERT_LAYOUT = ("bert", "roberta", "xlm-roberta", "electra")
# hidden_act -> how the intermediate activation is written: a fused bias + activation kernel, or plain nodes
ACTIVATIONS = {"gelu": "BiasGelu", "gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu",
               "relu": "Relu", "silu": "Silu", "swish": "Silu"}


def unsupported(model) -> str | None:
    """Why ``model`` (a ``MultiExitBert``) cannot have fused layers, or None when it can."""
    config = model.encoder.config
    if config.model_type not in BERT_LAYOUT:
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

    def node(self, op: str, inputs: list[str], name: str, outputs: int = 1, domain: str | None = None, **attrs):
        out = [self.prefix + name] if outputs == 1 else [f"{self.prefix}{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, out, name=self.prefix + name, domain=domain, **attrs))
        # every value here is float; stated, since ONNX shape inference does not know the contrib
        # ops and the quantizer needs each input's type
        self.types += [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in out]
        return out[0] if outputs == 1 else out


def _t(linear: torch.nn.Linear) -> np.ndarray:
    """A Linear's weight as MatMul's right operand, (in, out)."""
    return linear.weight.detach().float().numpy().T


def layer(g: _Graph, module, config, hidden: str, mask: str) -> str:
    """Nodes of one BERT-layout layer ``module`` on ``hidden`` (B, T, H) with the (B, T) int32
    ``mask``; returns the name of its output (B, T, H)."""
    attn, out, inter, ffn = module.attention.self, module.attention.output, module.intermediate, module.output
    qkv = np.concatenate([_t(attn.query), _t(attn.key), _t(attn.value)], axis=1)
    bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])
    context = g.node("Attention", [hidden, g.const("qkv_weight", qkv), g.const("qkv_bias", bias), mask], "attention",
                     domain=MS, num_heads=config.num_attention_heads, scale=float(attn.scaling))
    projected = g.node("MatMul", [context, g.const("attention_output_weight", _t(out.dense))], "attention_output")
    first = g.node("SkipLayerNormalization",
                   [projected, hidden, g.const("attention_norm_weight", out.LayerNorm.weight),
                    g.const("attention_norm_bias", out.LayerNorm.bias), g.const("attention_output_bias", out.dense.bias)],
                   "attention_norm", domain=MS, epsilon=float(out.LayerNorm.eps))
    up = g.node("MatMul", [first, g.const("intermediate_weight", _t(inter.dense))], "intermediate")
    kind = ACTIVATIONS[config.hidden_act]
    up_bias = g.const("intermediate_bias", inter.dense.bias)
    if kind in ("BiasGelu", "FastGelu"):
        act = g.node(kind, [up, up_bias], "activation", domain=MS)
    else:
        biased = g.node("Add", [up, up_bias], "intermediate_biased")
        if kind == "Relu":
            act = g.node("Relu", [biased], "activation")
        else:
            act = g.node("Mul", [biased, g.node("Sigmoid", [biased], "sigmoid")], "activation")
    down = g.node("MatMul", [act, g.const("output_weight", _t(ffn.dense))], "output")
    return g.node("SkipLayerNormalization",
                  [down, first, g.const("output_norm_weight", ffn.LayerNorm.weight),
                   g.const("output_norm_bias", ffn.LayerNorm.bias), g.const("output_bias", ffn.dense.bias)],
                  "output_norm", domain=MS, epsilon=float(ffn.LayerNorm.eps))


def exit_head(g: _Graph, head, pooling: str, hidden: str, pool: str | None) -> str:
    """Nodes of an ``ExitHead`` on a layer's output: pooling (``mean`` with the (B, T, 1) weights
    ``pool``, or the ``cls`` token), then dense + tanh (pooler heads) and the classifier; returns the
    logits' name (B, C)."""
    if pooling == "cls":
        pooled = g.node("Gather", [hidden, g.const("first", np.array(0), np.int64)], "pooled", axis=1)
    else:
        weighted = g.node("Mul", [hidden, pool], "weighted")
        pooled = g.node("ReduceSum", [weighted, g.const("sequence_axis", [1], np.int64)], "pooled", keepdims=0)
    if head.dense is not None:
        dense = g.node("Gemm", [pooled, g.const("dense_weight", head.dense.weight),
                                g.const("dense_bias", head.dense.bias)], "dense", transB=1)
        pooled = g.node("Tanh", [dense], "tanh")
    return g.node("Gemm", [pooled, g.const("classifier_weight", head.classifier.weight),
                           g.const("classifier_bias", head.classifier.bias)], "classifier", transB=1)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="metabert")
    model.ir_version = 8  # what ONNX Runtime reads for opset 17
    return model


def _seq(name: str, elem, *tail) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", "sequence", *tail])


def layer_graph(model, index: int) -> onnx.ModelProto:
    """Layer ``index`` (0-based) and its exit as one graph: inputs ``hidden`` (B, T, H) float,
    ``mask`` (B, T) int32 and, under mean pooling, ``pool`` (B, T, 1); outputs ``hidden_out`` and
    ``logits`` (B, C)."""
    config = model.encoder.config
    g = _Graph("")
    out = layer(g, model.adapter.layers(model.encoder)[index], config, "hidden", "mask")
    g.nodes.append(helper.make_node("Identity", [out], ["hidden_out"]))
    mean = model.config.pooling == "mean"
    h = _Graph("exit/")
    logits = exit_head(h, model.exits[index], model.config.pooling, "hidden_out", "pool" if mean else None)
    h.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    inputs = [_seq("hidden", TensorProto.FLOAT, config.hidden_size), _seq("mask", TensorProto.INT32)]
    if mean:
        inputs.append(_seq("pool", TensorProto.FLOAT, 1))
    outputs = [_seq("hidden_out", TensorProto.FLOAT, config.hidden_size),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.config.num_labels])]
    graph = helper.make_graph(g.nodes + h.nodes, f"layer_{index + 1}", inputs, outputs, g.inits + h.inits,
                              value_info=g.types + h.types)
    return _model(graph)


def full_graph(model, embeddings: onnx.ModelProto) -> onnx.ModelProto:
    """The plain classifier in one graph: the exported ``embeddings`` graph (inputs ``input_ids``,
    ``attention_mask``, ``token_type_ids``; outputs ``hidden``, ``mask``, ``pool``), every layer, and
    the last exit; output ``logits`` (B, C)."""
    nodes, inits, types = list(embeddings.graph.node), list(embeddings.graph.initializer), []
    hidden = "hidden"
    layers = model.adapter.layers(model.encoder)
    for i, module in enumerate(layers):
        g = _Graph(f"layer_{i + 1}/")
        hidden = layer(g, module, model.encoder.config, hidden, "mask")
        nodes += g.nodes
        inits += g.inits
        types += g.types
    h = _Graph("exit/")
    logits = exit_head(h, model.exits[len(layers) - 1], model.config.pooling, hidden, "pool")
    h.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.config.num_labels])]
    graph = helper.make_graph(nodes + h.nodes, "full", list(embeddings.graph.input), outputs, inits + h.inits,
                              value_info=list(embeddings.graph.value_info) + types + h.types)
    return _model(graph)
