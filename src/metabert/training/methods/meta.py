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
from dataclasses import dataclass, replace

import torch
from torch.func import functional_call

from metabert.data.batching import model_inputs
from metabert.model.multi_exit import MultiExitBert, exit_losses
from metabert.common.options import option

TASKS = ("episode", "exit")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("interleaved", "warmstart")
ADAPT = ("all", "exits")
ORDERS = ("first", "second")


@dataclass(frozen=True)
class MetaConfig:
    """The options of ``--method meta`` (and of ``joint-matched``, its control), each documented
    once in its field; on the command line and in ``train_config.json`` they carry the prefix
    ``meta_`` (``--meta-inner-lr``; ``meta_lr`` keeps its name).

    ``share_gradients`` (first order, episode tasks, interleaved schedule): the gradients at θ of
    the support and query batches, which a first-order meta-update needs for its inner step and
    which are parts of the batch's joint gradient, are computed once and serve both: the inner
    step, and Algorithm 2's Adam step, which then follows the batch's gradient at θ from before the
    meta-update instead of after it (one β step stale). A meta-update then costs one more pass over
    the query rows instead of two over the task rows (``shared_step``).

    ``inner_lr=0`` is the ablation without the inner step: θ' = θ, so the meta-gradient is the
    plain gradient of the query losses, while everything else (batches drawn, dropout masks, the
    β step) stays as in a run with α > 0. What a run gains over that row is meta-learning's own.
    ``meta_lr=0`` goes further: every meta-update is computed (the same batches drawn, the same
    random numbers consumed) but moves nothing, so what ``meta`` gains over that row is its
    meta-updates' own, and what the row gains over ``joint`` comes from the random stream alone."""

    inner_lr: float = option(1e-4, help="α, inner SGD step (Eq. 2); 0: the ablation without an inner step")
    meta_lr: float = option(1e-5, help="β, meta step (Eq. 4)")
    inner_steps: int = option(1, help="inner SGD steps per task")
    support_size: int = option(16, help="K: examples per support (and query) batch")
    meta_batch: int = option(2, help="tasks per meta-update")
    order: str = option("first", choices=ORDERS,
                        help="first-order MAML (the query gradient at θ' stands in) or second order")
    adapt: str = option("all", help="what the inner loop adapts", choices=ADAPT)
    task: str = option("episode", choices=TASKS,
                       help="a task: a support and a query batch (episode), or one exit's loss (exit)")
    schedule: str = option("interleaved", choices=SCHEDULES,
                           help="a meta-update before every Adam step, or meta-learning epochs first (warmstart)")
    warmstart_epochs: int = option(1, help="--meta-schedule warmstart: meta-learning epochs before Adam")
    optimizer: str = option(
        "sgd", choices=OPTIMIZERS,
        help="meta step: plain SGD θ - βg (Eq. 4) or Adam with rate β (MAML's meta-optimiser)")
    diagnose_every: int = option(
        20, help="steps between checks of the meta-gradient against the plain gradient (0: never)")
    share_gradients: bool = option(
        False, help="first order: the inner step and the Adam step share the gradients at θ "
                    "(a meta-update costs one pass over the query rows, not two over the task rows)")

    @property
    def first_order(self) -> bool:
        return self.order == "first"

    def __post_init__(self):
        for name, ok in {
            "inner_lr": self.inner_lr >= 0, "meta_lr": self.meta_lr >= 0, "inner_steps": self.inner_steps >= 1,
            "support_size": self.support_size >= 1, "meta_batch": self.meta_batch >= 1, "order": self.order in ORDERS,
            "adapt": self.adapt in ADAPT, "task": self.task in TASKS, "schedule": self.schedule in SCHEDULES,
            "warmstart_epochs": self.warmstart_epochs >= 1, "optimizer": self.optimizer in OPTIMIZERS,
            "diagnose_every": self.diagnose_every >= 0,
        }.items():
            if not ok:
                raise ValueError(f"invalid meta option {name}: {getattr(self, name)!r}")
        if self.share_gradients:
            for name, needed in {"order": "first", "task": "episode", "schedule": "interleaved"}.items():
                if getattr(self, name) != needed:
                    raise ValueError(f"share_gradients needs {name}={needed!r} (the shared gradient is the "
                                     f"first inner step of an episode and the Adam step of the same batch), "
                                     f"got {getattr(self, name)!r}")


