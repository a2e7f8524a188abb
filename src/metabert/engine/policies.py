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

import dataclasses
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


# How close (in the statistic's own units, nats or probability; per class) a statistic computed in
# float64 from one sample's logits may come to γ before ``decide_one`` leaves the decision to the
# float32 ``step``: float32 softmax and entropy over C classes are off by about C x 1e-7 at most.
SCALAR_MARGIN = 1e-4


def _softmax_one(values: list[float]) -> list[float] | None:
    """softmax of one sample's logits in Python floats (None where one is not finite)."""
    if not all(math.isfinite(v) for v in values):
        return None
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _entropy_one(values: list[float]) -> float | None:
    probs = _softmax_one(values)
    return None if probs is None else -sum(p * math.log(p) for p in probs if p > 0.0)


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

    def decide_one(self, values: list[float]) -> bool | None:
        """The rule on one sample's exit logits as Python floats (the engine's batch-1 path, where a
        handful of torch ops on a (1, C) tensor cost more than the arithmetic): True leave, False
        stay, None where the rule needs ``step`` (a stateful rule, non-finite logits, or a statistic
        within ``SCALAR_MARGIN`` of γ, where float64 and the float32 ``step`` might disagree). Where it
        answers, it answers as ``step`` does; tests/test_policies.py checks that."""
        return None

    def describe(self) -> str:
        if self.parameter == "patience":
            return f"{self.name} (t={self.patience})"
        extra = f", t={self.patience}" if self.state_size else ""
        return f"{self.name} (γ={self.threshold:g}{extra})"


@dataclass(frozen=True)
class ThresholdPolicy(ExitPolicy):
    """A stateless rule on one statistic of an exit's prediction: leave where ``statistic`` < γ
    (``leave_above``: > γ)."""

    leave_above: ClassVar[bool] = False

    @staticmethod
    def statistic(logits: torch.Tensor) -> torch.Tensor:
        """(B, C) logits -> (B,) the statistic, in float32 at least."""
        raise NotImplementedError

    @staticmethod
    def statistic_one(values: list[float]) -> float | None:
        """``statistic`` of one sample's logits in Python floats (None where one is not finite)."""
        raise NotImplementedError

    def step(self, logits, state):
        stat = self.statistic(logits)
        return (stat > self.threshold if self.leave_above else stat < self.threshold), state

    def never_exits(self) -> "ThresholdPolicy":
        """This rule at a threshold no exit passes (entropy below 0, max probability above 1): every
        layer, exit head and test runs, which the profiles time to find what an exit costs."""
        return dataclasses.replace(self, threshold=1.0 if self.leave_above else 0.0)

    def decide_one(self, values):
        stat = self.statistic_one(values)
        if stat is None or abs(stat - self.threshold) <= SCALAR_MARGIN * len(values):
            return None
        return stat > self.threshold if self.leave_above else stat < self.threshold


@dataclass(frozen=True)
class EntropyPolicy(ThresholdPolicy):
    name: ClassVar[str] = "entropy"

    statistic = staticmethod(entropy)
    statistic_one = staticmethod(_entropy_one)


@dataclass(frozen=True)
class NormEntropyPolicy(ThresholdPolicy):
    name: ClassVar[str] = "norm-entropy"

    @staticmethod
    def statistic(logits):
        return entropy(logits) / math.log(logits.shape[-1])

    @staticmethod
    def statistic_one(values):
        h = _entropy_one(values)
        return None if h is None else h / math.log(len(values))


@dataclass(frozen=True)
class MaxProbPolicy(ThresholdPolicy):
    name: ClassVar[str] = "max-prob"
    leave_above: ClassVar[bool] = True

    @staticmethod
    def statistic(logits):
        return logits.float().softmax(-1).amax(-1)

    @staticmethod
    def statistic_one(values):
        probs = _softmax_one(values)
        return None if probs is None else max(probs)


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
