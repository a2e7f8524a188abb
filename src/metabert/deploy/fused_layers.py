"""BERT-layout layers written from their weights, with ONNX Runtime's fused attention.

``torch.onnx.export`` of a transformers-5 BERT layer gives ONNX Runtime about 30 small nodes per
layer and no pattern its transformer optimizer turns into fused attention (the export scales Q and K
each by d^-1/4, adds a Reshape before the output transpose, and our layer graphs took a ready additive
mask). Here each layer is written directly from its weights (``layer``):

* ``Attention`` (domain ``com.microsoft``): packed Q/K/V projection, scaled dot product over the
  heads, softmax with the (B, T) 0/1 ``mask`` (int32, 0 on padding), heads merged: one node instead
  of about 20; ``quantize_dynamic`` makes it ``QAttention``;
* output projections as ``MatMul`` + bias ``Add`` (INT8: ``MatMulInteger``, which ONNX Runtime fuses
  with the bias into one ``DynamicQuantizeMatMul``), the residual ``Add`` and ``LayerNormalization``;
* the intermediate activation: ``Gelu`` (erf, ``gelu``), ``FastGelu`` (tanh: ``gelu_new`` and its
  aliases), ReLU or SiLU.

The layer norms are not ONNX Runtime's ``SkipLayerNormalization`` nor the GELU its ``BiasGelu``:
on CPU those kernels are slower than the plain ops (benchmarks/ort_kernels.py; ``skip_norms=True``
writes them, to measure), and the runner keeps ONNX Runtime from fusing them back
(``metabert.onnx_runtime.SLOW_FUSIONS``). ``ATTENTION_KERNELS`` lists the attention alternatives
benchmarks/fused_attention.py measures: ``MultiHeadAttention`` (one QKV MatMul, a Split and that
kernel) and ``lean`` (plain ops, one QKV MatMul with the 1/sqrt(d) folded into it, the additive mask).
Exit heads are written as the torch export writes them (``Gemm``), so that dynamic quantization
treats them as it treated the earlier export's (it rewrites each as an INT8 MatMul and an Add).

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
ATTENTION_KERNELS = ("Attention", "MultiHeadAttention", "lean")
DEFAULT_ATTENTION = "Attention"
# hidden_act -> the kernel of the intermediate activation
ACTIVATIONS = {"gelu": "Gelu", "gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu_fast": "FastGelu",
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

    def node(self, op: str, inputs: list[str], name: str, outputs: int = 1, domain: str | None = None,
             output: str | None = None, **attrs):
        """Append a node named ``name`` (under the prefix); its output is ``output`` if given."""
        out = [output or self.prefix + name] if outputs == 1 else [f"{self.prefix}{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, out, name=self.prefix + name, domain=domain, **attrs))
        # every value here is float; stated, since ONNX shape inference does not know the contrib
        # ops and the quantizer needs each input's type
        self.types += [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in out]
        return out[0] if outputs == 1 else out


def _t(linear: torch.nn.Linear) -> np.ndarray:
    """A Linear's weight as MatMul's right operand, (in, out)."""
    return linear.weight.detach().float().numpy().T


def layer(g: _Graph, module, config, hidden: str, mask: str, attention: str = "Attention",
          skip_norms: bool = False, out: str | None = None) -> str:
    """Nodes of one BERT-layout layer ``module`` on ``hidden`` (B, T, H) with ``mask`` (the (B, T)
    int32 0/1 mask, or for ``lean`` attention the additive (B, 1, 1, T) one); returns the name of its
    output (B, T, H), ``out`` if given. ``attention``: one of ``ATTENTION_KERNELS``; ``skip_norms``:
    residual + LayerNorm as ONNX Runtime's ``SkipLayerNormalization`` and the intermediate bias +
    GELU as ``BiasGelu`` instead of plain ``Add``, ``LayerNormalization`` and ``Gelu``."""
    if attention not in ATTENTION_KERNELS:
        raise ValueError(f"attention must be one of {ATTENTION_KERNELS}, got {attention!r}")
    attn, att_out, inter, ffn = module.attention.self, module.attention.output, module.intermediate, module.output
    heads, scale = config.num_attention_heads, float(attn.scaling)
    qkv = np.concatenate([_t(attn.query), _t(attn.key), _t(attn.value)], axis=1)
    qkv_bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias]).detach()
    width = qkv.shape[1] // 3
    if attention == "Attention":
        context = g.node("Attention", [hidden, g.const("qkv_weight", qkv), g.const("qkv_bias", qkv_bias), mask],
                         "attention", domain=MS, num_heads=heads, scale=scale)
    elif attention == "MultiHeadAttention":  # one (B, T, H) x (H, 3H) MatMul, split into Q, K, V
        packed = g.node("MatMul", [hidden, g.const("qkv_weight", qkv)], "qkv")
        q, k, v = g.node("Split", [packed, g.const("qkv_split", [width] * 3, np.int64)], "qkv_split", outputs=3,
                         axis=2)
        context = g.node("MultiHeadAttention", [q, k, v, g.const("qkv_bias", qkv_bias), mask], "attention",
                         domain=MS, num_heads=heads, scale=scale)
    else:  # lean: plain ops, one projection, the scale folded into the query weights
        size = width // heads
        qkv[:, :width] *= scale
        qkv_bias[:width] *= scale
        packed = g.node("Add", [g.node("MatMul", [hidden, g.const("qkv_weight", qkv)], "qkv"),
                                g.const("qkv_bias", qkv_bias)], "qkv_biased")
        heads_first = g.node("Transpose", [g.node("Reshape", [packed, g.const("qkv_shape", [0, 0, 3 * heads, size],
                                                                               np.int64)], "qkv_heads")],
                             "qkv_bnsh", perm=[0, 2, 1, 3])  # (B, 3N, T, d)
        q, k, v = g.node("Split", [heads_first, g.const("qkv_split", [heads] * 3, np.int64)], "qkv_split",
                         outputs=3, axis=1)
        scores = g.node("Add", [g.node("FusedMatMul", [q, k], "scores", domain=MS, transB=1), mask], "scores_masked")
        probs = g.node("Softmax", [scores], "probs", axis=-1)
        context = g.node("Transpose", [g.node("MatMul", [probs, v], "context_bnsh")], "context_bsnh",
                         perm=[0, 2, 1, 3])
        context = g.node("Reshape", [context, g.const("context_shape", [0, 0, width], np.int64)], "context")

    def residual_norm(x, dense, residual, norm, name, output=None):
        """LayerNorm(x @ W + b + residual)."""
        projected = g.node("MatMul", [x, g.const(f"{name}_weight", _t(dense))], name)
        weight, bias = g.const(f"{name}_norm_weight", norm.weight), g.const(f"{name}_norm_bias", norm.bias)
        if skip_norms:
            return g.node("SkipLayerNormalization", [projected, residual, weight, bias, g.const(f"{name}_bias", dense.bias)],
                          f"{name}_norm", domain=MS, epsilon=float(norm.eps), output=output)
        biased = g.node("Add", [projected, g.const(f"{name}_bias", dense.bias)], f"{name}_biased")
        summed = g.node("Add", [biased, residual], f"{name}_residual")
        return g.node("LayerNormalization", [summed, weight, bias], f"{name}_norm", axis=-1, epsilon=float(norm.eps),
                      output=output)

    first = residual_norm(context, att_out.dense, hidden, att_out.LayerNorm, "attention_output")
    up = g.node("MatMul", [first, g.const("intermediate_weight", _t(inter.dense))], "intermediate")
    up_bias = g.const("intermediate_bias", inter.dense.bias)
    kind = ACTIVATIONS[config.hidden_act]
    if kind == "Gelu" and skip_norms:
        act = g.node("BiasGelu", [up, up_bias], "activation", domain=MS)
    elif kind == "FastGelu":  # its bias input is as fast as a separate Add
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


def exit_head(g: _Graph, head, pooling: str, hidden: str, pool: str | None, out: str | None = None) -> str:
    """Nodes of an ``ExitHead`` on a layer's output: pooling (``mean`` with the (B, T, 1) weights
    ``pool``, or the ``cls`` token), then dense + tanh (pooler heads) and the classifier; returns the
    logits' name (B, C), ``out`` if given."""
    if pooling == "cls":
        pooled = g.node("Gather", [hidden, g.const("first", np.array(0), np.int64)], "pooled", axis=1)
    else:  # the weighted sum over positions as one product, (B, 1, T) x (B, T, H), then (B, H)
        # (batch 1: 2 µs against 6 for Mul + ReduceSum)
        weighted = g.node("FusedMatMul", [pool, hidden], "weighted", domain=MS, transA=1)
        pooled = g.node("Reshape", [weighted, g.const("pooled_shape", [0, -1], np.int64)], "pooled")
    if head.dense is not None:
        dense = g.node("Gemm", [pooled, g.const("dense_weight", head.dense.weight),
                                g.const("dense_bias", head.dense.bias)], "dense", transB=1)
        pooled = g.node("Tanh", [dense], "tanh")
    return g.node("Gemm", [pooled, g.const("classifier_weight", head.classifier.weight),
                           g.const("classifier_bias", head.classifier.bias)], "classifier", transB=1, output=out)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                              producer_name="metabert")
    model.ir_version = 8  # what ONNX Runtime reads for opset 17
    return model


