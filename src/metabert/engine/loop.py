"""The early-exit engine: the one loop over layers that every inference path runs.

A *runner* knows how to compute one layer and its exit on some backend (eager PyTorch, ONNX
Runtime, ...); an ``ExitPolicy`` decides after each exit which samples may leave. ``run`` drives
the two: after layer i the policy looks at exit i's logits, the rows that leave keep those logits
and their exit layer, and only the others go on to layer i+1, so one hard sample does not make the
easy ones wait. Evaluate, predict, serve, bench and calibration all answer through ``run``; the
simulator over every exit's logits (``metabert.engine.policies.simulate_exits``) takes the same decisions,
which a contract test checks for every policy and runner.

Runners return exit logits as torch tensors (a zero-copy view for numpy backends) so that the
policies, written once in torch, serve every backend. At batch 1 the threshold rules run in Python
floats instead (``leaves_one``), and defer to the torch rule wherever the two could differ.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from metabert.engine.policies import ExitPolicy


@dataclass(frozen=True)
class ExitResult:
    """Per-sample result of early-exit inference, in input order."""

    logits: torch.Tensor  # (B, C) logits of the exit each sample left at
    exit_layer: torch.Tensor  # (B,) 1-based layer index

    @property
    def probs(self) -> torch.Tensor:  # (B, C)
        return self.logits.float().softmax(-1)

    @property
    def predictions(self) -> torch.Tensor:  # (B,)
        return self.logits.argmax(-1)

    def __len__(self) -> int:
        return len(self.exit_layer)


class Runner(Protocol):
    """One backend's layer step. ``State`` is whatever the backend carries between layers (hidden
    states, masks) for the rows still running; ``keep`` selects rows of it."""

    name: str
    num_layers: int

    def start(self, inputs: dict[str, Any]) -> Any:
        """Embeddings and per-batch layer inputs for a padded batch (``input_ids``,
        ``attention_mask``, optional ``token_type_ids``, as torch tensors)."""
        ...

    def step(self, index: int, state: Any) -> tuple[Any, torch.Tensor]:
        """Layer ``index`` (0-based) and its exit: (new state, (B, C) exit logits)."""
        ...

    def select(self, state: Any, keep: torch.Tensor) -> Any:
        """The state of the rows where ``keep`` (B,) is true."""
        ...

    def full(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The plain classifier early exit is measured against: every layer, last exit, (B, C)."""
        ...

    # optional: ``early_exit_all(inputs, policy) -> ExitResult``, the whole early exit of any batch in
    # one backend call (the single ONNX file, metabert.deploy.single_file), taking the same exits.
    # optional: ``early_exit_one(inputs, policy) -> ExitResult | None``, a whole batch-1 early exit
    # in one backend call (ONNX Runtime: the exit test inside the graph), taking the same exits;
    # None where it does not apply. ``run`` uses it at batch 1, and ``early_exit_many`` (the same
    # contract) for batches of several rows.
    # optional: ``host_threads``, the torch threads for the engine's own work (the exit test, row
    # bookkeeping) while this runner runs; see ``host_threads``.


@contextmanager
def host_threads(runner):
    """PyTorch at ``runner.host_threads`` threads for the engine's own tensor work, then as before.
    A backend with its own thread pool (ONNX Runtime) wants 1: torch's OpenMP workers spin after
    each parallel region and take the cores from that pool's next call (SST-2 dev at batch 32:
    early exit 1.75x slower with torch at 2 threads than at 1, results/bench/ort_batch_profile.txt
    from benchmarks/ort_batch_profile.py). Setting it costs < 1 µs."""
    wanted = getattr(runner, "host_threads", None)
    before = torch.get_num_threads()
    if wanted is None or wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def every_exit(runner: Runner, inputs: dict[str, Any]) -> torch.Tensor:
    """Every exit's logits (L, B, C) of one padded batch through the runner's own layer steps, no
    row leaving (what calibration chooses γ on, and what export checks compare)."""
    state, logits = runner.start(inputs), []
    for i in range(runner.num_layers):
        state, exit_logits = runner.step(i, state)
        logits.append(exit_logits.float())
    return torch.stack(logits)


def run(runner: Runner, inputs: dict[str, Any], policy: ExitPolicy) -> ExitResult:
    """Per-sample early exit of one padded batch: sample b leaves at the first exit where ``policy``
    says so; the last exit always answers. One host synchronisation per layer (how many rows
    leave); at batch 1, no row bookkeeping at all (it would cost as much as the exit head), and the
    exit test in Python floats (``ExitPolicy.decide_one``) where the policy has it."""
    with host_threads(runner):
        return _run(runner, inputs, policy)


def _run(runner: Runner, inputs: dict[str, Any], policy: ExitPolicy) -> ExitResult:
    batch = int(inputs["input_ids"].shape[0])
    whole = getattr(runner, "early_exit_all", None)  # the whole early exit in one call, at any batch size
    if whole is not None:
        return whole(inputs, policy)
    # the runner's own one-call paths: batch 1 (``early_exit_one``), several rows (``early_exit_many``);
    # either may decline (None) and the loop below steps layer by layer
    fused = getattr(runner, "early_exit_one" if batch == 1 else "early_exit_many", None)
    if fused is not None:
        result = fused(inputs, policy)
        if result is not None:
            return result
    last = runner.num_layers
    state = runner.start(inputs)
    policy_state = policy.init_state(batch)
    rows = torch.arange(batch)  # (R,) original index of each row still running
    out_logits: torch.Tensor | None = None
    exit_layer = torch.full((batch,), last, dtype=torch.long)
    for i in range(1, last + 1):
        state, logits = runner.step(i - 1, state)  # (R, C)
        if out_logits is None:
            out_logits = logits.new_zeros(batch, logits.shape[-1])
        if i == last:
            out_logits[rows] = logits
            break
        if len(rows) == 1:  # one row: no bookkeeping
            leave, policy_state = leaves_one(policy, logits, policy_state)
            if leave:
                out_logits[rows] = logits
                exit_layer[rows] = i
                break
            continue
        done, policy_state = policy.step(logits, policy_state)  # (R,) bool
        leaving = int(done.sum())
        if leaving == 0:
            continue
        out_logits[rows[done]] = logits[done]
        exit_layer[rows[done]] = i
        if leaving == len(rows):
            break
        keep = ~done
        rows, policy_state, state = rows[keep], policy_state[keep], runner.select(state, keep)
    return ExitResult(logits=out_logits, exit_layer=exit_layer)


def leaves_one(policy: ExitPolicy, logits: torch.Tensor, state: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """The exit test of one row's (1, C) logits: the rule in Python floats where the policy has it
    (``ExitPolicy.decide_one``: a few torch ops on a (1, C) tensor cost more than the arithmetic),
    else its ``step``. (leave?, new state)."""
    leave = policy.decide_one(logits.tolist()[0])  # one torch call, not an index and a tolist
    if leave is None:
        done, state = policy.step(logits, state)
        leave = bool(done[0])
    return leave, state


def run_full(runner: Runner, inputs: dict[str, Any]) -> ExitResult:
    """The full model through the same runner: every sample at the last exit."""
    with host_threads(runner):
        logits = runner.full(inputs)
    return ExitResult(logits=logits, exit_layer=torch.full((len(logits),), runner.num_layers, dtype=torch.long))
