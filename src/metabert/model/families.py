"""How to run each encoder family one layer at a time.

``MultiExitBert`` runs the encoder in its own loop (embed, then layer 0..L-1, an exit after each).
Families differ in where their layers live, which mask form their layers take and what position
state the layers share, so each family has an adapter, chosen from ``config.model_type`` through
``ADAPTERS`` (a plain dict, as transformers' ``ACT2FN``). BERT-layout families (BERT, MiniLM,
RoBERTa, XLM-RoBERTa, ELECTRA) share one; DistilBERT, DeBERTa-v2/v3 and ModernBERT have their own.
Each adapter reproduces its library model's ``forward`` (checked in ``tests/test_backbones.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive mask: 0 where attended, dtype-min on padding."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def pool_weights(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, T, 1) weights of the masked mean: 1/count on the attended positions,
    0 on padding. Computed once per batch, so that every exit pools with one product and one sum
    (the masked mean written out costs 7 graph nodes per exit in ONNX Runtime)."""
    mask = attention_mask.unsqueeze(-1).to(dtype)  # (B, T, 1)
    return mask / mask.sum(1, keepdim=True).clamp_min(1.0)


def _rows(tensor, keep: torch.Tensor):
    """``tensor`` for the kept rows; None and batch-broadcast (size-1) tensors stay as they are."""
    if tensor is None or tensor.shape[0] != keep.shape[0]:
        return tensor
    return tensor[keep]


@dataclass(frozen=True)
class LayerInputs:
    """What every layer needs besides the hidden state, for the rows still in the batch.

    mask: the layers' attention mask in the family's form (BERT: additive (B, 1, 1, T)); None: no
      padding (inference) or the family needs none.
    pool_weights: (B, T, 1) weights of the exits' mean pooling (``pool_weights``); None: no padding.
    rows: further per-row tensors (batch dimension first), e.g. ModernBERT's sliding-window mask.
    shared: state that is the same for every row (relative positions, rotary tables); never selected.
    """

    mask: torch.Tensor | None
    pool_weights: torch.Tensor | None
    rows: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)

    def select(self, keep: torch.Tensor) -> "LayerInputs":
        """The rows where ``keep`` (B,) is true."""
        if self.mask is None and self.pool_weights is None and not self.rows:
            return self
        rows = {name: _rows(value, keep) for name, value in self.rows.items()}
        return LayerInputs(_rows(self.mask, keep), _rows(self.pool_weights, keep), rows, self.shared)


def trim_padding(hidden: torch.Tensor, inputs: LayerInputs) -> tuple[torch.Tensor, LayerInputs]:
    """Cut the trailing positions that are padding in every row still running (after the longest
    rows left the batch, the others need not carry their padding through the next layers). Only
    where nothing but the masks is sized by the sequence (no per-row or shared position state):
    the masks are the only inputs to cut, and the cut positions were masked out, so the layers
    compute the same values for the rest."""
    if inputs.pool_weights is None or inputs.rows or inputs.shared:
        return hidden, inputs
    used = (inputs.pool_weights[..., 0] != 0).any(0).nonzero()
    length = int(used.max()) + 1 if len(used) else hidden.shape[1]
    if length == hidden.shape[1]:
        return hidden, inputs
    mask = inputs.mask
    if mask is not None:
        mask = mask[..., :length, :length] if mask.shape[-2] == hidden.shape[1] else mask[..., :length]
    return hidden[:, :length].contiguous(), LayerInputs(mask, inputs.pool_weights[:, :length])


