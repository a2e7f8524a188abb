"""A fine-tuned ``*ForSequenceClassification`` as a metabert backbone plus its own classification head.

``load_sequence_classifier`` opens a classifier folder (or hub name) of a supported family and splits
it into the encoder our layer loop runs (``metabert.model.families``) and the family's classification head,
holding the checkpoint's own modules and weights. Each head maps the last layer's output, as the exits
read it (``MultiExitBert.exit_input``: ModernBERT's final norm applied), to the classifier's logits:

| family | head (transformers' own modules) | reads |
|---|---|---|
| bert | ``BertPooler`` (dense + tanh), dropout, ``classifier`` | [CLS] |
| roberta, xlm-roberta | ``RobertaClassificationHead`` / ``XLMRobertaClassificationHead`` (dense + tanh, out_proj) | first token |
| electra | ``ElectraClassificationHead`` (dense + gelu, out_proj) | first token |
| distilbert | ``pre_classifier`` + ReLU, dropout, ``classifier`` | [CLS] |
| deberta-v2 | ``ContextPooler`` (dense + ``pooler_hidden_act``), dropout, ``classifier`` | [CLS] |
| modernbert | ``ModernBertPredictionHead`` (dense + act + norm), dropout, ``classifier`` | [CLS] or masked mean (``classifier_pooling``) |

Parameter names are the original model's (``classifier.out_proj.weight``, ``pre_classifier.bias``...),
except BERT's pooler, which lives inside ``BertModel`` there (``bert.pooler.*``); ``original_keys``
maps ours to theirs. ``head_from_config`` builds the same modules with fresh weights, to load a saved
checkpoint into.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig,
                          PreTrainedModel)
from transformers.models.bert.modeling_bert import BertPooler
from transformers.models.deberta_v2.modeling_deberta_v2 import ContextPooler
from transformers.models.electra.modeling_electra import ElectraClassificationHead
from transformers.models.modernbert.modeling_modernbert import ModernBertPredictionHead
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead
from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaClassificationHead

log = logging.getLogger(__name__)

SINGLE_LABEL = "single_label_classification"


class FamilyHead(nn.Module):
    """A family's sequence-classification head: ``forward(hidden (B, T, H), attention_mask (B, T) 1/0
    or None) -> logits (B, C)``. Subclasses: ``from_model`` takes the modules off a loaded classifier,
    ``from_config`` builds them with fresh weights."""

    family: str = ""
    moved: dict[str, str] = {}  # our submodule -> where the original model keeps it, when not at its top

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> "FamilyHead":
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "FamilyHead":
        raise NotImplementedError

    def original_keys(self) -> dict[str, str]:
        """Our state-dict keys -> the original ``*ForSequenceClassification``'s."""
        out = {}
        for key in self.state_dict():
            top, _, rest = key.partition(".")
            out[key] = f"{self.moved[top]}.{rest}" if top in self.moved else key
        return out


class BertHead(FamilyHead):
    """``BertForSequenceClassification``: the pooler (dense + tanh on [CLS]), dropout, classifier."""

    family = "bert"
    moved = {"pooler": "bert.pooler"}

    def __init__(self, pooler: BertPooler, dropout: nn.Dropout, classifier: nn.Linear):
        super().__init__()
        self.pooler, self.dropout, self.classifier = pooler, dropout, classifier

    @classmethod
    def from_model(cls, model):
        pooler = model.bert.pooler
        model.bert.pooler = None  # the head owns it now; our encoder never runs it
        return cls(pooler, model.dropout, model.classifier)

    @classmethod
    def from_config(cls, config):
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        return cls(BertPooler(config), nn.Dropout(dropout), nn.Linear(config.hidden_size, config.num_labels))

    def forward(self, hidden, attention_mask=None):
        return self.classifier(self.dropout(self.pooler(hidden)))  # (B, C)


class FirstTokenHead(FamilyHead):
    """RoBERTa, XLM-RoBERTa, ELECTRA: the library's ``*ClassificationHead`` (dropout, dense, activation,
    dropout, out_proj on the first token) as the model's ``classifier``."""

    library_head: type[nn.Module]

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    @classmethod
    def from_model(cls, model):
        return cls(model.classifier)

    @classmethod
    def from_config(cls, config):
        return cls(cls.library_head(config))

    def forward(self, hidden, attention_mask=None):
        return self.classifier(hidden)  # (B, C)


class RobertaHead(FirstTokenHead):
    family, library_head = "roberta", RobertaClassificationHead


class XLMRobertaHead(FirstTokenHead):
    family, library_head = "xlm-roberta", XLMRobertaClassificationHead


class ElectraHead(FirstTokenHead):
    family, library_head = "electra", ElectraClassificationHead


