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
from dataclasses import replace

import torch
from torch.func import functional_call

from metabert.data.batching import model_inputs
from metabert.model.multi_exit import MultiExitBert, exit_losses
from metabert.training import distributed
from metabert.training.methods.base import Method
from metabert.training.methods.core import Joint
from metabert.training.methods.options import MetaConfig, check_warmstart

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


# ------------------------------------------------------------------------ the training methods
class JointMatched(Joint):
    """Control for ``meta`` (issue #3): the joint loss given the same optimizer updates and the same
    examples as ``meta`` with the same meta options. Wherever ``meta`` makes a meta-update on the
    tasks cut from a batch, this takes an extra Adam step on those same rows (support and query
    batches together; with ``share_gradients``, the query batches only, the rows that ``meta`` passes
    over a second time); wherever ``meta`` takes its Adam step on the batch, so does this. A MetaBERT
    gain counts only where it beats this, not plain ``joint``, which sees each batch once."""

    name = "joint-matched"

    def __init__(self, epochs: int = 1, config=None):
        super().__init__(epochs)
        self.config = config or MetaConfig()
        self.meta_epochs = self.config.warmstart_epochs if self.config.schedule == "warmstart" else epochs

    @classmethod
    def from_options(cls, epochs=1, meta=None, config=None, teacher=None, total_steps=1):
        return cls(epochs, meta or getattr(config, "meta", None))

    def _steps(self, epoch: int) -> tuple[bool, bool]:
        """(a step where meta makes its meta-update, a step where meta takes its Adam step)."""
        return epoch < self.meta_epochs, self.config.schedule == "interleaved" or epoch >= self.meta_epochs

    def updates_per_batch(self, epoch: int) -> int:
        return sum(self._steps(epoch))

    def update_batches(self, batch: dict, epoch: int) -> list[dict]:
        """The batches this epoch's optimizer steps take, in order."""
        on_task_rows, on_batch = self._steps(epoch)
        out = []
        if on_task_rows:
            tasks = split_tasks(batch, self.config)
            parts = [q for _, q in tasks] if self.config.share_gradients else [part for task in tasks for part in task]
            out.append({n: torch.cat([p[n] for p in parts]) for n in batch})
        if on_batch:
            out.append(batch)
        return out


class Meta(Method):
    """MetaBERT (Algorithm 2 around Algorithm 1): the summed exit losses trained with Adam, from
    parameters moved by MAML meta-updates (``metabert.training.methods.meta``). ``interleaved``: every step first
    makes a meta-update on tasks cut from the batch, then the Adam step on the batch;
    ``warmstart``: the first ``warmstart_epochs`` epochs only meta-learn, the rest are plain
    Algorithm 2 from the meta-learned θ. With ``share_gradients`` the meta-update and the Adam step
    share their passes at θ (``shared_step``)."""

    name = "meta"

    def __init__(self, epochs: int = 1, config=None):
        super().__init__(epochs)
        self.config = config or MetaConfig()
        check_warmstart(epochs, self.config)
        self.meta_only_epochs = self.config.warmstart_epochs if self.config.schedule == "warmstart" else 0
        self.first_selectable_epoch = self.meta_only_epochs

    @classmethod
    def from_options(cls, epochs=1, meta=None, config=None, teacher=None, total_steps=1):
        return cls(epochs, meta or getattr(config, "meta", None))

    def updates_per_batch(self, epoch: int) -> int:
        return int(epoch >= self.meta_only_epochs)

    def update_batches(self, batch: dict, epoch: int) -> list[dict | None]:
        if self.config.share_gradients:  # before_step left the batch's gradient in .grad
            return [None]
        return super().update_batches(batch, epoch)

    def make_optimizer(self, model):
        """The meta-optimiser whose state the trainer keeps (and saves), or None for plain SGD."""
        return make_optimizer(model, self.config)

    def loss(self, model, batch, epoch, step=0):
        return exit_losses(model(**model_inputs(batch)), batch["labels"]).sum()

    def before_step(self, model, batch, epoch, step, world=None, diagnose=False, optimizer=None) -> dict:
        """One meta-update (Eq. 4) on tasks cut from the (global) ``batch``; under torch.distributed
        each process takes every world-size-th task and the meta-gradients are summed, which is
        the single-process update. ``optimizer``: the meta-optimiser (``meta.make_optimizer``) when
        it keeps state. Returns diagnostics."""
        if self.config.schedule == "warmstart" and epoch >= self.meta_only_epochs:
            return {}
        world = world or distributed.World()
        tasks = split_tasks(batch, self.config)
        mine = tasks[world.rank :: world.size]
        where = f"at step {step} (epoch {epoch + 1}) "
        joint = None
        if self.config.share_gradients:
            if world.size > 1:
                raise ValueError("--meta-share-gradients runs in one process only (under torchrun, leave it off)")
            grads, joint, info = shared_step(model, batch, self.config, where=where, measure=diagnose)
        elif mine:
            grads, info = meta_gradient(model, mine, self.config, where=where, measure=diagnose)
        else:  # more processes than tasks: take part in the sum with zeros
            grads, info = {n: torch.zeros_like(p) for n, p in parameters(model).items()}, {}
        grads = distributed.all_reduce_sum(grads, world)
        if diagnose and world.size == 1:
            info["cosine_to_query_gradient"] = cosine_to_query_gradient(model, tasks, self.config)
        apply(model, grads, self.config.meta_lr, optimizer)
        if joint is not None:  # the Adam step's gradient: the batch's, at θ before the meta-update
            for n, p in model.named_parameters():
                p.grad = joint.get(n)
        return info

