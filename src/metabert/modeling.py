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

from metabert.backbones import Backbone, encoder_from_config, load_backbone
from metabert.exits import EntropyPolicy, ExitPolicy, policy_from_dict

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
HEADS = ("pooler", "linear")
HEAD_INITS = ("random", "pooler")
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

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
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


@dataclass
class EarlyExitOutput:
    """Per-sample result of early-exit inference."""

    logits: torch.Tensor  # (B, C) logits of the exit each sample left at
    exit_layer: torch.Tensor  # (B,) 1-based layer index

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(-1)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive mask: 0 where attended, dtype-min on padding."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


class MultiExitBert(nn.Module):
    def __init__(self, config: MultiExitConfig, encoder: nn.Module, tokenizer=None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
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
        """A new multi-exit model on a pretrained backbone (see ``metabert.backbones``).
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
        self.encoder.encoder.layer = nn.ModuleList(list(self.encoder.encoder.layer)[:num_layers])
        self.exits = nn.ModuleList(list(self.exits)[:num_layers])
        self.encoder.config.num_hidden_layers = num_layers
        self.with_config(backbone_config={**self.config.backbone_config, "num_hidden_layers": num_layers})

    # ----------------------------------------------------------------------------- forward
    @property
    def num_layers(self) -> int:
        return len(self.encoder.encoder.layer)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H) -> (B, H) by the configured pooling (``attention_mask`` None: no padding)."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def embed(self, input_ids, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.encoder.embeddings(**kwargs)  # (B, T, H)

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None) -> list[torch.Tensor]:
        """Every layer's output (layer 1..L), from our own layer loop."""
        hidden = self.embed(input_ids, token_type_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        states = []
        for layer in self.encoder.encoder.layer:
            hidden = layer(hidden, attention_mask=mask)
            states.append(hidden)
        return states

    def forward(self, input_ids, attention_mask, token_type_ids=None, num_layers: int | None = None):
        """Logits of every exit, shape (L, B, C); with ``num_layers`` k only the first k exits run."""
        hidden = self.embed(input_ids, token_type_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        logits = []
        for layer, head in list(zip(self.encoder.encoder.layer, self.exits))[: num_layers or self.num_layers]:
            hidden = layer(hidden, attention_mask=mask)
            logits.append(head(self.pool(hidden, attention_mask)))
        return torch.stack(logits)

    def resolve_policy(self, policy: ExitPolicy | None = None, threshold: float | None = None) -> ExitPolicy:
        """``policy`` if given; else entropy at ``threshold``; else the checkpoint's calibrated policy."""
        if policy is not None:
            return policy
        if threshold is not None:
            return EntropyPolicy(threshold)
        if self.config.exit_policy:
            return policy_from_dict(self.config.exit_policy)
        raise ValueError("no exit threshold given and the checkpoint has no calibrated policy "
                         "(pass a threshold, or run `metabert calibrate`)")

    def inference_masks(self, attention_mask: torch.Tensor, dtype: torch.dtype):
        """(additive mask for the layers, mask for pooling); both None when nothing is padded, so
        that unpadded inputs (every batch-1 request) skip the masking work. One host sync."""
        if bool(attention_mask.all()):
            return None, None
        return additive_mask(attention_mask, dtype), attention_mask

    def full_logits(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The plain classifier, the baseline early exit is measured against: every layer, then only
        the last exit. (B, C). Same inference shortcuts as ``early_exit``."""
        hidden = self.embed(input_ids, token_type_ids)
        mask, pool_mask = self.inference_masks(attention_mask, hidden.dtype)
        for layer in self.encoder.encoder.layer:
            hidden = layer(hidden, attention_mask=mask)
        return self.exits[-1].infer(self.pool(hidden, pool_mask))

    def _early_exit_one(self, hidden, mask, attention_mask, policy: ExitPolicy) -> EarlyExitOutput:
        """``early_exit`` for a single sample: no row bookkeeping, which at batch 1 costs about as
        much as the exit heads themselves."""
        state = policy.init_state(1, hidden.device)
        last = self.num_layers
        for i, (layer, head) in enumerate(zip(self.encoder.encoder.layer, self.exits), start=1):
            hidden = layer(hidden, attention_mask=mask)
            logits = head.infer(self.pool(hidden, attention_mask))
            if i == last:
                break
            done, state = policy.step(logits, state)
            if bool(done[0]):
                return _one_exit(logits, i)
        return _one_exit(logits, last)

    @torch.inference_mode()
    def early_exit(self, input_ids, attention_mask, token_type_ids=None, threshold: float | None = None,
                   policy: ExitPolicy | None = None) -> "EarlyExitOutput":
        """Per-sample early exit: sample b leaves at the first exit where ``policy`` says so (default:
        entropy H(p) < ``threshold``, MetaBERT Eq. 6; the last exit always answers).

        Exited rows are removed from the batch before the next layer, so one hard sample does not
        make the easy ones wait, and each sample keeps its own exit layer. One host synchronisation
        per layer (how many rows left), none per sample.
        """
        policy = self.resolve_policy(policy, threshold)
        batch = input_ids.shape[0]
        hidden = self.embed(input_ids, token_type_ids)
        mask, attention_mask = self.inference_masks(attention_mask, hidden.dtype)
        if batch == 1:
            return self._early_exit_one(hidden, mask, attention_mask, policy)
        rows = torch.arange(batch, device=input_ids.device)  # original index of each active row
        state = policy.init_state(batch, input_ids.device)
        out_logits = hidden.new_zeros(batch, self.config.num_labels)
        exit_layer = torch.full((batch,), self.num_layers, dtype=torch.long, device=input_ids.device)
        for i, (layer, head) in enumerate(zip(self.encoder.encoder.layer, self.exits), start=1):
            hidden = layer(hidden, attention_mask=mask)
            logits = head.infer(self.pool(hidden, attention_mask))
            if i == self.num_layers:
                out_logits[rows] = logits
                break
            done, state = policy.step(logits, state)
            leaving = int(done.sum())
            if leaving == 0:
                continue
            if leaving == len(rows):
                out_logits[rows] = logits
                exit_layer[rows] = i
                break
            out_logits[rows[done]] = logits[done]
            exit_layer[rows[done]] = i
            keep = ~done
            rows, hidden, state = rows[keep], hidden[keep], state[keep]
            if mask is not None:
                mask, attention_mask = mask[keep], attention_mask[keep]
        return EarlyExitOutput(logits=out_logits, exit_layer=exit_layer)


def _one_exit(logits: torch.Tensor, layer: int) -> EarlyExitOutput:
    return EarlyExitOutput(logits=logits, exit_layer=torch.tensor([layer], device=logits.device))


def exit_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every exit: (L, B, C), (B,) -> (L,)."""
    num_exits, batch, classes = logits.shape
    per = F.cross_entropy(logits.reshape(-1, classes), labels.repeat(num_exits), reduction="none")
    return per.view(num_exits, batch).mean(1)