def _seq(name: str, elem, *tail) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", "sequence", *tail])


def raw_mask(attention: str) -> bool:
    """Whether layers with ``attention`` take the (B, T) int32 0/1 mask (the contrib kernels) rather
    than the additive (B, 1, 1, T) float mask."""
    return attention != "lean"


def _mask_input(attention: str) -> onnx.ValueInfoProto:
    if raw_mask(attention):
        return _seq("mask", TensorProto.INT32)
    return helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "sequence"])


def _graph(nodes, name, inputs, outputs, inits, types) -> onnx.ModelProto:
    declared = {o.name for o in outputs}
    return _model(helper.make_graph(nodes, name, inputs, outputs, inits,
                                    value_info=[t for t in types if t.name not in declared]))


def layer_graph(model, index: int, attention: str = DEFAULT_ATTENTION, skip_norms: bool = False) -> onnx.ModelProto:
    """Layer ``index`` (0-based) and its exit as one graph: inputs ``hidden`` (B, T, H) float,
    ``mask`` (see ``raw_mask``) and, under mean pooling, ``pool`` (B, T, 1); outputs ``hidden_out``
    and ``logits`` (B, C)."""
    config = model.encoder.config
    g = _Graph("")
    layer(g, model.adapter.layers(model.encoder)[index], config, "hidden", "mask", attention, skip_norms,
          out="hidden_out")
    mean = model.config.pooling == "mean"
    h = _Graph("exit/")
    exit_head(h, model.exits[index], model.config.pooling, "hidden_out", "pool" if mean else None, out="logits")
    inputs = [_seq("hidden", TensorProto.FLOAT, config.hidden_size), _mask_input(attention)]
    if mean:
        inputs.append(_seq("pool", TensorProto.FLOAT, 1))
    outputs = [_seq("hidden_out", TensorProto.FLOAT, config.hidden_size),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.config.num_labels])]
    return _graph(g.nodes + h.nodes, f"layer_{index + 1}", inputs, outputs, g.inits + h.inits, g.types + h.types)


def full_graph(model, embeddings: onnx.ModelProto, attention: str = DEFAULT_ATTENTION,
               skip_norms: bool = False) -> onnx.ModelProto:
    """The plain classifier in one graph: the exported ``embeddings`` graph (inputs ``input_ids``,
    ``attention_mask``, ``token_type_ids``; outputs ``hidden``, ``mask`` in the form the layers
    take, ``pool``), every layer, and the last exit; output ``logits`` (B, C)."""
    nodes, inits, types = list(embeddings.graph.node), list(embeddings.graph.initializer), []
    hidden = "hidden"
    layers = model.adapter.layers(model.encoder)
    for i, module in enumerate(layers):
        g = _Graph(f"layer_{i + 1}/")
        hidden = layer(g, module, model.encoder.config, hidden, "mask", attention, skip_norms)
        nodes += g.nodes
        inits += g.inits
        types += g.types
    h = _Graph("exit/")
    exit_head(h, model.exits[len(layers) - 1], model.config.pooling, hidden, "pool", out="logits")
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.config.num_labels])]
    return _graph(nodes + h.nodes, "full", list(embeddings.graph.input), outputs, inits + h.inits,
                  list(embeddings.graph.value_info) + types + h.types)
