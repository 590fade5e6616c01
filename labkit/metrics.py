"""What a clinician reads off a binary classifier: sensitivity, specificity, predictive values, ROC AUC, calibration.

**Label 1 is the positive class** (the condition is present) in every function here. Datasets differ: in
scikit-learn's breast-cancer data target 0 is *malignant* and 1 benign, so turn its targets into "is malignant"
first with ``positive_labels(y, positive=0)``. Scores and probabilities are those of the positive class, and a case
is called positive when its score is at or above the threshold.

>>> y = positive_labels(np.array([0, 1, 1, 0]), positive=0)   # breast_cancer targets -> 1 = malignant
>>> y
array([1, 0, 0, 1])
>>> p = np.array([0.9, 0.2, 0.6, 0.4])                        # predicted probability of malignant
>>> sensitivity(y, p >= 0.5), specificity(y, p >= 0.5)
(0.5, 0.5)
>>> roc_auc(y, p)
0.75
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "Counts", "Reliability", "binary_summary", "confusion_counts", "expected_calibration_error",
    "negative_predictive_value", "positive_labels", "positive_predictive_value", "predictive_values",
    "reliability_curve", "roc_auc", "roc_curve", "sensitivity", "specificity", "threshold_for_sensitivity",
]


# ---- checks -----------------------------------------------------------------------------------------------------


def _labels(y: Any, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels; got shape {y.shape}")
    if len(y) == 0:
        raise ValueError(f"{name} is empty; expected at least one label")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
        found = np.unique(y)[:5] if np.issubdtype(y.dtype, np.number) else y.dtype
        raise ValueError(f"{name} must hold only 0 (negative) and 1 (positive); found {found}. Map a dataset's "
                         "classes first, e.g. positive_labels(y, positive=0)")
    return y.astype(np.int64)


def _scores(y_true: Any, y_score: Any, name: str, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    y_true = _labels(y_true)
    y_score = np.asarray(y_score)
    if y_score.ndim != 1 or not np.issubdtype(y_score.dtype, np.number) or y_score.dtype == bool:
        raise ValueError(f"{name} must be a 1-D array of numbers; got {y_score.dtype} of shape {y_score.shape}")
    if len(y_score) != len(y_true):
        raise ValueError(f"y_true and {name} must have the same length; got {len(y_true)} and {len(y_score)}")
    y_score = y_score.astype(np.float64)
    if not np.isfinite(y_score).all():
        raise ValueError(f"{name} must be finite; it has NaN or infinite values")
    if probabilities and ((y_score < 0).any() or (y_score > 1).any()):
        raise ValueError(f"{name} must be probabilities in [0, 1]; got values from {y_score.min()} to {y_score.max()}")
    return y_true, y_score


def _both_classes(y_true: np.ndarray, what: str) -> None:
    if y_true.min() == y_true.max():
        raise ValueError(f"{what} needs both classes in y_true; it holds only {int(y_true[0])}s")


def positive_labels(y: Any, *, positive: Any) -> np.ndarray:
    """1 where ``y`` equals the ``positive`` class (the condition present), else 0.

    >>> positive_labels(np.array(["benign", "malignant"]), positive="malignant")
    array([0, 1])
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y must be a non-empty 1-D array; got shape {y.shape}")
    if not (y == positive).any():
        raise ValueError(f"positive={positive!r} does not occur in y (values {np.unique(y)[:5]})")
    return (y == positive).astype(np.int64)


# ---- at one threshold -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Counts:
    """The confusion matrix of a binary decision: true/false positives and negatives."""

    tp: int  # positive, called positive
    fp: int  # negative, called positive (a false alarm)
    tn: int  # negative, called negative
    fn: int  # positive, called negative (a missed case)


def confusion_counts(y_true: Any, y_pred: Any) -> Counts:
    """The four counts of decisions ``y_pred`` (0/1 or bool) against ``y_true``.

    >>> confusion_counts([1, 1, 0, 0, 0], [1, 0, 1, 0, 0])
    Counts(tp=1, fp=1, tn=2, fn=1)
    """
    y_true, y_pred = _labels(y_true), _labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same length; got {len(y_true)} and {len(y_pred)}")
    return Counts(tp=int(np.sum((y_true == 1) & (y_pred == 1))), fp=int(np.sum((y_true == 0) & (y_pred == 1))),
                  tn=int(np.sum((y_true == 0) & (y_pred == 0))), fn=int(np.sum((y_true == 1) & (y_pred == 0))))


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def sensitivity(y_true: Any, y_pred: Any) -> float:
    """TP / (TP + FN): the fraction of positive cases that are caught (recall of class 1); nan if there are none."""
    c = confusion_counts(y_true, y_pred)
    return _ratio(c.tp, c.tp + c.fn)


def specificity(y_true: Any, y_pred: Any) -> float:
    """TN / (TN + FP): the fraction of negative cases correctly cleared (recall of class 0); nan if there are none."""
    c = confusion_counts(y_true, y_pred)
    return _ratio(c.tn, c.tn + c.fp)


def positive_predictive_value(y_true: Any, y_pred: Any) -> float:
    """TP / (TP + FP): of the cases called positive, the fraction that are (precision); nan if none was called."""
    c = confusion_counts(y_true, y_pred)
    return _ratio(c.tp, c.tp + c.fp)