class DistilBertHead(FamilyHead):
    """``DistilBertForSequenceClassification``: pre_classifier + ReLU on [CLS], dropout, classifier."""

    family = "distilbert"

    def __init__(self, pre_classifier: nn.Linear, dropout: nn.Dropout, classifier: nn.Linear):
        super().__init__()
        self.pre_classifier, self.dropout, self.classifier = pre_classifier, dropout, classifier

    @classmethod
    def from_model(cls, model):
        return cls(model.pre_classifier, model.dropout, model.classifier)

    @classmethod
    def from_config(cls, config):
        return cls(nn.Linear(config.dim, config.dim), nn.Dropout(config.seq_classif_dropout),
                   nn.Linear(config.dim, config.num_labels))

    def forward(self, hidden, attention_mask=None):
        return self.classifier(self.dropout(F.relu(self.pre_classifier(hidden[:, 0]))))  # (B, C)


class DebertaV2Head(FamilyHead):
    """``DebertaV2ForSequenceClassification``: ``ContextPooler`` (dropout, dense, its activation on
    [CLS]), dropout, classifier."""

    family = "deberta-v2"

    def __init__(self, pooler: ContextPooler, dropout: nn.Dropout, classifier: nn.Linear):
        super().__init__()
        self.pooler, self.dropout, self.classifier = pooler, dropout, classifier

    @classmethod
    def from_model(cls, model):
        return cls(model.pooler, model.dropout, model.classifier)

    @classmethod
    def from_config(cls, config):
        pooler = ContextPooler(config)
        dropout = getattr(config, "cls_dropout", None)
        dropout = config.hidden_dropout_prob if dropout is None else dropout
        return cls(pooler, nn.Dropout(dropout), nn.Linear(pooler.output_dim, config.num_labels))

    def forward(self, hidden, attention_mask=None):
        return self.classifier(self.dropout(self.pooler(hidden)))  # (B, C)


class ModernBertHead(FamilyHead):
    """``ModernBertForSequenceClassification``: [CLS] or the masked mean (``classifier_pooling``) of
    the final-normed output, ``ModernBertPredictionHead`` (dense, act, norm), dropout, classifier.
    The final norm belongs to the encoder: our adapter applies it for every exit (``output``)."""

    family = "modernbert"

    def __init__(self, head: ModernBertPredictionHead, drop: nn.Dropout, classifier: nn.Linear, pooling: str):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling must be 'cls' or 'mean', got {pooling!r}")
        self.head, self.drop, self.classifier, self.pooling = head, drop, classifier, pooling

    @classmethod
    def from_model(cls, model):
        return cls(model.head, model.drop, model.classifier, model.config.classifier_pooling)

    @classmethod
    def from_config(cls, config):
        return cls(ModernBertPredictionHead(config), nn.Dropout(config.classifier_dropout),
                   nn.Linear(config.hidden_size, config.num_labels), config.classifier_pooling)

    def forward(self, hidden, attention_mask=None):
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif attention_mask is None:  # no padding
            pooled = hidden.mean(1)
        else:  # the library's masked mean, written as it writes it
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
        return self.classifier(self.drop(self.head(pooled)))  # (B, C)


FAMILY_HEADS: dict[str, type[FamilyHead]] = {
    head.family: head for head in (BertHead, RobertaHead, XLMRobertaHead, ElectraHead, DistilBertHead,
                                   DebertaV2Head, ModernBertHead)
}


def head_class(family: str, name: str | None = None) -> type[FamilyHead]:
    """The head class of ``family`` (a ``config.model_type``); an unsupported one raises, naming the
    supported ones."""
    try:
        return FAMILY_HEADS[family]
    except KeyError:
        raise ValueError(f"{name or 'model'}: model type {family!r} has no supported classification head; "
                         f"supported model types: {', '.join(FAMILY_HEADS)}") from None


def head_from_config(config: PretrainedConfig) -> FamilyHead:
    """The head of ``config``'s family with fresh weights (a checkpoint's are loaded after)."""
    return head_class(config.model_type).from_config(config)


# ------------------------------------------------------------------------------------------ loading
class SequenceClassifier(NamedTuple):
    """What ``load_sequence_classifier`` returns.

    encoder: the base model (``BertModel``, ``DistilBertModel``...) as ``metabert.model.families`` runs it,
      without BERT's pooler (the head holds it); its ``config`` is the classifier's.
    head: the family's ``FamilyHead`` holding the classifier's own modules.
    tokenizer: the folder's tokenizer.
    id2label: class index -> name, from the config (``LABEL_0``... when the model was saved without names).
    problem: ``source``, ``family``, ``architecture``, ``num_labels``, ``problem_type`` and
      ``problem_type_stated`` (False: the config names none and single-label is assumed, as
      transformers does for num_labels > 1 at inference).
    """

    encoder: PreTrainedModel
    head: FamilyHead
    tokenizer: object
    id2label: dict[int, str]
    problem: dict


