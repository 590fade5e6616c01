"""Plots the labs share: training curves, a confusion matrix, and a grid of images (inputs or learned weights)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from labkit.train import History


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_history(
    history: History, *, metric: str = "loss", smooth: int = 20, log_y: bool = False, ax: Axes | None = None
) -> Axes:
    """The training loss per step (moving average over ``smooth`` steps) and, if recorded, ``metric`` on eval data."""
    if not isinstance(history, History):
        raise TypeError(f"history must be a labkit.train.History; got {type(history).__name__}")
    if not history.step:
        raise ValueError("history is empty: fit recorded no steps")
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    if metric == "loss":
        smoothed = _smooth(history.loss, smooth)
        ax.plot(history.step[len(history.step) - len(smoothed) :], smoothed, label="train loss (batch, smoothed)")
    if metric in history.eval and history.eval[metric]:
        ax.plot(history.eval_step, history.eval[metric], "o-", label=f"eval {metric}")
    elif metric != "loss":
        raise ValueError(f"metric {metric!r} was not recorded; history has {sorted(history.eval) or 'no eval'}")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if log_y:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, *, labels: Sequence[str] | None = None, ax: Axes | None = None
) -> Axes:
    """A confusion matrix: row = true class, column = predicted class, each cell's count written in it."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"y_true and y_pred must be equal-length 1-D arrays; got {y_true.shape} and {y_pred.shape}")
    n = int(max(y_true.max(), y_pred.max())) + 1 if labels is None else len(labels)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    ax = ax or plt.subplots(figsize=(4.5, 4.5))[1]
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    names = list(labels) if labels is not None else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return ax


def show_images(
    images: np.ndarray, *, ncols: int = 8, titles: Sequence[str] | None = None, cmap: str = "gray"
) -> Figure:
    """A grid of 2-D images of shape (n, height, width); each image gets its own colour scale."""
    images = np.asarray(images)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"images must have shape (n, height, width) with n >= 1; got {images.shape}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles must have one entry per image ({len(images)}); got {len(titles)}")
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.3 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap=cmap)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig
