"""Tiled denoising for a large upscale pass (issue 20): MultiDiffusion over a UNet's latent.

An upscale ×2 of an SDXL image runs the UNet on a 256×256 latent: four times the positions of
its training size, with activations (and the first blocks' attention) to match. Here the UNet
runs on overlapping tiles of its own training size instead (``config.sample_size``: 128
latent = 1024 px for SDXL, 64 = 512 px for SD 1.5), a quarter tile of overlap, and the tiles'
predictions are blended with a feathered window into one prediction for the whole latent; the
scheduler then steps the whole latent once. That is MultiDiffusion (Bar-Tal et al. 2023,
"MultiDiffusion: Fusing Diffusion Paths for Controlled Image Generation"): its update is the
weighted least-squares fusion of the tiles' paths.

Written here rather than taken from diffusers: its MultiDiffusion lives in
``StableDiffusionPanoramaPipeline`` (now under ``diffusers/pipelines/deprecated/``), a whole
text-to-image pipeline for SD 1.5 only, whose ``get_views`` leaves the last rows and columns
uncovered when ``(size - window) % stride != 0``, averages views uniformly (seams at low
overlap) and steps the scheduler once per view. The facts carried over: views of the UNet's
sample size, the fusion a weighted mean per latent position. The differences, and why:

- the fusion is of the model's *prediction* (noise or v), before the scheduler, so one
  scheduler step (with one draw of noise for ancestral samplers) runs on the whole latent and
  the job's own sampler, LoRA patches and img2img pipeline stay as they are;
- tiles are spread evenly so that the last one ends at the edge (every position covered, all
  tiles the same size, so a compiled UNet sees one shape);
- the window ramps linearly over the overlap on the sides that have a neighbour, so no seam.

The upscale pass is where this belongs: image-to-image from an upscaled picture keeps the
composition in the input, so tiles need not agree on a global layout (text-to-image at 2048 px
in tiles would repeat the subject per tile). A pass at strength 1 (text-to-image at the larger
size, engine.picture_run) tiles too, for the same memory: nothing anchors its layout, so its
tiles compose as MultiDiffusion's panoramas do and it differs more from the whole pass (which,
at twice the training size, repeats subjects of its own). Only UNets (SD 1.5, SDXL: ``Architecture.tiled_upscale``) tile: a diffusion
transformer's (FLUX, Z-Image, Qwen-Image) attention is global over every latent token, so a
tile would see a different image than the whole and the result would change, not just its
memory; those second passes run whole.

Tiling is a memory choice, not part of the recipe: the image is near-identical to the untiled
one (tests/engine/test_tiled_denoise.py measures it), so nothing about it is written into the
recipe or the PNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Overlap between neighbouring tiles, as a fraction of the tile.
OVERLAP = 0.25
#: ``UNet2DConditionModel.forward`` arguments that carry per-position tensors (ControlNet,
#: T2I-Adapter residuals): a tile would need its own slice of each. Nothing in the engine sends
#: them today, so a call that has them runs whole instead of slicing them wrongly.
_SPATIAL_KWARGS = ("down_block_additional_residuals", "mid_block_additional_residual",
                   "down_intrablock_additional_residuals")  # fmt: skip

Span = tuple[int, int]


def spans(length: int, tile: int, overlap: int, align: int = 1) -> list[Span]:
    """``[start, end)`` of the fewest tiles of ``tile`` positions that cover ``length`` with at
    least about ``overlap`` in common between neighbours, spread evenly, the last one ending at
    ``length``; starts are multiples of ``align`` (the UNet's downsampling factor) but the last.

    One span when the tile covers the length. The count is ``ceil((length - tile) / (tile -
    overlap)) + 1``: linear in ``length / tile``, so a latent takes O(area / tile²) tiles.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"a tile of {tile} needs an overlap in [0, {tile}) (got {overlap})")
    if length <= tile:
        return [(0, length)]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    last = length - tile
    starts = [min(last, round(i * last / (count - 1) / align) * align) for i in range(count - 1)] + [last]
    return [(start, start + tile) for start in starts]


def ramp(span: Span, length: int, overlap: int) -> list[float]:
    """One axis of a tile's window: 1 inside, rising linearly from the side of a neighbouring
    tile over ``overlap`` positions (never 0, so every position has some weight); flat on a
    side at the latent's edge, where no other tile blends."""
    start, end = span
    size = end - start
    values = []
    for i in range(size):
        weight = 1.0
        if overlap > 0 and start > 0:
            weight = min(weight, (i + 1) / (overlap + 1))
        if overlap > 0 and end < length:
            weight = min(weight, (size - i) / (overlap + 1))
        values.append(weight)
    return values


