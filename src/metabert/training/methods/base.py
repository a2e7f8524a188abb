"""The base of the training methods (``metabert.training.methods.core`` registers them): the ``TrainingMethod``
protocol the trainer relies on, and ``Method``, the defaults a method overrides. A module of its
own so that methods defined elsewhere (``metabert.training.methods.peers``) subclass it without importing the
registry."""

from __future__ import annotations

from typing import Protocol

import torch

from metabert.model.multi_exit import MultiExitBert


class TrainingMethod(Protocol):
    """``epoch`` and ``step`` (training batches so far) are 0-based; ``epochs`` (the run's total) is
    given to the constructor. Methods keep no state between calls: what they do depends only on
    their arguments, so a resumed run continues exactly."""

    name: str

    def loss(self, model: MultiExitBert, batch: dict[str, torch.Tensor], epoch: int, step: int = 0) -> torch.Tensor:
        ...

    def trainable(self, name: str, epoch: int, num_layers: int) -> bool:
        """Whether parameter ``name`` trains in ``epoch`` (default: all of them)."""
        ...

    def updates_per_batch(self, epoch: int) -> int:
        ...

    def update_batches(self, batch: dict[str, torch.Tensor], epoch: int) -> list[dict[str, torch.Tensor]]:
        ...


class Method:
    name = ""

    def __init__(self, epochs: int = 1):
        self.epochs = epochs
        self.first_selectable_epoch = 0  # epochs before it are never kept as the best checkpoint

    @classmethod
    def from_options(cls, epochs: int = 1, meta=None, config=None, teacher=None, total_steps: int = 1) -> "Method":
        """The method for a run of ``epochs`` from that run's options: ``config`` (a ``TrainConfig``,
        whose sections hold the methods' options), ``meta`` (a ``MetaConfig`` given on its own),
        ``teacher`` (the fine-tuned model a static system learns from) and ``total_steps`` (training
        steps of the run). The registry's ``get_method`` calls it; the default is ``cls(epochs)``."""
        return cls(epochs)

    def trainable(self, name: str, epoch: int, num_layers: int) -> bool:
        return True

    def final_model(self, model):
        """The model an epoch's evaluation scores and the checkpoint keeps: the trained one (LayerDrop
        prunes it)."""
        return model

    def updates_per_batch(self, epoch: int) -> int:
        """Optimizer (Adam) steps per batch in ``epoch``: sizes the learning-rate schedule."""
        return 1

    def make_optimizer(self, model):
        """A stateful optimiser of the method's own beside AdamW (saved and resumed with it), or None."""
        return None

    def update_batches(self, batch: dict, epoch: int) -> list[dict | None]:
        """The batches this epoch's optimizer steps take for one training batch, in order. None: a
        step whose gradients the method's ``before_step`` has already left in the parameters' ``.grad``."""
        return [batch] if self.updates_per_batch(epoch) else []
