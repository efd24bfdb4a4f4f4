"""What a picture shows, as numbers: the measures the demo's tests and training report use.

Each takes an (H, W, 3) uint8 RGB array (a decoded PNG) and answers one question a person
would answer by eye: how bright is the sky, how much of the picture's edges lie on an 8-pixel
grid (pixel art), how far its colours are from the sepia tones, how much of it is Captain
Nova's purple suit. Numpy only.
"""

from __future__ import annotations

import numpy as np

from sandbox.train_demo.scenes import NOVA_SUIT, PIXEL_CELL, SEPIA_MATRIX


def _luma(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def sky_luma(image: np.ndarray) -> float:
    """Mean luminance (0-255) of the top quarter, where every scene has sky."""
    return float(_luma(image[: image.shape[0] // 4]).mean())


def blockiness(image: np.ndarray, cell: int = PIXEL_CELL) -> float:
    """The share of the picture's colour changes that fall on the ``cell``-pixel grid.

    A picture made of hard ``cell`` x ``cell`` blocks changes colour only between cells (1.0);
    an ordinary picture changes anywhere, so about 1/``cell`` of its changes land on the grid.
    """
    rgb = image.astype(np.float32)
    across = np.abs(np.diff(rgb, axis=1)).sum(-1)  # between column x and x+1
    down = np.abs(np.diff(rgb, axis=0)).sum(-1)
    on_grid_x = (np.arange(across.shape[1]) % cell) == cell - 1
    on_grid_y = (np.arange(down.shape[0]) % cell) == cell - 1
    total = across.sum() + down.sum()
    if total == 0:
        return 0.0
    return float((across[:, on_grid_x].sum() + down[on_grid_y].sum()) / total)


def _sepia_ramp() -> np.ndarray:
    grey = np.linspace(0, 255, 128, dtype=np.float32)[:, None].repeat(3, 1)
    return np.clip(grey @ SEPIA_MATRIX.T, 0, 255)


_RAMP = _sepia_ramp()


def sepia_distance(image: np.ndarray) -> float:
    """Mean distance (0-255 scale) from each pixel to the nearest colour of the sepia ramp.

    A sepia picture sits on the ramp (near 0); a blue sky or green field is far from it.
    """
    pixels = image.reshape(-1, 3).astype(np.float32)[::7]  # every 7th pixel: plenty, and fast
    d = ((pixels[:, None, :] - _RAMP[None]) ** 2).sum(-1).min(1)
    return float(np.sqrt(d).mean())


def suit_share(image: np.ndarray, tolerance: float = 70.0) -> float:
    """The share of pixels close to Captain Nova's suit purple (also in shade: hue-relative)."""
    rgb = image.reshape(-1, 3).astype(np.float32)
    suit = np.array(NOVA_SUIT, np.float32)
    # Compare colours scaled to the same brightness, so a suit in dusk light still counts.
    norm = rgb.sum(1, keepdims=True).clip(min=1.0)
    chroma = rgb / norm
    target = suit / suit.sum()
    close = np.sqrt(((chroma - target) ** 2).sum(1)) * 255 < tolerance * 0.35
    bright_enough = norm[:, 0] > 90
    return float((close & bright_enough).mean())
