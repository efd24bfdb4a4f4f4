"""Image-to-image and the upscale pass on the tiny models (issue 20): SD 1.5, SDXL, FLUX.1.

Strength 0 gives the input back up to the VAE's round trip; strength 1 keeps nothing of the
input but its size; in between the output depends on the input and fewer steps run. The
upscale pass doubles the size. Each PNG's recipe names its input by sha256.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import arch
from engine.arch.flux.pipeline import COMPONENTS_FOLDER
from engine.generate import Generator
from engine.png_metadata import read_png_metadata
from engine.protocol import EngineError, Recipe
from engine.recipe.readers import read_image
from sandbox.flux_builder import build_flux


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """A smooth input (the tiny VAE reproduces low frequencies, not noise)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def diff(a: bytes, b: bytes) -> float:
    return float(np.abs(decoded(a) - decoded(b)).mean())


def with_input(generator: Generator, recipe: Recipe, data: bytes, **changes: object) -> Recipe:
    digest = generator.inputs.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    return replace(recipe, init_image=digest, init_image_source="https://discord.com/channels/1/2/3", **changes)  # type: ignore[arg-type]


SD = Recipe(model="sd15-tiny.safetensors", prompt="a lighthouse", steps=4, width=64, height=64, seed=7, cfg_scale=5.0)


def round_trip_error(generator: Generator, recipe: Recipe, data: bytes) -> float:
    """How far strength 0's output is from the input; must be the VAE's error alone."""
    out = generator.run(with_input(generator, recipe, data, strength=0.0)).images[0]
    return diff(out, data)


def test_the_architectures_that_declare_img2img_run_it() -> None:
    declared = [name for name in arch.runnable() if "img2img" in arch.ARCHITECTURES[name].capabilities]
    assert {"sd15", "sdxl", "flux", "zimage"} <= set(declared)
    for name in declared:
        assert hasattr(arch.runtime_of(name), "img2img")


def test_sd15_strengths(tiny_generator: Generator) -> None:
    a, b = picture(1), picture(2)
    # Strength 0: the VAE's round trip, deterministic, and closer to its input than to another.
    zero_a = tiny_generator.run(with_input(tiny_generator, SD, a, strength=0.0)).images[0]
    assert zero_a == tiny_generator.run(with_input(tiny_generator, SD, a, strength=0.0)).images[0]
    assert diff(zero_a, a) < diff(zero_a, b)
    # Strength 1: the same image whatever the input (only the size is the input's).
    one_a = tiny_generator.run(with_input(tiny_generator, SD, a, strength=1.0)).images[0]
    one_b = tiny_generator.run(with_input(tiny_generator, SD, b, strength=1.0)).images[0]
    assert diff(one_a, one_b) == 0
    # In between: the input shows, and fewer steps run (progress reaches the recipe's steps).
    half_a = tiny_generator.run(with_input(tiny_generator, SD, a, strength=0.5)).images[0]
    half_b = tiny_generator.run(with_input(tiny_generator, SD, b, strength=0.5)).images[0]
    assert diff(half_a, half_b) > 1.0
    # The PNG's recipe names the input by sha256 and its message, and A1111's strength.
    meta = read_png_metadata(half_a)
    assert meta["recipe"]["init_image"] == hashlib.sha256(a).hexdigest()
    assert meta["recipe"]["init_image_source"].startswith("https://discord.com/channels/")
    assert "Denoising strength: 0.5" in meta["parameters"]
    found = read_image(half_a).found
    assert found is not None and found.recipe.init_image == hashlib.sha256(a).hexdigest()


def test_an_input_of_another_size_is_fitted_as_the_recipe_says(tiny_generator: Generator) -> None:
    wide = picture(3, (128, 64))
    outs = {mode: tiny_generator.run(with_input(tiny_generator, SD, wide, strength=0.0, resize_mode=mode)).images[0]
            for mode in ("just_resize", "crop_and_resize", "resize_and_fill")}  # fmt: skip
    assert all(Image.open(io.BytesIO(o)).size == (64, 64) for o in outs.values())
    assert diff(outs["just_resize"], outs["crop_and_resize"]) > 0.5


def test_an_input_the_engine_does_not_hold_is_refused(tiny_generator: Generator) -> None:
    with pytest.raises(EngineError, match="was not sent to this engine"):
        tiny_generator.run(replace(SD, init_image="cd" * 32))


def test_upscale_pass_doubles_the_size_and_says_so(tiny_generator: Generator) -> None:
    steps: list[tuple[int, int]] = []
    out = tiny_generator.run(replace(SD, hires_scale=2.0, hires_strength=0.4, hires_upscaler="Lanczos"),
                             on_step=lambda d, t: steps.append((d, t))).images[0]  # fmt: skip
    assert Image.open(io.BytesIO(out)).size == (128, 128)
    meta = read_png_metadata(out)
    assert "Hires upscale: 2" in meta["parameters"] and "Denoising strength: 0.4" in meta["parameters"]
    assert "Size: 64x64" in meta["parameters"]  # A1111 writes the first pass's size
    assert steps and steps[-1][0] == steps[-1][1]


