"""Plots render to PNG bytes and to markdown with the image inline."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed")

from hybrid_pipeline.ml.plots import (
    loss_curve_markdown,
    loss_curve_png,
    metrics_markdown,
    png_markdown,
    reliability_png,
    roc_curve_markdown,
    roc_curve_png,
)
from hybrid_pipeline.ml.training import EpochLoss

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CURVE = [EpochLoss(1, 0.7, 0.69, 0.1), EpochLoss(2, 0.5, 0.55, 0.1), EpochLoss(3, 0.4, 0.56, 0.1)]


def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    return y, np.clip(0.35 * y + rng.uniform(0, 0.65, 300), 0, 1)


def test_pngs_are_pngs() -> None:
    y, p = scores()
    assert loss_curve_png(CURVE, best_epoch=2).startswith(PNG_MAGIC)
    assert loss_curve_png([c.to_dict() for c in CURVE]).startswith(PNG_MAGIC)
    assert roc_curve_png(y, p).startswith(PNG_MAGIC)
    assert reliability_png(y, p).startswith(PNG_MAGIC)


def test_markdown_embeds_the_png_as_base64() -> None:
    y, p = scores()
    for md in (loss_curve_markdown(CURVE), roc_curve_markdown(y, p)):
        match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
        assert match, md[:80]
        assert base64.b64decode(match.group(1)).startswith(PNG_MAGIC)
    assert png_markdown(b"x", "a", caption="c").endswith("\n\nc")


def test_metrics_table() -> None:
    md = metrics_markdown({"b": 0.123456, "a": 3})
    assert md.splitlines() == ["| metric | value |", "| --- | --- |", "| a | 3 |", "| b | 0.1235 |"]