class EncoderAdapter(Protocol):
    """One family's layer-by-layer access to a transformers encoder model."""

    def layers(self, encoder: nn.Module) -> nn.ModuleList: ...

    def set_layers(self, encoder: nn.Module, layers: nn.ModuleList) -> None: ...

    def embed(self, encoder, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor: ...

    def layer_inputs(self, encoder, hidden, attention_mask, inference: bool) -> LayerInputs: ...

    def run_layer(self, encoder, index: int, hidden, inputs: LayerInputs) -> torch.Tensor: ...

    def output(self, encoder, hidden: torch.Tensor) -> torch.Tensor:
        """What exits read of a layer's output (ModernBERT: its final norm); identity elsewhere."""


def _pool_weights(attention_mask: torch.Tensor, hidden: torch.Tensor, inference: bool) -> torch.Tensor | None:
    return None if inference and bool(attention_mask.all()) else pool_weights(attention_mask, hidden.dtype)


class BertLayout:
    """BERT, MiniLM, RoBERTa, XLM-RoBERTa, ELECTRA: ``.embeddings`` and ``.encoder.layer``, additive
    (B, 1, 1, T) mask. Inference with no padding passes no mask (BERT's fast path)."""

    def layers(self, encoder):
        return encoder.encoder.layer

    def set_layers(self, encoder, layers):
        encoder.encoder.layer = layers

    def embed(self, encoder, input_ids, token_type_ids=None, attention_mask=None):
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = encoder.embeddings(**kwargs)  # (B, T, E)
        project = getattr(encoder, "embeddings_project", None)  # ELECTRA when E != H
        return hidden if project is None else project(hidden)  # (B, T, H)

    def layer_inputs(self, encoder, hidden, attention_mask, inference):
        if inference and bool(attention_mask.all()):
            return LayerInputs(None, None)
        return LayerInputs(additive_mask(attention_mask, hidden.dtype), pool_weights(attention_mask, hidden.dtype))

    def run_layer(self, encoder, index, hidden, inputs):
        return encoder.encoder.layer[index](hidden, attention_mask=inputs.mask)

    output = None  # exits read the layer output as it is


class DistilBertLayout:
    """DistilBERT: ``.transformer.layer``, no token types, the mask form of its attention backend."""

    def layers(self, encoder):
        return encoder.transformer.layer

    def set_layers(self, encoder, layers):
        encoder.transformer.layer = layers

    def embed(self, encoder, input_ids, token_type_ids=None, attention_mask=None):
        return encoder.embeddings(input_ids)  # (B, T, H)

    def layer_inputs(self, encoder, hidden, attention_mask, inference):
        mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return LayerInputs(mask, _pool_weights(attention_mask, hidden, inference))

    def run_layer(self, encoder, index, hidden, inputs):
        return encoder.transformer.layer[index](hidden, attention_mask=inputs.mask)

    output = None


class DebertaV2Layout:
    """DeBERTa-v2/v3: ``.encoder.layer`` sharing relative positions and relative embeddings; its own
    (B, 1, T, T) 0/1 mask; embeddings zero the padded positions; an optional conv after layer 0."""

    def layers(self, encoder):
        return encoder.encoder.layer

    def set_layers(self, encoder, layers):
        encoder.encoder.layer = layers

    def embed(self, encoder, input_ids, token_type_ids=None, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, mask=attention_mask)

    def layer_inputs(self, encoder, hidden, attention_mask, inference):
        blocks = encoder.encoder
        shared = {"relative_pos": blocks.get_rel_pos(hidden), "rel_embeddings": blocks.get_rel_embedding()}
        return LayerInputs(blocks.get_attention_mask(attention_mask), _pool_weights(attention_mask, hidden, inference),
                           rows={"input_mask": attention_mask}, shared=shared)

    def run_layer(self, encoder, index, hidden, inputs):
        blocks = encoder.encoder
        out, _ = blocks.layer[index](hidden, inputs.mask, relative_pos=inputs.shared["relative_pos"],
                                     rel_embeddings=inputs.shared["rel_embeddings"])
        if index == 0 and blocks.conv is not None:
            out = blocks.conv(hidden, out, inputs.rows["input_mask"])
        return out

    output = None


class ModernBertLayout:
    """ModernBERT: ``.layers``, rotary positions per attention type, global and sliding-window
    (local) masks, and a final norm that every exit reads through (its layers are pre-norm)."""

    def layers(self, encoder):
        return encoder.layers

    def set_layers(self, encoder, layers):
        encoder.layers = layers

    def embed(self, encoder, input_ids, token_type_ids=None, attention_mask=None):
        return encoder.embeddings(input_ids=input_ids)  # (B, T, H)

    def layer_inputs(self, encoder, hidden, attention_mask, inference):
        kwargs = {"config": encoder.config, "inputs_embeds": hidden, "attention_mask": attention_mask}
        rows = {"full_attention": create_bidirectional_mask(**kwargs),
                "sliding_attention": create_bidirectional_sliding_window_mask(**kwargs)}
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)  # (1, T)
        shared = {kind: encoder.rotary_emb(hidden, positions, kind) for kind in set(encoder.config.layer_types)}
        return LayerInputs(None, _pool_weights(attention_mask, hidden, inference), rows=rows, shared=shared)

    def run_layer(self, encoder, index, hidden, inputs):
        layer = encoder.layers[index]
        kind = layer.attention_type
        return layer(hidden, attention_mask=inputs.rows[kind], position_embeddings=inputs.shared[kind])

    def output(self, encoder, hidden):
        return encoder.final_norm(hidden)


_BERT = BertLayout()
ADAPTERS: dict[str, EncoderAdapter] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "distilbert": DistilBertLayout(),
    "deberta-v2": DebertaV2Layout(),
    "modernbert": ModernBertLayout(),
}


def adapter_for(model_type: str, name: str | None = None) -> EncoderAdapter:
    """The adapter of ``model_type``; an unsupported type raises, naming the supported ones."""
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise ValueError(
            f"--model {name or model_type}: model type {model_type!r} is not supported; supported model "
            f"types: {', '.join(ADAPTERS)}"
        ) from None


def truncated_config(config, num_layers: int) -> None:
    """Make ``config`` describe only the first ``num_layers`` layers (in place)."""
    config.num_hidden_layers = num_layers
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) > num_layers:
        config.layer_types = list(layer_types)[:num_layers]
