"""Fitting generated PNGs into Discord's upload limits without losing their recipe."""

from __future__ import annotations

import io
from collections.abc import Sequence

#: A whole multipart request may not exceed this.
REQUEST_LIMIT = 25 * 1024 * 1024


def _shrink_png(data: bytes, limit: int) -> bytes | None:
    """Make a PNG fit ``limit`` bytes, keeping its ``parameters`` text; None if impossible.

    First a lossless re-compression, then halving the size until it fits (at most 4 times).
    """
    from PIL import Image, PngImagePlugin  # imported lazily: only oversize images need it

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        info = PngImagePlugin.PngInfo()
        for key, value in (image.text if hasattr(image, "text") else {}).items():
            info.add_text(key, value)
        current = image
        for _ in range(5):
            out = io.BytesIO()
            current.save(out, format="PNG", optimize=True, pnginfo=info)
            if out.tell() <= limit:
                return out.getvalue()
            width, height = current.size
            if width < 64 or height < 64:
                return None
            current = current.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    return None


def fit_files(images: Sequence[bytes], file_limit: int) -> tuple[list[bytes], list[str]]:
    """Images that respect the per-file and per-request limits, and notes about any change."""
    per_file = min(file_limit, REQUEST_LIMIT // max(1, len(images)))
    fitted: list[bytes] = []
    notes: list[str] = []
    for index, data in enumerate(images, 1):
        if len(data) <= per_file:
            fitted.append(data)
            continue
        smaller = _shrink_png(data, per_file)
        if smaller is None:
            notes.append(
                f"image {index} is {len(data) / 2**20:.1f} MiB, over this server's "
                f"{per_file / 2**20:.1f} MiB upload limit even when scaled down; it was not posted"
            )
        else:
            fitted.append(smaller)
            notes.append(f"image {index} was scaled down to fit the {per_file / 2**20:.0f} MiB upload limit")
    return fitted, notes
