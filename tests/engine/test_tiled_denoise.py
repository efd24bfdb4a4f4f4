"""Tiled denoising of the upscale pass (issue 20, engine.tiled_denoise) on the tiny SD 1.5 and
SDXL builds: the window maths, the wrapper around a real UNet, and the engine's own path.

The tiny UNets see a few latent positions per tile where a real one sees 128 (SDXL): their
tiles are far more boundary than inside, so the tiled image's distance from the whole one
measured here is an upper bound of what a real model shows, not a typical figure.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image

from engine import arch
from engine.generate import DENOISE_TILING_PIXELS, Generator
from engine.png_metadata import read_png_metadata
from engine.protocol import EngineError, Recipe
from engine.tiled_denoise import TiledDenoiser, blend_weights, ramp, spans, tiled_denoising
from sandbox.model_builder import build_components

# -- the window maths ---------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "tile", "overlap", "align"),
                         [(256, 128, 32, 8), (100, 64, 16, 8), (16, 8, 2, 2), (97, 20, 5, 1), (64, 64, 16, 8),
                          (40, 64, 16, 8), (1000, 64, 16, 8)])  # fmt: skip
def test_spans_cover_every_position_in_equal_overlapping_tiles(length: int, tile: int, overlap: int, align: int) -> None:
    found = spans(length, tile, overlap, align)
    covered = np.zeros(length, dtype=int)
    for start, end in found:
        covered[start:end] += 1
    assert covered.min() >= 1 and found[0][0] == 0 and found[-1][1] == length
    assert len({end - start for start, end in found}) == 1  # one tile shape: a compiled UNet sees one
    assert all(start % align == 0 for start, _ in found[:-1])
    for (_, end), (start, _) in zip(found, found[1:], strict=False):
        assert end - start >= overlap - align  # neighbours share about the asked overlap
    # Bounded: the count is linear in length / tile (O(area / tile²) tiles for a latent).
    assert len(found) == (1 if length <= tile else -(-(length - tile) // (tile - overlap)) + 1)
    assert len(found) <= length / (tile - overlap) + 1


def test_spans_refuse_an_overlap_as_large_as_the_tile() -> None:
    with pytest.raises(ValueError, match="overlap"):
        spans(100, 16, 16)


def test_blend_weights_sum_to_one_everywhere_and_feather_the_seams() -> None:
    height, width, overlap = 80, 112, 8
    rows, cols = spans(height, 32, overlap, 8), spans(width, 32, overlap, 8)
    weights = blend_weights(height, width, rows, cols, overlap)
    assert len(weights) == len(rows) * len(cols)
    total = torch.zeros(height, width)
    for w, (r, c) in zip(weights, [(r, c) for r in rows for c in cols], strict=True):
        assert w.shape == (1, 1, r[1] - r[0], c[1] - c[0]) and float(w.min()) > 0
        total[r[0] : r[1], c[0] : c[1]] += w[0, 0]
    assert torch.allclose(total, torch.ones(height, width), atol=1e-6)
    # Feathered: a side with a neighbour ramps up step by step; a side at the edge is flat.
    inner = ramp(cols[1], width, overlap)
    assert inner[0] < inner[1] < inner[overlap] == 1.0 and inner[-1] < 1.0
    assert ramp(cols[0], width, overlap)[0] == 1.0


def test_a_position_wise_denoiser_is_unchanged_by_tiling() -> None:
    """Where a prediction depends on its own position only, the blend returns it exactly (up to
    float rounding): the weights are a partition of unity, nothing else changes."""

    def forward(sample: Any, timestep: Any, hidden: Any, return_dict: bool = True, **_: Any) -> Any:
        return (torch.tanh(sample * 1.7 + 0.3) * float(timestep) + hidden.mean(),)

    sample = torch.randn(2, 4, 40, 56)
    hidden = torch.randn(2, 7, 16)
    tiled = TiledDenoiser(forward, tile=16, overlap=4, align=2)
    out = tiled(sample, torch.tensor(3.0), hidden, return_dict=False)[0]
    assert tiled.tiled_calls == 1 and tiled.tiles_run == len(spans(40, 16, 4, 2)) * len(spans(56, 16, 4, 2))
    assert torch.allclose(out, forward(sample, torch.tensor(3.0), hidden)[0], atol=1e-5)


# -- a real UNet ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unets() -> dict[str, UNet2DConditionModel]:
    return {arch: build_components(arch, "tiny", 5)["unet"] for arch in ("sd15", "sdxl")}


def unet_inputs(unet: UNet2DConditionModel, side: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    generator = torch.Generator().manual_seed(side)
    sample = torch.randn(2, 4, side, side + 8, generator=generator)
    hidden = torch.randn(2, 7, unet.config.cross_attention_dim, generator=generator)
    kwargs: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        # SDXL: pooled text and the (original size, crop, target size) time ids, whole image's.
        size = [side * 8, (side + 8) * 8]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=generator),
                                       "time_ids": torch.tensor([size + [0, 0] + size] * 2, dtype=torch.float32)}  # fmt: skip
    return (sample, torch.tensor(401), hidden), kwargs


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_one_tile_is_the_plain_unet_bit_for_bit(unets: dict[str, UNet2DConditionModel], arch: str) -> None:
    unet = unets[arch]
    args, kwargs = unet_inputs(unet, 16)
    with torch.inference_mode():
        plain = unet(*args, **kwargs, return_dict=False)[0]
        with tiled_denoising(unet, tile=24) as tiled:
            once = unet(*args, **kwargs, return_dict=False)[0]
            as_output = unet(*args, **kwargs).sample
    assert tiled.tiled_calls == 0
    assert torch.equal(plain, once) and torch.equal(plain, as_output)
    assert "forward" not in vars(unet)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_several_tiles_give_a_finite_prediction_of_the_whole_shape(unets: dict[str, UNet2DConditionModel], arch: str) -> None:
    unet = unets[arch]
    args, kwargs = unet_inputs(unet, 32)
    with torch.inference_mode():
        plain = unet(*args, **kwargs, return_dict=False)[0]
        with tiled_denoising(unet, tile=16) as tiled:
            out = unet(*args, **kwargs).sample
    assert tiled.tiled_calls == 1 and tiled.tiles_run == 3 * 3  # 32 x 40 latent, tiles of 16, overlap 4
    assert out.shape == plain.shape and out.dtype == plain.dtype and bool(torch.isfinite(out).all())
    # Close to the whole prediction (measured: relative error 0.27 on these 16-position tiles).
    error = float((out - plain).norm() / plain.norm())
    assert 0 < error < 0.4


def test_the_unet_is_restored_after_an_exception(unets: dict[str, UNet2DConditionModel]) -> None:
    unet = unets["sd15"]
    with pytest.raises(RuntimeError, match="inside"), tiled_denoising(unet, tile=8):
        assert isinstance(unet.forward, TiledDenoiser)
        raise RuntimeError("inside")
    assert "forward" not in vars(unet) and unet.forward.__func__ is UNet2DConditionModel.forward  # type: ignore[attr-defined]


# -- the engine's upscale pass --------------------------------------------------------------------


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


@pytest.fixture
def tile_shapes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Every latent shape any UNet's plain forward ran on (a tiled call runs it per tile)."""
    seen: list[tuple[int, int]] = []
    plain = UNet2DConditionModel.forward

    def spy(self: UNet2DConditionModel, sample: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(tuple(sample.shape[-2:]))
        return plain(self, sample, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    yield seen


#: Upscale ×2 as the bot sends it (strength 0.4): first pass 128 px (a 16 x 16 latent, 8 steps),
#: upscale pass 256 px (32 x 32, 3 steps), tiled below in 2 x 2 tiles of 24 (overlap 6).
UPSCALE = Recipe(model="sd15-tiny.safetensors", prompt="a lighthouse", steps=8, width=128, height=128, seed=7,
                 cfg_scale=5.0, hires_scale=2.0, hires_strength=0.4, hires_upscaler="Lanczos")  # fmt: skip
TILE = 24


def test_the_default_threshold_tiles_a_2048_sdxl_upscale_and_not_a_1024_one(sdxl_generator: Generator) -> None:
    sdxl_generator.run(replace(UPSCALE, model="sdxl-tiny", hires_scale=0.0, steps=1))  # loaded, as a job leaves it
    entry = next(e for e in sdxl_generator.models.entries.values() if e.arch == "sdxl")
    for side, tiled in ((1024, False), (1536, False), (2048, True)):
        second = replace(UPSCALE, model="sdxl-tiny", width=side, height=side, hires_scale=0.0)
        with ExitStack() as stack:
            sdxl_generator._second_pass_settings(entry.pipe, arch.runtime_of("sdxl"), second, stack)
            assert isinstance(entry.pipe.unet.forward, TiledDenoiser) is tiled, side
            if tiled:  # SDXL's 256 x 256 latent in 3 x 3 tiles of its 128 x 128 training size
                assert (entry.pipe.unet.forward.tile, entry.pipe.unet.forward.overlap) == (128, 32)
        assert "forward" not in vars(entry.pipe.unet)


def unets_left_tiled(generator: Generator) -> list[str]:
    return [entry.file for entry in generator.models.entries.values() if "forward" in vars(entry.pipe.unet)]


@pytest.mark.parametrize(("model", "fixture", "bound"),
                         [("sd15-tiny.safetensors", "tiny_generator", 14.0), ("sdxl-tiny", "sdxl_generator", 30.0)])  # fmt: skip
def test_an_upscale_pass_over_the_threshold_runs_tiled_and_looks_the_same(
    request: pytest.FixtureRequest, tile_shapes: list[tuple[int, int]], model: str, fixture: str, bound: float
) -> None:
    generator: Generator = request.getfixturevalue(fixture)
    recipe = replace(UPSCALE, model=model)
    whole = generator.run(recipe).images[0]
    assert (TILE, TILE) not in tile_shapes and (32, 32) in tile_shapes  # the default threshold: whole
    tile_shapes.clear()
    try:
        generator.denoise_tiling_pixels, generator.denoise_tile = 200 * 200, TILE
        tiled = generator.run(recipe).images[0]
    finally:
        generator.denoise_tiling_pixels, generator.denoise_tile = DENOISE_TILING_PIXELS, None
    # The first pass runs whole; the second runs 2 x 2 tiles per call; the UNet is plain after.
    assert tile_shapes.count((16, 16)) == 8 and tile_shapes.count((TILE, TILE)) == 3 * 4
    assert (32, 32) not in tile_shapes
    assert not unets_left_tiled(generator)
    assert Image.open(io.BytesIO(tiled)).size == (256, 256)
    # A memory choice, not a recipe part: the PNG says the same as the whole pass's.
    assert read_png_metadata(tiled) == read_png_metadata(whole)
    # Near the whole pass's image (mean distance in 8-bit levels, measured: 10.3 for SD 1.5,
    # 21.9 for SDXL) and far nearer than strength 0.3 instead of 0.4 moves it (58.3, 68.9).
    # The tiny UNets' tiles are mostly border (24 positions, where a real SDXL's are 128) and
    # their GroupNorm statistics are per tile: a real model's distance is much smaller.
    distance = float(np.abs(decoded(tiled) - decoded(whole)).mean())
    other = generator.run(replace(recipe, hires_strength=0.3)).images[0]
    assert 0 < distance < bound < float(np.abs(decoded(other) - decoded(whole)).mean())
    assert generator.run(recipe).images[0] == whole  # nothing of the tiled pass stayed behind


def test_a_tiled_pass_that_fails_leaves_the_unet_plain(tiny_generator: Generator, tile_shapes: list[tuple[int, int]]) -> None:
    generator = tiny_generator
    try:
        generator.denoise_tiling_pixels, generator.denoise_tile = 200 * 200, TILE
        with pytest.raises(EngineError, match="cancelled"):
            generator.run(UPSCALE, should_cancel=lambda: (TILE, TILE) in tile_shapes)  # inside the tiled pass
    finally:
        generator.denoise_tiling_pixels, generator.denoise_tile = DENOISE_TILING_PIXELS, None
    assert tile_shapes.count((TILE, TILE)) == 4  # one tiled step ran, then the job stopped
    assert not unets_left_tiled(generator)
    tile_shapes.clear()
    generator.run(UPSCALE)
    assert (32, 32) in tile_shapes and (TILE, TILE) not in tile_shapes
