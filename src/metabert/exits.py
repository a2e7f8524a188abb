"""Exit policies: when a sample may leave at an intermediate exit.

A policy is stateless: it decides per sample from the current exit's logits and a per-sample state
tensor that the caller carries from layer to layer (and shrinks with the batch as rows leave). The
same ``step`` drives real early exit (``MultiExitBert.early_exit``) and the after-the-fact simulation
from every exit's logits used for sweeps and calibration, so the two cannot disagree.

| name | rule | source |
|---|---|---|
| ``entropy`` | H(p) < γ (nats) | DeeBERT, MetaBERT Eq. 6 |
| ``norm-entropy`` | H(p) / log C < γ | FastBERT |
| ``max-prob`` | max p > γ | Shallow-Deep Networks |
| ``patience`` | the same argmax at t+1 consecutive exits (t agreements) | PABEE |
| ``patience-entropy`` | t consecutive exits with H(p) < γ and the same argmax | this project |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) over the last dimension.

    Computed from log-softmax as -sum p log p in float32 at least, which stays finite for logits
    of any size (DeeBERT's log(sum e^x) - sum(x e^x)/sum(e^x) overflows).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass(frozen=True)
class ExitPolicy:
    """Base of the registered policies. ``threshold`` is γ; ``patience`` is t (where used)."""

    threshold: float = 0.0
    patience: int = 1

    name: ClassVar[str] = ""
    parameter: ClassVar[str] = "threshold"  # what calibration tunes
    state_size: ClassVar[int] = 0

    def init_state(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(batch, self.state_size, dtype=torch.long, device=device)

    def step(self, logits: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C) logits, (B, S) state -> (B,) bool "exit now", new state."""
        raise NotImplementedError

    def describe(self) -> str:
        if self.parameter == "patience":
            return f"{self.name} (t={self.patience})"
        extra = f", t={self.patience}" if self.state_size else ""
        return f"{self.name} (γ={self.threshold:g}{extra})"


@dataclass(frozen=True)
class EntropyPolicy(ExitPolicy):
    name: ClassVar[str] = "entropy"

    def step(self, logits, state):
        return entropy(logits) < self.threshold, state


@dataclass(frozen=True)
class NormEntropyPolicy(ExitPolicy):
    name: ClassVar[str] = "norm-entropy"

    def step(self, logits, state):
        return entropy(logits) / math.log(logits.shape[-1]) < self.threshold, state


@dataclass(frozen=True)
class MaxProbPolicy(ExitPolicy):
    name: ClassVar[str] = "max-prob"

    def step(self, logits, state):
        return logits.float().softmax(-1).amax(-1) > self.threshold, state


def _runs(agree: torch.Tensor, counts: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Run length: +1 where this exit continues the run, 1 where it starts one, 0 where not counted."""
    return torch.where(counted, torch.where(agree, counts + 1, torch.ones_like(counts)), torch.zeros_like(counts))


@dataclass(frozen=True)
class PatiencePolicy(ExitPolicy):
    """State: (previous argmax or -1, length of the current run of equal argmaxes)."""

    name: ClassVar[str] = "patience"
    parameter: ClassVar[str] = "patience"
    state_size: ClassVar[int] = 2

    def init_state(self, batch, device=None):
        state = torch.zeros(batch, 2, dtype=torch.long, device=device)
        state[:, 0] = -1
        return state

    def step(self, logits, state):
        pred = logits.argmax(-1)
        runs = _runs(pred == state[:, 0], state[:, 1], torch.ones_like(pred, dtype=torch.bool))
        return runs > self.patience, torch.stack([pred, runs], 1)


@dataclass(frozen=True)
class PatienceEntropyPolicy(PatiencePolicy):
    """Patience counted only on confident exits (H < γ): t such exits in a row agreeing; t=1 is
    plain entropy exit."""

    name: ClassVar[str] = "patience-entropy"
    parameter: ClassVar[str] = "threshold"

    def step(self, logits, state):
        pred = logits.argmax(-1)
        confident = entropy(logits) < self.threshold
        # a run continues only if the previous exit was confident (run > 0) with the same argmax
        agree = (pred == state[:, 0]) & (state[:, 1] > 0)
        runs = _runs(agree, state[:, 1], confident)
        return runs >= self.patience, torch.stack([pred, runs], 1)


POLICIES: dict[str, type[ExitPolicy]] = {
    p.name: p for p in (EntropyPolicy, NormEntropyPolicy, MaxProbPolicy, PatiencePolicy, PatienceEntropyPolicy)
}


def get_policy(name: str, threshold: float | None = None, patience: int | None = None) -> ExitPolicy:
    """A policy by name; a missing name lists the valid ones."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown exit policy {name!r}; choose one of: {', '.join(POLICIES)}") from None
    kwargs = {}
    if threshold is not None:
        kwargs["threshold"] = float(threshold)
    if patience is not None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        kwargs["patience"] = int(patience)
    return cls(**kwargs)


def policy_to_dict(policy: ExitPolicy) -> dict:
    return {"name": policy.name, "threshold": policy.threshold, "patience": policy.patience}


def policy_from_dict(data: dict) -> ExitPolicy:
    return get_policy(data["name"], data.get("threshold"), data.get("patience"))


def simulate_exits(all_logits: torch.Tensor, policy: ExitPolicy) -> torch.Tensor:
    """Which exit each sample takes under ``policy``, from every exit's logits (L, N, C) -> (N,) 1-based.

    The same decisions as real early exit; lets a sweep or a calibration reuse one full pass.
    """
    num_layers, n, _ = all_logits.shape
    state = policy.init_state(n)
    layers = torch.full((n,), num_layers, dtype=torch.long)
    open_ = torch.ones(n, dtype=torch.bool)
    for i in range(num_layers - 1):
        done, state = policy.step(all_logits[i], state)
        leave = done & open_
        layers[leave] = i + 1
        open_ &= ~done
    return layers
