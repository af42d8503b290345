"""The GLUE metric of each task."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

MAIN_METRIC = {"SST-2": "accuracy", "RTE": "accuracy", "QNLI": "accuracy", "WNLI": "accuracy", "MRPC": "f1", "STS-B": "pearson", "CoLA": "matthews"}


def glue_metrics(task: str, predictions: list, labels: list) -> dict[str, float]:
    """All of a task's GLUE metrics; ``predictions`` are class indices, or scores for STS-B."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task == "STS-B":
        return {"pearson": float(pearsonr(predictions, labels)[0]), "spearman": float(spearmanr(predictions, labels)[0])}
    metrics = {"accuracy": float(accuracy_score(labels, predictions))}
    if task == "MRPC":
        metrics["f1"] = float(f1_score(labels, predictions))
    if task == "CoLA":
        metrics["matthews"] = float(matthews_corrcoef(labels, predictions))
    return metrics