def blend_weights(height: int, width: int, rows: list[Span], cols: list[Span], overlap: int) -> list[Any]:
    """Each tile's window, divided by their sum at each position: the weights of one position
    over the tiles that cover it sum to one. Row-major, as the tiles are run. float32 tensors of
    shape ``(1, 1, tile_h, tile_w)``."""
    import torch

    windows = []
    total = torch.zeros(height, width, dtype=torch.float32)
    for r in rows:
        for c in cols:
            window = torch.outer(torch.tensor(ramp(r, height, overlap)), torch.tensor(ramp(c, width, overlap)))
            total[r[0] : r[1], c[0] : c[1]] += window
            windows.append(window)
    tiles = [(r, c) for r in rows for c in cols]
    return [(w / total[r[0] : r[1], c[0] : c[1]])[None, None] for w, (r, c) in zip(windows, tiles, strict=True)]


class TiledDenoiser:
    """Stands in for a UNet's ``forward``: the original ``forward`` on each tile of ``sample``,
    the predictions blended. With one tile it *is* the original call (same arguments, same
    result object), so a latent that fits a tile is untouched, bit for bit."""

    def __init__(self, forward: Callable[..., Any], *, tile: int, overlap: int, align: int = 1) -> None:
        self.forward = forward
        self.tile = tile
        self.overlap = overlap
        self.align = align
        #: Calls that ran in more than one tile, and the tiles they ran (for tests, benchmarks).
        self.tiled_calls = 0
        self.tiles_run = 0
        self._weights: dict[tuple[int, int], list[Any]] = {}

    def __call__(self, sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        height, width = sample.shape[-2:]
        rows = spans(height, self.tile, self.overlap, self.align)
        cols = spans(width, self.tile, self.overlap, self.align)
        if (len(rows) == 1 and len(cols) == 1) or args or any(kwargs.get(k) is not None for k in _SPATIAL_KWARGS):
            return self.forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        weights = self._weights.get((height, width))
        if weights is None:
            weights = self._weights[(height, width)] = blend_weights(height, width, rows, cols, self.overlap)
        return_dict = kwargs.pop("return_dict", True)
        blended: Any = None
        result: Any = None
        tiles = [(r, c) for r in rows for c in cols]
        for ((r0, r1), (c0, c1)), weight in zip(tiles, weights, strict=True):
            # The conditioning goes to every tile unchanged: the prompt's hidden states, the
            # timestep and, for SDXL, added_cond_kwargs' text_embeds and time_ids. Those
            # time_ids say "crop (0, 0) of an image of the pass's full size", not the tile's
            # own crop ((r0 * 8, c0 * 8) of that size, what SDXL's crop conditioning would
            # literally mean): each tile is conditioned as the whole untiled pass is, which
            # keeps the image near-identical to it, and an SDXL crop offset tends to push
            # the content out of frame rather than say where a tile sits.
            piece = sample[..., r0:r1, c0:c1]
            result = self.forward(piece, timestep, encoder_hidden_states, return_dict=False, **kwargs)[0]
            if blended is None:
                blended = torch.zeros((*result.shape[:-2], height, width), dtype=torch.float32, device=result.device)
            blended[..., r0:r1, c0:c1] += result.float() * weight.to(result.device)
            self.tiles_run += 1
        self.tiled_calls += 1
        out = blended.to(result.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


def default_tile(unet: Any) -> int:
    """The UNet's training size in latent positions (``sample_size``): 128 for SDXL, 64 for
    SD 1.5; the size at which it composes as it learned to."""
    size = getattr(unet.config, "sample_size", 64)
    return int(size[0] if isinstance(size, list | tuple) else size)


def downsampling(unet: Any) -> int:
    """How many latent positions one position of the UNet's deepest block covers: tile starts
    on its grid keep each tile's convolutions aligned with the whole latent's."""
    return 2 ** max(0, len(getattr(unet.config, "block_out_channels", (0,))) - 1)


@contextmanager
def tiled_denoising(unet: Any, *, tile: int | None = None, overlap: int | None = None) -> Iterator[TiledDenoiser]:
    """``unet`` runs in tiles inside the block, and as it was after it, exception or not.

    The model cache shares one pipeline between jobs, so the plain ``forward`` must be back
    before the next job. Only the ``forward`` attribute of this instance changes (a compiled
    UNet's ``OptimizedModule`` keeps its own, which is put back as it was); a pipeline built
    with ``from_pipe`` during the block shares the module and so runs in tiles too, and hooks
    on the UNet (the cross-attention mask) run once per call, their arguments reaching each
    tile.
    """
    align = downsampling(getattr(unet, "_orig_mod", unet))
    size = tile if tile is not None else default_tile(getattr(unet, "_orig_mod", unet))
    size = max(align, size // align * align)
    lap = overlap if overlap is not None else max(align, round(size * OVERLAP / align) * align)
    own = vars(unet)
    had = "forward" in own
    saved = own.get("forward")
    tiled = TiledDenoiser(unet.forward, tile=size, overlap=min(lap, size - 1), align=align)
    unet.forward = tiled
    try:
        yield tiled
    finally:
        if had:
            unet.forward = saved
        else:
            del unet.forward


__all__ = ["OVERLAP", "TiledDenoiser", "blend_weights", "default_tile", "ramp", "spans",
           "tiled_denoising"]  # fmt: skip
