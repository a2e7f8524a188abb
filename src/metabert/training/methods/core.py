"""The training methods of MetaBERT's Table II and the plain early-exit recipes: joint, weighted
(PABEE), last (plain fine-tuning), two-stage (DeeBERT), alternating (BERxiT) and distill (FastBERT).
Each gives the loss of a batch and, where it trains parts of the model in turn, which parameters
are trainable in an epoch (``trainable``). The registry (``metabert.training.methods``) names them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from metabert.data.batching import model_inputs
from metabert.training.methods.base import Method
from metabert.model.multi_exit import exit_losses

def _is_exit(name: str, layers: range) -> bool:
    return any(name.startswith(f"exits.{i}.") for i in layers)


def _logits(model, batch):
    return model(**model_inputs(batch))  # (L, B, C)


class Joint(Method):
    """Sum of every exit's cross-entropy, all parameters trained together: MetaBERT's Algorithm 2
    loss (Eq. 5) and the "joint" row of its Table II."""

    name = "joint"

    def loss(self, model, batch, epoch, step=0):
        return exit_losses(_logits(model, batch), batch["labels"]).sum()


class Weighted(Method):
    """PABEE (Zhou et al., 2020): exits weighted by depth, sum of i * L_i over sum of i."""

    name = "weighted"

    def loss(self, model, batch, epoch, step=0):
        losses = exit_losses(_logits(model, batch), batch["labels"])
        weights = torch.arange(1, len(losses) + 1, dtype=losses.dtype)
        return (weights * losses).sum() / weights.sum()


class LastExit(Method):
    """Only the last exit's loss: plain fine-tuning (with ``--num-layers k``, the static BERT-kL
    baseline of MetaBERT's Table I)."""

    name = "last"

    def loss(self, model, batch, epoch, step=0):
        return exit_losses(_logits(model, batch)[-1:], batch["labels"]).sum()


class TwoStage(Method):
    """DeeBERT (Xin et al., 2020): stage 1 trains the backbone and the last exit on the last exit's
    loss; stage 2 freezes them and trains exits 1..L-1 on the sum of their losses. The first
    ceil(epochs / 2) epochs are stage 1, the rest stage 2 (at least one epoch each)."""

    name = "two-stage"

    def __init__(self, epochs: int = 2):
        from metabert.training.methods import check_options

        check_options(self.name, epochs)
        super().__init__(epochs)
        self.stage1 = math.ceil(epochs / 2)
        self.first_selectable_epoch = self.stage1  # a stage-1 model has untrained inner exits

    def trainable(self, name, epoch, num_layers):
        inner = _is_exit(name, range(num_layers - 1))
        return not inner if epoch < self.stage1 else inner

    def loss(self, model, batch, epoch, step=0):
        logits = _logits(model, batch)
        if epoch < self.stage1:
            return exit_losses(logits[-1:], batch["labels"]).sum()
        return self.inner_exits_loss(logits, batch["labels"])

    def inner_exits_loss(self, logits, labels):
        return exit_losses(logits[:-1], labels).sum()


class Alternating(Method):
    """Alternating training (MetaBERT Fig. 1): epochs alternate between the joint objective (sum of
    all exits' losses) and the last exit's loss alone, all parameters training in both. BERxiT
    (Xin et al., 2021) alternates the same two objectives every step instead: ``per_step=True``
    (``--method alternating-step``)."""

    name = "alternating"

    def __init__(self, epochs: int = 1, per_step: bool = False):
        super().__init__(epochs)
        self.per_step = per_step

    def loss(self, model, batch, epoch, step=0):
        turn = step if self.per_step else epoch
        logits = _logits(model, batch)
        chosen = logits if turn % 2 == 0 else logits[-1:]
        return exit_losses(chosen, batch["labels"]).sum()


class AlternatingStep(Alternating):
    name = "alternating-step"

    def __init__(self, epochs: int = 1):
        super().__init__(epochs, per_step=True)


class Distill(TwoStage):
    """FastBERT (Liu et al., 2020): the backbone and last exit learn the task first; then, with them
    frozen, exits 1..L-1 learn the last exit's soft labels (KL divergence, temperature 1). Stages
    split the epochs as in ``two-stage``."""

    name = "distill"

    def inner_exits_loss(self, logits, labels):
        teacher = logits[-1].detach().softmax(-1)
        return sum(F.kl_div(s.log_softmax(-1), teacher, reduction="batchmean") for s in logits[:-1])
