"""The GLUE metric of each task, and the metric of a task of one's own (accuracy for classes, Pearson for scores)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from core.precision import REGRESSION_AGREEMENT

MAIN_METRIC = {
    "SST-2": "accuracy",
    "RTE": "accuracy",
    "QNLI": "accuracy",
    "WNLI": "accuracy",
    "MRPC": "f1",
    "STS-B": "pearson",
    "CoLA": "matthews",
}


def main_metric(task: str, regression: bool) -> str:
    """The metric a task is compared on: GLUE's for a GLUE task.

    For another task Pearson (scores) or accuracy (classes).
    """
    return MAIN_METRIC.get(task, "pearson" if regression else "accuracy")


def glue_metrics(task: str, predictions: list, labels: list, regression: bool = False) -> dict[str, float]:
    """All of a task's metrics; ``predictions`` are class indices, or scores for STS-B and any ``regression`` task.

    A task outside GLUE also gets the macro-averaged F1, which unlike accuracy shows a model that ignores a rare class.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task == "STS-B" or regression:
        return {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearman": float(spearmanr(predictions, labels)[0]),
        }
    metrics = {"accuracy": float(accuracy_score(labels, predictions))}
    if task == "MRPC":
        metrics["f1"] = float(f1_score(labels, predictions))
    if task == "CoLA":
        metrics["matthews"] = float(matthews_corrcoef(labels, predictions))
    if task not in MAIN_METRIC:
        metrics["macro_f1"] = float(f1_score(labels, predictions, average="macro"))
    return metrics


def agreement(predictions: list, reference: list, regression: bool) -> float:
    """Share of inputs answered alike: the same class, or (regression) scores within ``REGRESSION_AGREEMENT``."""
    if regression:
        return float(np.mean(np.abs(np.asarray(predictions) - np.asarray(reference)) <= REGRESSION_AGREEMENT))
    return float(np.mean(np.asarray(predictions) == np.asarray(reference)))