def negative_predictive_value(y_true: Any, y_pred: Any) -> float:
    """TN / (TN + FN): of the cases called negative, the fraction that are; nan if none was called negative."""
    c = confusion_counts(y_true, y_pred)
    return _ratio(c.tn, c.tn + c.fn)


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """(PPV, NPV) by Bayes' rule for a test of this sensitivity and specificity where ``prevalence`` have the condition.

    The same test has different predictive values in a screening population and in a specialist clinic.

    >>> [round(v, 3) for v in predictive_values(0.95, 0.90, 0.01)]   # a good test, a rare condition
    [0.088, 0.999]
    """
    for name, value in (("sensitivity", sensitivity), ("specificity", specificity), ("prevalence", prevalence)):
        if not isinstance(value, (int, float, np.floating)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
    true_pos, false_pos = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    true_neg, false_neg = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return _ratio(true_pos, true_pos + false_pos), _ratio(true_neg, true_neg + false_neg)


def binary_summary(y_true: Any, y_prob: Any, *, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV and NPV when cases with ``y_prob >= threshold`` are called positive."""
    y_true, y_prob = _scores(y_true, y_prob, "y_prob", probabilities=True)
    y_pred = (y_prob >= threshold).astype(np.int64)
    return {"accuracy": float(np.mean(y_pred == y_true)), "sensitivity": sensitivity(y_true, y_pred),
            "specificity": specificity(y_true, y_pred), "ppv": positive_predictive_value(y_true, y_pred),
            "npv": negative_predictive_value(y_true, y_pred)}


# ---- over all thresholds ----------------------------------------------------------------------------------------


def roc_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds) as the threshold falls through every distinct score.

    The first point is (0, 0) at threshold +inf (nothing called positive), the last (1, 1).

    >>> fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    y_true, y_score = _scores(y_true, y_score, "y_score", probabilities=False)
    _both_classes(y_true, "roc_curve")
    order = np.argsort(-y_score, kind="stable")
    score, truth = y_score[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # the last index of each run of equal scores
    tp, fp = np.cumsum(truth)[last], np.cumsum(1 - truth)[last]
    fpr, tpr = np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]
    return fpr, tpr, np.r_[np.inf, score[last]]


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve: the probability that a random positive case scores above a random negative one
    (ties count one half), computed from ranks (the Mann-Whitney U statistic)."""
    y_true, y_score = _scores(y_true, y_score, "y_score", probabilities=False)
    _both_classes(y_true, "roc_auc")
    order = np.argsort(y_score, kind="stable")
    ranks = np.empty(len(y_score))
    ranks[order] = np.arange(1, len(y_score) + 1)
    values, inverse = np.unique(y_score, return_inverse=True)
    ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]  # tied scores share their mean rank
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_for_sensitivity(y_true: Any, y_score: Any, target: float) -> float:
    """The highest threshold t at which calling ``y_score >= t`` positive catches at least ``target`` of the positives.

    Choose it on a validation set, then report the sensitivity it actually gets on the test set.

    >>> threshold_for_sensitivity([1, 1, 1, 1, 0], [0.9, 0.8, 0.3, 0.7, 0.5], target=0.75)
    0.7
    """
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target <= 1:
        raise ValueError(f"target must be a sensitivity in (0, 1]; got {target!r}")
    y_true, y_score = _scores(y_true, y_score, "y_score", probabilities=False)
    positives = np.sort(y_score[y_true == 1])[::-1]  # highest first
    if len(positives) == 0:
        raise ValueError("threshold_for_sensitivity needs at least one positive case (a 1) in y_true")
    needed = int(np.ceil(target * len(positives) - 1e-9))  # positives that must score at or above t
    return float(positives[max(needed, 1) - 1])


# ---- calibration ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data: per equal-width bin of predicted probability, its edges, count, mean prediction and
    observed frequency of positives (nan for an empty bin)."""

    edges: np.ndarray  # (num_bins + 1,) from 0 to 1
    counts: np.ndarray  # (num_bins,) cases in each bin
    mean_predicted: np.ndarray  # (num_bins,) average predicted probability in the bin
    observed: np.ndarray  # (num_bins,) fraction of positive cases in the bin


def reliability_curve(y_true: Any, y_prob: Any, *, num_bins: int = 10) -> Reliability:
    """Bin the predicted probabilities of the positive class into ``num_bins`` equal-width bins over [0, 1].

    Bins are (a, b], the first also holds 0, as in ``sklearn.calibration.calibration_curve(strategy="uniform")``,
    which returns the non-empty bins' ``observed`` and ``mean_predicted``.
    """
    if type(num_bins) is not int or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int; got {num_bins!r}")
    y_true, y_prob = _scores(y_true, y_prob, "y_prob", probabilities=True)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.searchsorted(edges[1:-1], y_prob)  # (n,) bin of each case
    counts = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: 0 / 0 = nan on purpose
        mean_predicted = np.bincount(bins, weights=y_prob, minlength=num_bins) / counts
        observed = np.bincount(bins, weights=y_true, minlength=num_bins) / counts
    return Reliability(edges=edges, counts=counts, mean_predicted=mean_predicted, observed=observed)


def expected_calibration_error(y_true: Any, y_prob: Any, *, num_bins: int = 10) -> float:
    """ECE = sum over bins of (cases in bin / n) * |observed frequency - mean predicted probability|.

    It measures the predicted probability of the positive class against how often the positive class occurs (the
    diagram of ``reliability_curve``); Guo et al. (2017) bin the top-class confidence instead, which for two classes
    folds probabilities p and 1 - p together.

    >>> expected_calibration_error([0, 1, 1, 1], [0.25, 0.25, 0.75, 0.75], num_bins=2)
    0.25
    """
    curve = reliability_curve(y_true, y_prob, num_bins=num_bins)
    filled = curve.counts > 0
    gaps = np.abs(curve.observed[filled] - curve.mean_predicted[filled])
    return float(np.sum(curve.counts[filled] * gaps) / curve.counts.sum())