_KINDS = (  # architecture suffix -> what such a model is, for the error message
    ("ForTokenClassification", "a token classifier (one label per token, not per text)"),
    ("ForQuestionAnswering", "an extractive question-answering model"),
    ("ForMultipleChoice", "a multiple-choice model"),
    ("ForCausalLM", "a decoder (causal language model)"),
    ("LMHeadModel", "a decoder (causal language model)"),
    ("ForConditionalGeneration", "an encoder-decoder / generation model"),
    ("ForMaskedLM", "a masked language model (no classification head)"),
    ("ForPreTraining", "a pretraining checkpoint (no classification head)"),
    ("Model", "a bare encoder (no classification head)"),
)


def _kind(architecture: str) -> str:
    for suffix, kind in _KINDS:
        if architecture.endswith(suffix):
            return kind
    return "not a sequence classifier"


def check_classifier_config(config: PretrainedConfig, name: str) -> dict:
    """Refuse what we cannot retrofit, before any weight is read; return the problem info."""
    architectures = list(getattr(config, "architectures", None) or [])
    classifiers = [a for a in architectures if a.endswith("ForSequenceClassification")]
    if architectures and not classifiers:
        found = ", ".join(f"{a} ({_kind(a)})" for a in architectures)
        raise ValueError(f"{name} is not a sequence classifier: its config.json names {found}; "
                         "metabert needs a fine-tuned *ForSequenceClassification model")
    family = config.model_type
    if getattr(config, "is_decoder", False):
        raise ValueError(f"{name}: a decoder ({family} with is_decoder=true) is not supported; "
                         f"supported encoder families: {', '.join(FAMILY_HEADS)}")
    head_class(family, name)
    num_labels = config.num_labels
    problem_type = getattr(config, "problem_type", None)
    if problem_type == "regression" or num_labels == 1:
        raise ValueError(f"{name} is a regression model (num_labels={num_labels}, problem_type={problem_type!r}); "
                         "metabert's exits decide on class probabilities, so only single-label "
                         "classifiers (num_labels >= 2) are supported")
    if problem_type == "multi_label_classification":
        raise ValueError(f"{name} is a multi-label classifier (problem_type 'multi_label_classification', "
                         f"{num_labels} independent sigmoid outputs); metabert's exits decide on one softmax "
                         "distribution, so only single-label classifiers are supported")
    if problem_type not in (None, SINGLE_LABEL):
        raise ValueError(f"{name}: unknown problem_type {problem_type!r}; supported: {SINGLE_LABEL!r}")
    return {"family": family, "architecture": (classifiers or [f"{type(config).__name__} (none named)"])[0],
            "num_labels": num_labels, "problem_type": SINGLE_LABEL, "problem_type_stated": problem_type is not None}


def load_sequence_classifier(name_or_dir: str | Path) -> SequenceClassifier:
    """Open a fine-tuned ``*ForSequenceClassification`` of a supported family (see ``FAMILY_HEADS``),
    in fp32 and eval mode, and split it into encoder and head. Raises ValueError, naming the folder and
    what it holds, for anything else: not a sequence classifier (a bare encoder, a token classifier,
    a decoder...), an unsupported family, a regression or multi-label model, a checkpoint whose weights
    lack part of the model (the head would be random)."""
    name = str(name_or_dir)
    local = Path(name).expanduser()
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise FileNotFoundError(f"{name}: no such folder")
    if local.is_dir() and not (local / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in local.iterdir())[:8]) or "nothing"
        raise ValueError(f"{name} is not a transformers model folder: no config.json (found: {found})")
    try:
        config = AutoConfig.from_pretrained(name)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(f"{name}: cannot read its config: {err}") from err
    problem = {"source": name, **check_classifier_config(config, name)}

    model, info = AutoModelForSequenceClassification.from_pretrained(name, dtype=torch.float32,
                                                                     output_loading_info=True)
    missing = list(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(sorted(missing)[:6]) + (" ..." if len(missing) > 6 else "")
        raise ValueError(f"{name}: its weights lack {len(missing)} tensors of {type(model).__name__} ({shown}); "
                         "those would be random, so this is not a fine-tuned sequence classifier")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (ValueError, OSError) as err:
        raise ValueError(f"{name}: cannot load its tokenizer: {err}") from err

    model.eval()
    id2label = {int(i): str(label) for i, label in model.config.id2label.items()}
    if sorted(id2label) != list(range(problem["num_labels"])):
        raise ValueError(f"{name}: config id2label {id2label} does not name classes 0..{problem['num_labels'] - 1}")
    head = FAMILY_HEADS[problem["family"]].from_model(model).eval()  # first: BERT's pooler leaves the encoder
    encoder = model.base_model
    log.info("%s: %s, %d classes (%s), %d layers", name, problem["architecture"], problem["num_labels"],
             ", ".join(id2label.values()), encoder.config.num_hidden_layers)
    return SequenceClassifier(encoder, head, tokenizer, id2label, problem)
