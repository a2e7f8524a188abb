"""Training methods: which exit losses the optimiser follows, and which parameters train when.

A method is looked up by name in ``METHODS`` (``--method``). It gives the loss of a batch and, where
it trains parts of the model in turn, which parameters are trainable in an epoch (``trainable``);
the trainer freezes the others for that epoch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from metabert.data.batching import model_inputs
from metabert.training.methods.base import Method, TrainingMethod
from metabert.model.multi_exit import exit_losses

__all__ = ["METHODS", "Method", "TrainingMethod", "get_method", "is_static_method"]


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
        if epochs < 2:
            raise ValueError(f"{self.name} training needs at least 2 epochs (one per stage), got {epochs}")
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


class JointMatched(Joint):
    """Control for ``meta`` (issue #3): the joint loss given the same optimizer updates and the same
    examples as ``meta`` with the same meta options. Wherever ``meta`` makes a meta-update on the
    tasks cut from a batch, this takes an extra Adam step on those same rows (support and query
    batches together; with ``share_gradients``, the query batches only, the rows that ``meta`` passes
    over a second time); wherever ``meta`` takes its Adam step on the batch, so does this. A MetaBERT
    gain counts only where it beats this, not plain ``joint``, which sees each batch once."""

    name = "joint-matched"

    def __init__(self, epochs: int = 1, config=None):
        from metabert.training.methods.meta import MetaConfig

        super().__init__(epochs)
        self.config = config or MetaConfig()
        self.meta_epochs = self.config.warmstart_epochs if self.config.schedule == "warmstart" else epochs

    def _steps(self, epoch: int) -> tuple[bool, bool]:
        """(a step where meta makes its meta-update, a step where meta takes its Adam step)."""
        return epoch < self.meta_epochs, self.config.schedule == "interleaved" or epoch >= self.meta_epochs

    def updates_per_batch(self, epoch: int) -> int:
        return sum(self._steps(epoch))

    def update_batches(self, batch: dict, epoch: int) -> list[dict]:
        """The batches this epoch's optimizer steps take, in order."""
        from metabert.training.methods.meta import split_tasks

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
    share their passes at θ (``meta.shared_step``)."""

    name = "meta"

    def __init__(self, epochs: int = 1, config=None):
        from metabert.training.methods.meta import MetaConfig

        super().__init__(epochs)
        self.config = config or MetaConfig()
        if self.config.schedule == "warmstart" and epochs <= self.config.warmstart_epochs:
            raise ValueError(f"warmstart needs more epochs ({epochs}) than meta-learning epochs "
                             f"({self.config.warmstart_epochs})")
        self.meta_only_epochs = self.config.warmstart_epochs if self.config.schedule == "warmstart" else 0
        self.first_selectable_epoch = self.meta_only_epochs

    def updates_per_batch(self, epoch: int) -> int:
        return int(epoch >= self.meta_only_epochs)

    def update_batches(self, batch: dict, epoch: int) -> list[dict | None]:
        if self.config.share_gradients:  # before_step left the batch's gradient in .grad
            return [None]
        return super().update_batches(batch, epoch)

    def make_optimizer(self, model):
        """The meta-optimiser whose state the trainer keeps (and saves), or None for plain SGD."""
        from metabert.training.methods import meta as meta

        return meta.make_optimizer(model, self.config)

    def loss(self, model, batch, epoch, step=0):
        return exit_losses(_logits(model, batch), batch["labels"]).sum()

    def before_step(self, model, batch, epoch, step, world=None, diagnose=False, optimizer=None) -> dict:
        """One meta-update (Eq. 4) on tasks cut from the (global) ``batch``; under torch.distributed
        each process takes every world-size-th task and the meta-gradients are summed, which is
        the single-process update. ``optimizer``: the meta-optimiser (``meta.make_optimizer``) when
        it keeps state. Returns diagnostics."""
        from metabert.training import distributed as distributed
        from metabert.training.methods import meta as meta

        if self.config.schedule == "warmstart" and epoch >= self.meta_only_epochs:
            return {}
        world = world or distributed.World()
        tasks = meta.split_tasks(batch, self.config)
        mine = tasks[world.rank :: world.size]
        where = f"at step {step} (epoch {epoch + 1}) "
        joint = None
        if self.config.share_gradients:
            if world.size > 1:
                raise ValueError("--meta-share-gradients runs in one process only (under torchrun, leave it off)")
            grads, joint, info = meta.shared_step(model, batch, self.config, where=where, measure=diagnose)
        elif mine:
            grads, info = meta.meta_gradient(model, mine, self.config, where=where, measure=diagnose)
        else:  # more processes than tasks: take part in the sum with zeros
            grads, info = {n: torch.zeros_like(p) for n, p in meta.parameters(model).items()}, {}
        grads = distributed.all_reduce_sum(grads, world)
        if diagnose and world.size == 1:
            info["cosine_to_query_gradient"] = meta.cosine_to_query_gradient(model, tasks, self.config)
        meta.apply(model, grads, self.config.meta_lr, optimizer)
        if joint is not None:  # the Adam step's gradient: the batch's, at θ before the meta-update
            for n, p in model.named_parameters():
                p.grad = joint.get(n)
        return info


METHODS: dict[str, type] = {m.name: m for m in (Joint, Weighted, LastExit, TwoStage, Alternating, AlternatingStep,
                                                 Distill, Meta, JointMatched)}

from metabert.training.methods import peers as peer_methods# noqa: E402  (MetaBERT's Table I systems; they subclass methods_base.Method)

METHODS.update({m.name: m for m in peer_methods.PEER_METHODS})


def is_static_method(name: str) -> bool:
    """Whether method ``name`` makes a model of one depth trained on its last exit alone (``last``, and
    the static Table I systems: distilbert, pkd, theseus, layerdrop), whose other exits no rule may use."""
    return name == "last" or bool(getattr(METHODS.get(name), "static", False))


def get_method(name: str, epochs: int = 1, meta_config=None, config=None, teacher=None,
               total_steps: int = 1) -> TrainingMethod:
    """Method ``name`` for a run of ``epochs``; ``meta_config`` for meta and joint-matched, ``config``
    (a ``TrainConfig``: its sections), ``teacher`` and ``total_steps`` for the Table I systems."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r}; choose one of: {', '.join(METHODS)}") from None
    if cls in peer_methods.PEER_METHODS:
        return peer_methods.make(name, epochs, config, teacher, total_steps)
    return cls(epochs, meta_config) if name in ("meta", "joint-matched") else cls(epochs)