def parameters(model: MultiExitBert) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def task_loss(model: MultiExitBert, params: dict, batch: dict, exit_index: int | None = None) -> torch.Tensor:
    """Loss at ``params``: the sum over exits (episode), or exit ``exit_index``'s alone."""
    logits = functional_call(model, params, args=(), kwargs=model_inputs(batch))  # (L, B, C)
    losses = exit_losses(logits, batch["labels"])
    return losses.sum() if exit_index is None else losses[exit_index]


def adapt(model: MultiExitBert, params: dict, support: dict, config: MetaConfig, exit_index: int | None = None,
          where: str = "", support_grad: dict | None = None) -> dict[str, torch.Tensor]:
    """θ' = θ - α ∇θ L_support(θ) (Eq. 2), ``inner_steps`` times; returns a new dict.
    ``support_grad``: ∇θ L_support(θ), already computed by the caller, for the first step."""
    adapted = dict(params)
    names = [n for n in params if config.adapt == "all" or n.startswith("exits.")]
    for step in range(config.inner_steps):
        if step == 0 and support_grad is not None:
            adapted.update({n: params[n] - config.inner_lr * support_grad[n] for n in names})
            continue
        loss = task_loss(model, adapted, support, exit_index)
        check_finite(loss, "inner loss", f"{where}(inner step {step + 1}; inner_lr={config.inner_lr}, "
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


def check_finite(loss: torch.Tensor, name: str, context: str) -> None:
    """Stop with the loss, where it went wrong and the options in play, rather than train on NaN."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite {name} {loss.item()} {context}")


def _meta_gradient(model, tasks, config, where, measure, support_grads=None):
    params = parameters(model)
    total, step_norm = 0.0, 0.0
    for i, (support, query) in enumerate(tasks):
        exit_index = i % model.num_layers if config.task == "exit" else None
        adapted = adapt(model, params, support, config, exit_index, where,
                        support_grads[i] if support_grads else None)
        total = total + task_loss(model, adapted, query)  # every exit's query loss ("collaborative")
        if measure:
            with torch.no_grad():
                step_norm += sum(float((adapted[n] - params[n]).pow(2).sum()) for n in params)
    check_finite(total, "query loss", f"{where}(inner_lr={config.inner_lr})")
    grads = gradient(total, params)
    info = {"query_loss": total.item() / len(tasks)}
    if measure:
        with torch.no_grad():
            base_norm = sum(float(p.pow(2).sum()) for p in params.values()) * len(tasks)
        info["inner_step_relative"] = math.sqrt(step_norm / base_norm)
    return grads, info


def gradient(loss: torch.Tensor, params: dict) -> dict[str, torch.Tensor]:
    """∇ ``loss`` for every parameter of ``params`` (zeros where it does not reach)."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), grads)}


def shared_step(model: MultiExitBert, batch: dict, config: MetaConfig, where: str = "",
                measure: bool = True) -> tuple[dict, dict, dict]:
    """A first-order meta-update and the batch's joint gradient from shared passes
    (``MetaConfig.share_gradients``): one forward-backward at θ over each support, each query and
    the rows no task took, whose gradients, weighted by their rows, add up to the gradient of the
    batch's summed exit losses (each exit's loss is a mean over rows); the supports' gradients are
    also the first inner steps; then one more pass over each query at θ'. Returns (meta-gradient,
    the batch's joint gradient at θ, diagnostics with the batch's joint loss as ``batch_loss``)."""
    tasks = split_tasks(batch, config)
    rows = batch["labels"].shape[0]
    taken = sum(len(q["labels"]) for _, q in tasks) * 2  # the tasks take the batch's first rows
    parts = [part for task in tasks for part in task]
    if taken < rows:
        parts.append({n: v[taken:] for n, v in batch.items()})
    params = parameters(model)
    joint, batch_loss, support_grads = {n: torch.zeros_like(p) for n, p in params.items()}, 0.0, []
    for i, part in enumerate(parts):
        loss = task_loss(model, params, part)
        check_finite(loss, "loss", f"{where}(shared gradients: part {i + 1} of {len(parts)} of the batch)")
        grads, share = gradient(loss, params), len(part["labels"]) / rows
        for n, g in grads.items():
            joint[n].add_(g, alpha=share)
        batch_loss += share * loss.item()
        if i < 2 * len(tasks) and i % 2 == 0:  # a support batch
            support_grads.append(grads)
    meta_grads, info = _meta_gradient(model, tasks, config, where, measure, support_grads)
    return meta_grads, joint, {**info, "batch_loss": batch_loss}


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
        meta_grads, _ = meta_gradient(model, tasks, replace(config, share_gradients=False))
        params = parameters(model)
        plain = gradient(sum(task_loss(model, params, q) for _, q in tasks), params)
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
