"""A BERT-family encoder with an exit classifier after every layer.

We run the encoder layer by layer in our own loop instead of threading heads through the library's
forward: after layer i the hidden state feeds exit classifier c_i (MetaBERT Eq. 1, DeeBERT's
"off-ramps"). ``forward`` returns every exit's logits for training; ``early_exit`` lets each sample
leave at the first exit whose prediction entropy is below a threshold (MetaBERT Eq. 6), removing
exited rows from the batch so that the rest go on without them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from metabert.model.families import LayerInputs, adapter_for, pool_weights, truncated_config
from metabert.model.backbones import Backbone, encoder_from_config, load_backbone
from metabert.engine.policies import ExitPolicy
from metabert.model.heads import FAMILY_HEADS, FamilyHead, head_from_config, load_sequence_classifier

log = logging.getLogger(__name__)

from metabert.model import HEAD_INITS, HEADS, POOLINGS  # noqa: E402  (plain names, for configs without torch)
CONFIG_NAME = "metabert_config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class MultiExitConfig:
    """Everything needed to rebuild a model; stored as ``metabert_config.json`` in each checkpoint.

    num_labels: number of classes of every exit.
    label_names: the class names, index i is class i (stored so predictions can be named).
    pooling: how an exit reads the layer output: ``mean`` over real tokens or the ``cls`` token.
    head: the exit classifier, ``pooler`` (dense + tanh + linear, DeeBERT) or ``linear``.
    dropout: dropout before each exit's final linear layer.
    backbone: what ``--model`` named when the model was created (for the record).
    backbone_config: the encoder's Hugging Face config as a dict.
    task: the data the model was trained on (task name, text/label columns...), for later commands.
    calibration: a held-out slice of the training data recorded for threshold calibration.
    exit_policy: the calibrated exit policy (name, threshold, patience, and how it was chosen), used
      by ``early_exit`` when no threshold is given.
    last_head: "" (every exit an ``ExitHead``), or the encoder's family (``config.model_type``) when
      the last exit is that family's own sequence-classification head (``metabert.model.heads``),
      e.g. a fine-tuned classifier's original head (``from_classifier``).
    """

    num_labels: int
    label_names: tuple[str, ...]
    pooling: str = "mean"
    dropout: float = 0.1
    backbone: str = "minilm-l6"
    backbone_config: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    exit_policy: dict = field(default_factory=dict)
    head: str = "pooler"
    last_head: str = ""

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.last_head and self.last_head not in FAMILY_HEADS:
            raise ValueError(f"last_head must be '' or one of {tuple(FAMILY_HEADS)}, got {self.last_head!r}")
        if self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {self.num_labels}")
        if len(self.label_names) != self.num_labels:
            raise ValueError(
                f"label_names has {len(self.label_names)} names but num_labels is {self.num_labels}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "label_names", tuple(self.label_names))


class ExitHead(nn.Module):
    """An exit classifier. ``pooler`` (default): DeeBERT's off-ramp, dense + tanh (a BERT pooler),
    dropout, linear. ``linear``: dropout and a linear layer on the pooled output."""

    def __init__(self, hidden: int, num_labels: int, dropout: float, kind: str = "pooler"):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden) if kind == "pooler" else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        hidden = pooled if self.dense is None else torch.tanh(self.dense(pooled))
        return self.classifier(self.dropout(hidden))

    def infer(self, pooled: torch.Tensor) -> torch.Tensor:
        """``forward`` without dropout and module-call overhead, for inference (a batch-1 head costs
        about as much in Python calls as in arithmetic)."""
        hidden = pooled if self.dense is None else torch.tanh(F.linear(pooled, self.dense.weight, self.dense.bias))
        return F.linear(hidden, self.classifier.weight, self.classifier.bias)


class MultiExitBert(nn.Module):
    def __init__(self, config: MultiExitConfig, encoder: nn.Module, tokenizer=None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.adapter = adapter_for(encoder.config.model_type)  # how to run this family layer by layer
        hidden = encoder.config.hidden_size
        self.exits = nn.ModuleList(
            ExitHead(hidden, config.num_labels, config.dropout, config.head) for _ in range(self.num_layers)
        )
        init_range = getattr(encoder.config, "initializer_range", 0.02)
        for head in self.exits:
            for linear in (head.dense, head.classifier):
                if linear is None:
                    continue
                nn.init.normal_(linear.weight, std=init_range)
                nn.init.zeros_(linear.bias)
        if config.last_head:  # the family's own classification head as exit L (weights loaded after)
            if config.last_head != encoder.config.model_type:
                raise ValueError(f"last_head {config.last_head!r} does not match the encoder's family "
                                 f"{encoder.config.model_type!r}")
            self.exits[-1] = head_from_config(encoder.config)

    # ----------------------------------------------------------------- construction and storage
    @classmethod
    def from_backbone(
        cls,
        model: str | Backbone,
        label_names: list[str],
        pooling: str = "mean",
        dropout: float = 0.1,
        task: dict | None = None,
        seed: int = 0,
        backbone_dropout: float | None = None,
        head: str = "pooler",
        head_init: str = "random",
    ) -> "MultiExitBert":
        """A new multi-exit model on a pretrained backbone (see ``metabert.model.backbones``).
        ``head_init="pooler"`` starts every exit's dense layer from the backbone's pretrained pooler,
        as DeeBERT does; ``random`` (default) draws them like the classifier layers."""
        if head_init not in HEAD_INITS:
            raise ValueError(f"invalid head_init {head_init!r}; choose one of: {', '.join(HEAD_INITS)}")
        backbone = model if isinstance(model, Backbone) else load_backbone(model, seed=seed, dropout=backbone_dropout)
        config = MultiExitConfig(
            num_labels=len(label_names),
            label_names=tuple(label_names),
            pooling=pooling,
            dropout=dropout,
            backbone=backbone.source,
            backbone_config=json.loads(backbone.encoder.config.to_json_string()),
            task=task or {},
            head=head,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(config, backbone.encoder, backbone.tokenizer)
        if head_init == "pooler":
            if head != "pooler" or backbone.pooler is None:
                raise ValueError(f"--head-init pooler needs --head pooler and a backbone with a pooler "
                                 f"({backbone.source} has {'one' if backbone.pooler is not None else 'none'})")
            with torch.no_grad():
                for exit_head in model.exits:
                    exit_head.dense.weight.copy_(backbone.pooler.weight)
                    exit_head.dense.bias.copy_(backbone.pooler.bias)
        return model

    @classmethod
    def from_classifier(
        cls,
        name_or_dir: str | os.PathLike,
        pooling: str = "mean",
        dropout: float = 0.1,
        task: dict | None = None,
        seed: int = 0,
        head: str = "pooler",
    ) -> "MultiExitBert":
        """A multi-exit model on a fine-tuned ``*ForSequenceClassification`` (``metabert.model.heads``):
        its encoder, its own classification head as the last exit (so the last exit's logits are the
        classifier's), its ``id2label`` as class names; exits 1..L-1 new ``ExitHead``s (``pooling``,
        ``dropout``, ``head``) drawn with ``seed``."""
        loaded = load_sequence_classifier(name_or_dir)
        config = MultiExitConfig(
            num_labels=len(loaded.id2label),
            label_names=tuple(loaded.id2label[i] for i in range(len(loaded.id2label))),
            pooling=pooling,
            dropout=dropout,
            backbone=str(name_or_dir),
            backbone_config=json.loads(loaded.encoder.config.to_json_string()),
            task=task or {},
            head=head,
            last_head=loaded.problem["family"],
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(config, loaded.encoder, loaded.tokenizer)
        model.exits[-1] = loaded.head  # the classifier's own modules, not the fresh ones
        return model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "MultiExitBert":
        """Load a checkpoint folder written by ``save_pretrained``."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        config_file = directory / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{directory} is not a metabert checkpoint (no {CONFIG_NAME})")
        fields = json.loads(config_file.read_text())
        fields.pop("metabert_format", None)
        config = MultiExitConfig(**fields)
        encoder = encoder_from_config(config.backbone_config)
        model = cls(config, encoder, AutoTokenizer.from_pretrained(directory))
        load_model(model, directory / WEIGHTS_NAME)
        model.eval()
        return model

    def save_pretrained(self, directory: str | os.PathLike, extra_files: dict[str, str] | None = None):
        """Write config, weights and tokenizer to a temporary folder, then rename it into place,
        so that a killed run never leaves a half-written checkpoint at ``directory``."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            self.save_config_to(tmp)
            save_model(self, str(tmp / WEIGHTS_NAME))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            old = directory.with_name(f".{directory.name}.old")
            if directory.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def save_config(self, directory: str | os.PathLike) -> None:
        """Rewrite only the checkpoint's config (e.g. after calibration), atomically."""
        target = Path(directory) / CONFIG_NAME
        if not target.is_file():
            raise FileNotFoundError(f"{directory} is not a metabert checkpoint (no {CONFIG_NAME})")
        self.save_config_to(directory)

    def save_config_to(self, directory: str | os.PathLike) -> None:
        """Write ``metabert_config.json`` into ``directory`` (temporary file, then renamed)."""
        target = Path(directory) / CONFIG_NAME
        tmp = target.with_name(CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps({"metabert_format": 1, **asdict(self.config)}, indent=2))
        os.replace(tmp, target)

    def with_config(self, **changes) -> None:
        """Replace config fields (e.g. a calibrated threshold) keeping the weights."""
        self.config = MultiExitConfig(**{**asdict(self.config), **changes})

    def truncate(self, num_layers: int) -> None:
        """Keep only the first ``num_layers`` layers and their exits (a static BERT-kL model)."""
        if not 1 <= num_layers <= self.num_layers:
            raise ValueError(f"num_layers must be between 1 and {self.num_layers}, got {num_layers}")
        if num_layers < self.num_layers and self.config.last_head:  # the family head goes with layer L
            self.with_config(last_head="")
        self.adapter.set_layers(self.encoder, nn.ModuleList(list(self.adapter.layers(self.encoder))[:num_layers]))
        self.exits = nn.ModuleList(list(self.exits)[:num_layers])
        truncated_config(self.encoder.config, num_layers)
        stored = {"num_hidden_layers": num_layers}
        if "layer_types" in self.config.backbone_config:
            stored["layer_types"] = list(self.encoder.config.layer_types)
        if "n_layers" in self.config.backbone_config:  # DistilBERT's name for it
            stored = {"n_layers": num_layers}
        self.with_config(backbone_config={**self.config.backbone_config, **stored})

    # ----------------------------------------------------------------------------- forward
    @property
    def num_layers(self) -> int:
        return len(self.adapter.layers(self.encoder))

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H) -> (B, H) by the configured pooling (``attention_mask`` (B, T) 1/0; None: no padding)."""
        weights = None if attention_mask is None or self.config.pooling == "cls" else pool_weights(attention_mask, hidden.dtype)
        return self.pool_weighted(hidden, weights)

    def pool_weighted(self, hidden: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """``pool`` with the batch's mean-pooling weights computed already (``adapters.pool_weights``,
        (B, T, 1); None: no padding)."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if weights is None:
            return hidden.mean(1)
        return (hidden * weights).sum(1)

    def embed(self, input_ids, token_type_ids=None, attention_mask=None) -> torch.Tensor:
        """(B, T) ids -> (B, T, H); ``attention_mask`` for families whose embeddings read it (DeBERTa).
        The ids are made contiguous: INT8 word embeddings (``metabert.deploy.quantize.quantize_eager``)
        refuse a view such as a slice of a padded batch."""
        return self.adapter.embed(self.encoder, input_ids.contiguous(), token_type_ids, attention_mask)

    def begin(self, input_ids, attention_mask, token_type_ids=None, inference: bool = False):
        """Embeddings and what every layer needs besides the hidden state: (hidden (B, T, H),
        ``LayerInputs``). ``inference``: leave the masks out when nothing is padded (every batch-1
        request), which skips the masking work; one host sync."""
        hidden = self.embed(input_ids, token_type_ids, attention_mask)
        return hidden, self.adapter.layer_inputs(self.encoder, hidden, attention_mask, inference)

    def run_layer(self, index: int, hidden: torch.Tensor, inputs: "LayerInputs") -> torch.Tensor:
        """Layer ``index`` (0-based): (B, T, H) -> (B, T, H)."""
        return self.adapter.run_layer(self.encoder, index, hidden, inputs)

    def exit_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What exits read of a layer's output: the output itself, or through the family's final norm
        (ModernBERT, whose layers are pre-norm)."""
        return hidden if self.adapter.output is None else self.adapter.output(self.encoder, hidden)

    def exit_logits(self, index: int, hidden: torch.Tensor, inputs: "LayerInputs", train: bool = True):
        """Exit ``index`` on its layer's output: (B, T, H) -> (B, C); ``train`` False takes the head's
        dropout-free fast path."""
        head = self.exits[index]
        if isinstance(head, FamilyHead):  # a classifier's own head reads the whole sequence
            weights = inputs.pool_weights  # (B, T, 1) or None: no padding
            attention_mask = None if weights is None else weights[..., 0] > 0  # (B, T)
            return head(self.exit_input(hidden), attention_mask)
        pooled = self.exit_features(hidden, inputs)
        return head(pooled) if train else head.infer(pooled)

    def exit_features(self, hidden: torch.Tensor, inputs: "LayerInputs") -> torch.Tensor:
        """What an ``ExitHead`` reads of a layer's output: (B, T, H) -> (B, H), pooled as configured
        (what retrofit caches to train the heads on)."""
        return self.pool_weighted(self.exit_input(hidden), inputs.pool_weights)

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None) -> list[torch.Tensor]:
        """Every layer's output (layer 1..L) as the exits read it, from our own layer loop."""
        hidden, inputs = self.begin(input_ids, attention_mask, token_type_ids)
        states = []
        for i in range(self.num_layers):
            hidden = self.run_layer(i, hidden, inputs)
            states.append(self.exit_input(hidden))
        return states

    def forward(self, input_ids, attention_mask, token_type_ids=None, num_layers: int | None = None):
        """Logits of every exit, shape (L, B, C); with ``num_layers`` k only the first k exits run."""
        hidden, inputs = self.begin(input_ids, attention_mask, token_type_ids)
        logits = []
        for i in range(num_layers or self.num_layers):
            hidden = self.run_layer(i, hidden, inputs)
            logits.append(self.exit_logits(i, hidden, inputs))
        return torch.stack(logits)

    def full_logits(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The plain classifier, the baseline early exit is measured against: every layer, then only
        the last exit. (B, C)."""
        hidden, inputs = self.begin(input_ids, attention_mask, token_type_ids, inference=True)
        for i in range(self.num_layers):
            hidden = self.run_layer(i, hidden, inputs)
        return self.exit_logits(self.num_layers - 1, hidden, inputs, train=False)

    def early_exit(self, input_ids, attention_mask, token_type_ids=None, threshold: float | None = None,
                   policy: ExitPolicy | None = None):
        """Per-sample early exit (``metabert.engine.loop.run`` on this model's eager runner): sample b
        leaves at the first exit where ``policy`` says so (default: entropy H(p) < ``threshold``,
        MetaBERT Eq. 6; else the checkpoint's calibrated policy); the last exit always answers."""
        from metabert.engine import loop as engine
        from metabert.engine.resolve import resolve

        chosen = resolve(policy=policy, threshold=threshold, stored=self.config.exit_policy).policy
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return engine.run(EagerRunner(self), inputs, chosen)


class EagerRunner:
    """``metabert.engine.loop.Runner`` for a ``MultiExitBert`` in eager PyTorch (inference mode)."""

    backend = "torch"  # the library it computes with (bench measures each library in a phase of its own)

    name = "eager"

    def __init__(self, model: MultiExitBert):
        self.model = model.eval()

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    def start(self, inputs):
        with torch.inference_mode():
            return self.model.begin(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"),
                                    inference=True)

    def step(self, index, state):
        hidden, layer_inputs = state
        with torch.inference_mode():
            hidden = self.model.run_layer(index, hidden, layer_inputs)
            return (hidden, layer_inputs), self.model.exit_logits(index, hidden, layer_inputs, train=False)

    def select(self, state, keep):
        """The kept rows, without the padding that only the rows that left needed."""
        from metabert.model.families import trim_padding

        hidden, layer_inputs = state
        return trim_padding(hidden[keep], layer_inputs.select(keep))

    def full(self, inputs):
        with torch.inference_mode():
            return self.model.full_logits(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))


def exit_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every exit: (L, B, C), (B,) -> (L,)."""
    num_exits, batch, classes = logits.shape
    per = F.cross_entropy(logits.reshape(-1, classes), labels.repeat(num_exits), reduction="none")
    return per.view(num_exits, batch).mean(1)
