"""GLUE metrics (scikit-learn implementations), reported in points (0-100)."""

from __future__ import annotations

from typing import Sequence

from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRICS = ("accuracy", "acc_and_f1", "mcc")


def compute(metric: str, predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """All figures of ``metric`` plus ``score``, the one figure a task is ranked by.

    accuracy: SST-2, RTE, QNLI, MNLI. acc_and_f1: MRPC and QQP, score = mean of accuracy and F1
    (the MetaBERT paper's figure). mcc: CoLA, Matthews correlation.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    acc = 100.0 * accuracy_score(labels, predictions)
    if metric == "accuracy":
        return {"score": acc, "accuracy": acc}
    if metric == "acc_and_f1":
        f1 = 100.0 * f1_score(labels, predictions, zero_division=0.0)
        return {"score": (acc + f1) / 2, "accuracy": acc, "f1": f1}
    if metric == "mcc":
        mcc = 100.0 * matthews_corrcoef(labels, predictions)
        return {"score": mcc, "mcc": mcc, "accuracy": acc}
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