def test_sdxl_img2img(sdxl_generator: Generator) -> None:
    recipe = replace(SD, model="sdxl-tiny")
    a, b = picture(4), picture(5)
    half_a = sdxl_generator.run(with_input(sdxl_generator, recipe, a, strength=0.5)).images[0]
    half_b = sdxl_generator.run(with_input(sdxl_generator, recipe, b, strength=0.5)).images[0]
    assert diff(half_a, half_b) > 1.0
    one = [sdxl_generator.run(with_input(sdxl_generator, recipe, x, strength=1.0)).images[0] for x in (a, b)]
    assert diff(one[0], one[1]) == 0


@pytest.fixture(scope="module")
def flux_generator(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    root = tmp_path_factory.mktemp("flux-img2img")
    dev = build_flux(root / "dev", "dev", seed=3)
    models, loras = root / "models", root / "loras"
    (models / COMPONENTS_FOLDER).mkdir(parents=True)
    loras.mkdir()
    for part in (dev.vae, dev.clip_l, dev.t5):
        shutil.copy(part, models / COMPONENTS_FOLDER / part.name)
    shutil.copy(dev.transformer, Path(models) / "flux1-dev.safetensors")
    return Generator(models, loras)


def test_flux_img2img(flux_generator: Generator) -> None:
    recipe = Recipe(model="flux1-dev.safetensors", prompt="a lighthouse", width=64, height=64, steps=4,
                    sampler="Euler", cfg_scale=3.5, seed=5)  # fmt: skip
    a, b = picture(6), picture(7)
    zero = flux_generator.run(with_input(flux_generator, recipe, a, strength=0.0)).images[0]
    assert diff(zero, a) < diff(zero, b)
    half = [flux_generator.run(with_input(flux_generator, recipe, x, strength=0.5)).images[0] for x in (a, b)]
    assert diff(half[0], half[1]) > 0.5
    one = [flux_generator.run(with_input(flux_generator, recipe, x, strength=1.0)).images[0] for x in (a, b)]
    assert diff(one[0], one[1]) == 0


def test_a_strength_too_small_for_the_steps_still_runs_one_step(tiny_generator: Generator) -> None:
    """2 steps at 0.35: int(2 * 0.35) = 0 steps in diffusers, which fails; here one step runs."""
    recipe = replace(SD, steps=2)
    a = picture(8)
    out = tiny_generator.run(with_input(tiny_generator, recipe, a, strength=0.35)).images[0]
    zero = tiny_generator.run(with_input(tiny_generator, recipe, a, strength=0.0)).images[0]
    assert 0 < diff(out, zero)


@pytest.fixture(scope="module")
def zimage_generator(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    from engine.arch.zimage.pipeline import COMPONENTS_FOLDER as ZIMAGE_COMPONENTS
    from sandbox.zimage_builder import build_zimage

    root = tmp_path_factory.mktemp("zimage-img2img")
    build = build_zimage(root / "build", seed=3)
    models, loras = root / "models", root / "loras"
    (models / ZIMAGE_COMPONENTS).mkdir(parents=True)
    loras.mkdir()
    for part in (build.vae, build.text_encoder):
        shutil.copy(part, models / ZIMAGE_COMPONENTS / part.name)
    shutil.copytree(build.tokenizer, models / ZIMAGE_COMPONENTS / "tokenizer")
    shutil.copy(build.transformer, models / "z_image_turbo_bf16.safetensors")
    return Generator(models, loras)


def test_zimage_img2img(zimage_generator: Generator) -> None:
    recipe = Recipe(model="z_image_turbo_bf16.safetensors", prompt="a lighthouse", width=64, height=64, steps=4,
                    sampler="Euler", cfg_scale=1.0, seed=5)  # fmt: skip
    a, b = picture(10), picture(11)
    # Strength 0 is the VAE's round trip: neither the seed nor the prompt changes it, the input
    # does. (The tiny Z-Image VAE's random weights reproduce too little to compare it to the input.)
    zero = zimage_generator.run(with_input(zimage_generator, recipe, a, strength=0.0)).images[0]
    other = replace(recipe, seed=9, prompt="a red boat")
    assert diff(zero, zimage_generator.run(with_input(zimage_generator, other, a, strength=0.0)).images[0]) == 0
    assert diff(zero, zimage_generator.run(with_input(zimage_generator, recipe, b, strength=0.0)).images[0]) > 0.5
    half = [zimage_generator.run(with_input(zimage_generator, recipe, x, strength=0.5)).images[0] for x in (a, b)]
    assert diff(half[0], half[1]) > 0.5
    one = [zimage_generator.run(with_input(zimage_generator, recipe, x, strength=1.0)).images[0] for x in (a, b)]
    assert diff(one[0], one[1]) == 0


def test_the_kept_img2img_pipeline_runs_each_jobs_own_sampler(tmp_path: Path, demo_assets: object) -> None:
    """The image-to-image pipeline is built once per loaded model and kept (engine.arch.sd_runtime):
    a job after another with a different sampler gives what a fresh engine gives for it."""
    fresh = Generator(demo_assets.model_root, demo_assets.lora_root)  # type: ignore[attr-defined]
    used = Generator(demo_assets.model_root, demo_assets.lora_root)  # type: ignore[attr-defined]
    a = picture(7)
    euler_a = with_input(used, replace(SD, sampler="Euler a"), a, strength=0.6)
    ddim = with_input(used, replace(SD, sampler="DDIM"), a, strength=0.6)
    first = used.run(euler_a).images[0]
    kept = used.run(ddim).images[0]
    with_input(fresh, ddim, a)
    assert kept == fresh.run(ddim).images[0]
    assert diff(first, kept) > 0
    assert used.run(euler_a).images[0] == first
