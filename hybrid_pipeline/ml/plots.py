"""Training plots as PNG bytes and as markdown with the image inline (for ``MetadataValue.md``).

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot,
no global figure registry, no display, safe in threads and run workers.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hybrid_pipeline.ml.metrics import roc_auc, roc_curve


def _figure(width: float = 5.0, height: float = 3.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _epochs_and_series(loss_curve: Sequence[Any]) -> tuple[list[float], dict[str, list[float]]]:
    rows = [e.to_dict() if hasattr(e, "to_dict") else dict(e) for e in loss_curve]
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    series: dict[str, list[float]] = {}
    for key in ("train_loss", "valid_loss"):
        if rows and all(key in r for r in rows):
            series[key] = [float(r[key]) for r in rows]
    return epochs, series


def loss_curve_png(loss_curve: Sequence[Any], title: str = "Loss per epoch",
                   best_epoch: int | None = None) -> bytes:
    """Train and validation loss per epoch (``EpochLoss`` objects or dicts with those keys)."""
    epochs, series = _epochs_and_series(loss_curve)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    labels = {"train_loss": "train", "valid_loss": "validation"}
    for key, values in series.items():
        ax.plot(epochs, values, marker="o", label=labels[key])
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return _png(fig)


def roc_curve_png(y_true: Any, y_score: Any, title: str = "ROC curve") -> bytes:
    """ROC curve with the AUC in the legend and the chance diagonal."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    auc = roc_auc(y_true, y_score)
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def reliability_png(y_true: Any, y_prob: Any, n_bins: int = 10, title: str = "Calibration") -> bytes:
    """Observed positive rate vs mean predicted probability per equal-width bin."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    filled = counts > 0
    mean_p = np.bincount(idx, weights=p, minlength=n_bins)[filled] / counts[filled]
    mean_y = np.bincount(idx, weights=y, minlength=n_bins)[filled] / counts[filled]
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    ax.plot(mean_p, mean_y, marker="o")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _png(fig)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_markdown(png: bytes, alt: str = "plot", caption: str | None = None) -> str:
    """Markdown with the PNG inline (``![alt](data:image/png;base64,...)``) for ``MetadataValue.md``."""
    text = f"![{alt}]({png_data_uri(png)})"
    return f"{text}\n\n{caption}" if caption else text


def loss_curve_markdown(loss_curve: Sequence[Any], title: str = "Loss per epoch",
                        best_epoch: int | None = None) -> str:
    return png_markdown(loss_curve_png(loss_curve, title, best_epoch), alt=title)


def roc_curve_markdown(y_true: Any, y_score: Any, title: str = "ROC curve") -> str:
    return png_markdown(roc_curve_png(y_true, y_score, title), alt=title)


def metrics_markdown(metrics: Mapping[str, float], digits: int = 4) -> str:
    """A two-column markdown table of metrics (sorted by name)."""
    lines = ["| metric | value |", "| --- | --- |"]
    for k in sorted(metrics):
        v = metrics[k]
        lines.append(f"| {k} | {v:.{digits}g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


__all__ = [
    "loss_curve_markdown",
    "loss_curve_png",
    "metrics_markdown",
    "png_data_uri",
    "png_markdown",
    "reliability_png",
    "roc_curve_markdown",
    "roc_curve_png",
]
