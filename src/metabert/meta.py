"""MetaBERT's meta-learning (Algorithm 1: MAML, Eqs. 2-4), written with ``torch.func.functional_call``.

Vocabulary after learn2learn: ``adapt`` takes inner SGD steps on a support batch and returns the
adapted parameters θ' as a new dict (θ itself is never modified); ``meta_gradient`` sums the query
losses at each task's θ' and differentiates them with respect to θ, through the inner steps
(second order) or not (first order: the query gradient at θ' stands in for it).

A *task* is read two ways (DESIGN.md): ``episode``, a support and a query batch whose loss is the
sum of every exit's loss; ``exit``, one exit's loss per task in the inner step, all exits' query
losses in the outer step.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.func import functional_call

from metabert.batching import model_inputs
from metabert.modeling import MultiExitBert, exit_losses

TASKS = ("episode", "exit")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("interleaved", "warmstart")
ADAPT = ("all", "exits")


@dataclass(frozen=True)
class MetaConfig:
    """inner_lr α, meta_lr β (Eqs. 2 and 4); inner_steps; support size K (examples per support
    batch; the query batch has as many); meta_batch: tasks per meta-update; first_order; adapt:
    which parameters the inner loop adapts ("all" or only the "exits"); task and schedule as in the
    module docstring; warmstart_epochs: meta-learning epochs before Adam, for ``warmstart``;
    optimizer: how the meta-gradient moves θ, plain SGD θ ← θ - β g (Eq. 4 as written) or Adam with
    learning rate β (MAML's own meta-optimiser, Finn et al. 2017).

    ``inner_lr=0`` is the ablation without the inner step: θ' = θ, so the meta-gradient is the
    plain gradient of the query losses, while everything else (batches drawn, dropout masks, the
    β step) stays as in a run with α > 0. What a run gains over that row is meta-learning's own.
    ``meta_lr=0`` goes further: every meta-update is computed (the same batches drawn, the same
    random numbers consumed) but moves nothing, so what ``meta`` gains over that row is its
    meta-updates' own, and what the row gains over ``joint`` comes from the random stream alone."""

    inner_lr: float = 1e-4
    meta_lr: float = 1e-5
    inner_steps: int = 1
    support_size: int = 16
    meta_batch: int = 2
    first_order: bool = True
    adapt: str = "all"
    task: str = "episode"
    schedule: str = "interleaved"
    warmstart_epochs: int = 1
    optimizer: str = "sgd"

    def __post_init__(self):
        for name, ok in {
            "inner_lr": self.inner_lr >= 0, "meta_lr": self.meta_lr >= 0, "inner_steps": self.inner_steps >= 1,
            "support_size": self.support_size >= 1, "meta_batch": self.meta_batch >= 1,
            "adapt": self.adapt in ADAPT, "task": self.task in TASKS, "schedule": self.schedule in SCHEDULES,
            "warmstart_epochs": self.warmstart_epochs >= 1, "optimizer": self.optimizer in OPTIMIZERS,
        }.items():
            if not ok:
                raise ValueError(f"invalid meta option {name}: {getattr(self, name)!r}")


def parameters(model: MultiExitBert) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def task_loss(model: MultiExitBert, params: dict, batch: dict, exit_index: int | None = None) -> torch.Tensor:
    """Loss at ``params``: the sum over exits (episode), or exit ``exit_index``'s alone."""
    logits = functional_call(model, params, args=(), kwargs=model_inputs(batch))  # (L, B, C)
    losses = exit_losses(logits, batch["labels"])
    return losses.sum() if exit_index is None else losses[exit_index]


def adapt(model: MultiExitBert, params: dict, support: dict, config: MetaConfig, exit_index: int | None = None,
          where: str = "") -> dict[str, torch.Tensor]:
    """θ' = θ - α ∇θ L_support(θ) (Eq. 2), ``inner_steps`` times; returns a new dict."""
    adapted = dict(params)
    names = [n for n in params if config.adapt == "all" or n.startswith("exits.")]
    for step in range(config.inner_steps):
        loss = task_loss(model, adapted, support, exit_index)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite inner loss {loss.item()} {where}(inner step {step + 1}; inner_lr={config.inner_lr}, "
                f"inner_steps={config.inner_steps}, adapt={config.adapt}, task={config.task})")
        grads = torch.autograd.grad(loss, [adapted[n] for n in names], create_graph=not config.first_order)
        for n, g in zip(names, grads):
            adapted[n] = adapted[n] - config.inner_lr * (g.detach() if config.first_order else g)
    return adapted


@contextmanager
def twice_differentiable(model: MultiExitBert, needed: bool):
    """Second-order MAML differentiates through a gradient; PyTorch's fused CPU attention has no
    double backward, so the plain ("eager") attention is used meanwhile."""
    before = model.encoder.config._attn_implementation
    if needed and before != "eager":
        model.encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        if needed and before != "eager":
            model.encoder.set_attn_implementation(before)


def meta_gradient(model: MultiExitBert, tasks: list[tuple[dict, dict]], config: MetaConfig,
                  where: str = "", measure: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """∇θ Σ_i L_query_i(θ'_i) (Eqs. 3-4) over ``tasks`` [(support, query), ...], and diagnostics:
    the query loss and, with ``measure``, the relative size of the inner step ‖θ'-θ‖/‖θ‖ (a pass
    over every parameter, so training measures it only on diagnostic steps)."""
    with twice_differentiable(model, not config.first_order):
        return _meta_gradient(model, tasks, config, where, measure)


def _meta_gradient(model, tasks, config, where, measure):
    params = parameters(model)
    total, step_norm = 0.0, 0.0
    for i, (support, query) in enumerate(tasks):
        exit_index = i % model.num_layers if config.task == "exit" else None
        adapted = adapt(model, params, support, config, exit_index, where)
        total = total + task_loss(model, adapted, query)  # every exit's query loss ("collaborative")
        if measure:
            with torch.no_grad():
                step_norm += sum(float((adapted[n] - params[n]).pow(2).sum()) for n in params)
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite query loss {total.item()} {where}(inner_lr={config.inner_lr})")
    grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    grads = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), grads)}
    info = {"query_loss": total.item() / len(tasks)}
    if measure:
        with torch.no_grad():
            base_norm = sum(float(p.pow(2).sum()) for p in params.values()) * len(tasks)
        info["inner_step_relative"] = math.sqrt(step_norm / base_norm)
    return grads, info


def split_tasks(batch: dict, config: MetaConfig) -> list[tuple[dict, dict]]:
    """Cut a batch into ``meta_batch`` (support, query) pairs of ``support_size`` rows each (fewer
    tasks when the batch is small; at least one, halving the batch)."""
    rows = batch["labels"].shape[0]
    k = min(config.support_size, max(1, rows // 2))
    count = max(1, min(config.meta_batch, rows // (2 * k)))
    tasks = []
    for t in range(count):
        s, q = slice(2 * t * k, 2 * t * k + k), slice(2 * t * k + k, 2 * t * k + 2 * k)
        tasks.append(({n: v[s] for n, v in batch.items()}, {n: v[q] for n, v in batch.items()}))
    return tasks


def cosine_to_query_gradient(model: MultiExitBert, tasks: list[tuple[dict, dict]], config: MetaConfig) -> float:
    """How far the meta-gradient is from the plain gradient of the same query losses at θ: their
    cosine, both computed without dropout, so that the figure measures the inner step and not two
    different dropout masks (with dropout, even α → 0 gives a cosine near 0.7 on MiniLM)."""
    was_training = model.training
    model.eval()
    try:
        meta_grads, _ = meta_gradient(model, tasks, config)
        params = parameters(model)
        query = sum(task_loss(model, params, q) for _, q in tasks)
        plain = torch.autograd.grad(query, list(params.values()), allow_unused=True)
        plain = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), plain)}
    finally:
        model.train(was_training)
    return cosine(meta_grads, plain)


def cosine(a: dict, b: dict) -> float:
    dot = sum(float((a[n] * b[n]).sum()) for n in a)
    na = math.sqrt(sum(float(a[n].pow(2).sum()) for n in a))
    nb = math.sqrt(sum(float(b[n].pow(2).sum()) for n in b))
    return dot / (na * nb) if na and nb else float("nan")


def make_optimizer(model: MultiExitBert, config: MetaConfig) -> torch.optim.Optimizer | None:
    """The meta-optimiser's state (Adam's moments), or None for plain SGD."""
    if config.optimizer == "sgd":
        return None
    return torch.optim.Adam(model.parameters(), lr=config.meta_lr)


@torch.no_grad()
def apply(model: MultiExitBert, grads: dict, lr: float, optimizer: torch.optim.Optimizer | None = None) -> None:
    """θ ← θ - β g (Eq. 4), or an Adam step on g when ``optimizer`` is given."""
    if optimizer is None:
        for n, p in model.named_parameters():
            if n in grads:
                p.sub_(lr * grads[n])
        return
    saved = {n: p.grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads.get(n)
    optimizer.step()
    for n, p in model.named_parameters():
        p.grad = saved[n]
