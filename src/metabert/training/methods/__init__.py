"""The training methods, by name: the one registry (``METHODS``) and the one factory (``get_method``).

Each entry says, in plain data, where the method's class lives and what a configuration must know
about it without importing it (whether it makes a static model of one depth, whether it learns from
a ``--teacher``, how many epochs it needs), so that ``TrainConfig`` checks a run's options without
importing torch. The class is imported on first use: ``METHODS[name]`` is the class.

| module | methods |
|---|---|
| ``core`` | joint, weighted (PABEE), last, two-stage (DeeBERT), alternating(-step) (BERxiT), distill (FastBERT) |
| ``meta`` | meta (MetaBERT, Algorithms 1 and 2), joint-matched (its matched-compute control) |
| ``peers`` | distilbert, pkd, theseus, layerdrop (static Table I systems), shallow-deep, gaml |

A new method: a ``base.Method`` subclass (with ``from_options`` where it takes options or a teacher)
and an entry here; the contract tests and the golden runs then cover it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MethodEntry:
    """Where a method lives and what its options must respect."""

    target: str  # "module:Class" inside metabert.training.methods
    summary: str  # one line, for help texts and the README
    static: bool = False  # trains one depth on its last exit alone: its other exits serve no exit rule
    needs_teacher: bool = False  # learns from a fine-tuned full-depth model (--teacher)
    min_epochs: int = 1  # staged methods need an epoch per stage


ENTRIES: dict[str, MethodEntry] = {
    "joint": MethodEntry("core:Joint", "the sum of every exit's cross-entropy (MetaBERT's Algorithm 2 loss)"),
    "weighted": MethodEntry("core:Weighted", "exit losses weighted by depth, Σ i·L_i / Σ i (PABEE)"),
    "last": MethodEntry("core:LastExit", "the last exit only: plain fine-tuning (with --num-layers k, BERT-kL)"),
    "two-stage": MethodEntry("core:TwoStage", "backbone and last exit first, then the other exits on the frozen "
                                              "backbone (DeeBERT)", min_epochs=2),
    "alternating": MethodEntry("core:Alternating", "joint and last-exit objectives alternating by epoch "
                                                   "(MetaBERT Fig. 1)"),
    "alternating-step": MethodEntry("core:AlternatingStep", "joint and last-exit objectives alternating by step "
                                                            "(BERxiT)"),
    "distill": MethodEntry("core:Distill", "as two-stage, the other exits learning the last exit's soft labels "
                                           "(FastBERT)", min_epochs=2),
    "meta": MethodEntry("meta:Meta", "MAML meta-updates (Algorithm 1) with the joint Adam steps (MetaBERT)"),
    "joint-matched": MethodEntry("meta:JointMatched", "joint with meta's optimizer updates and examples: "
                                                      "the matched-compute control"),
    "distilbert": MethodEntry("peers:DistilBert", "a half-depth student distilled from --teacher (DistilBERT)",
                              static=True, needs_teacher=True),
    "pkd": MethodEntry("peers:PatientKD", "a half-depth student with patient distillation from --teacher "
                                          "(BERT-PKD)", static=True, needs_teacher=True),
    "theseus": MethodEntry("peers:Theseus", "successor layers replace --teacher's modules at random "
                                            "(BERT-of-Theseus)", static=True, needs_teacher=True),
    "layerdrop": MethodEntry("peers:LayerDrop", "whole layers dropped in training, every other one pruned after "
                                                "(LayerDrop)", static=True),
    "shallow-deep": MethodEntry("peers:ShallowDeep", "exit losses weighted by a growing schedule, max-prob exits "
                                                     "(Shallow-Deep Networks)"),
    "gaml": MethodEntry("peers:Gaml", "mutual distillation between exits, its gradient aligned with the CE "
                                      "gradient (GAML-BERT)"),
}


def entry(name: str) -> MethodEntry:
    """The entry of method ``name``; an unknown name lists the valid ones."""
    try:
        return ENTRIES[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r}; choose one of: {', '.join(ENTRIES)}") from None


class _Methods(Mapping):
    """Method name -> class, each class imported when first asked for."""

    def __getitem__(self, name: str) -> type:
        module, cls = ENTRIES[name].target.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(ENTRIES)

    def __len__(self) -> int:
        return len(ENTRIES)

    def __repr__(self) -> str:
        return f"METHODS({', '.join(ENTRIES)})"


METHODS: Mapping[str, type] = _Methods()


def is_static_method(name: str) -> bool:
    """Whether method ``name`` makes a model of one depth trained on its last exit alone (``last``, and
    the static Table I systems: distilbert, pkd, theseus, layerdrop), whose other exits no rule may use."""
    return name == "last" or (name in ENTRIES and ENTRIES[name].static)


def check_options(name: str, epochs: int, meta=None, num_layers: int | None = None) -> None:
    """The run's options against method ``name``'s needs (without importing it): its epochs, the
    warm-start schedule of ``meta``, and ``--num-layers`` (a static system sets its own depth)."""
    found = entry(name)
    if epochs < found.min_epochs:
        raise ValueError(f"{name} training needs at least {found.min_epochs} epochs (one per stage), got {epochs}")
    if name == "meta" and meta is not None:
        from metabert.training.methods.options import check_warmstart

        check_warmstart(epochs, meta)
    if num_layers and found.static:
        raise ValueError(f"--method {name} sets its own depth (--student-layers, --layerdrop-prune); "
                         "leave --num-layers out")


def get_method(name: str, epochs: int = 1, meta_config=None, config=None, teacher=None, total_steps: int = 1):
    """Method ``name`` for a run of ``epochs`` (the one factory): ``meta_config`` for meta and
    joint-matched, ``config`` (a ``TrainConfig``: its sections), ``teacher`` and ``total_steps`` for the
    Table I systems (``base.Method.from_options``)."""
    entry(name)
    return METHODS[name].from_options(epochs, meta=meta_config, config=config, teacher=teacher,
                                      total_steps=total_steps)
