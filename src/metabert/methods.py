"""Training methods: how the exits' losses are combined into the loss the optimiser follows.

A method is looked up by name in ``METHODS`` (``--method``); later methods register here too.
"""

from __future__ import annotations

from typing import Protocol

import torch

from metabert.batching import model_inputs
from metabert.modeling import MultiExitBert, exit_losses


class TrainingMethod(Protocol):
    """One optimisation step's loss. ``epoch`` is 0-based, for methods that change with time."""

    name: str

    def loss(self, model: MultiExitBert, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor: ...


class Joint:
    """Sum of every exit's cross-entropy, all parameters trained together.

    The loss of MetaBERT's Algorithm 2 (Eq. 5), also the "joint" row of its Table II.
    """

    name = "joint"

    def loss(self, model, batch, epoch):
        logits = model(**model_inputs(batch))  # (L, B, C)
        return exit_losses(logits, batch["labels"]).sum()


METHODS: dict[str, type] = {"joint": Joint}


def get_method(name: str) -> TrainingMethod:
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown training method {name!r}; choose one of: {', '.join(METHODS)}") from None
