"""Helpers for engine tests: compare pictures by their pixels (PNG bytes also hold metadata)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).copy()


def mean_abs_diff(a: bytes, b: bytes) -> float:
    return float(np.abs(pixels(a).astype(np.int16) - pixels(b).astype(np.int16)).mean())
