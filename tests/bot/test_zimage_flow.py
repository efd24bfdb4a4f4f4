"""Z-Image Turbo through the bot (issue 19), on the real engine process and the Discord double.

An admin adds a tiny Z-Image Turbo model (the official single-file transformer, whose VAE, Qwen3
text encoder and tokenizer come from the models folder's shared ``zimage-components/``) and a
kohya/musubi LoRA; a member imagines with them in the model's 8 steps, without guidance, and the
PNG carries the recipe, read back with the project's own readers. A FLUX.1 LoRA on it is refused
with ``arch_mismatch`` before any step.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from engine.recipe.readers import read_image
from sandbox.zimage_builder import ZImageBuild, build_zimage, write_kohya_lora
from tests import dit_files
from tests.bot.conftest import World, png_parameters
from tests.bot.test_admin_registry import run
from tests.bot.test_flux_flow import imagine


@pytest.fixture(scope="module")
def zimage_files(tmp_path_factory: pytest.TempPathFactory) -> ZImageBuild:
    return build_zimage(tmp_path_factory.mktemp("zimage-bot"), seed=6)


@pytest.fixture
def zimage_in_folders(demo_assets: Any, zimage_files: ZImageBuild) -> Iterator[dict[str, str]]:
    """The Z-Image files placed in the session engine's folders for one test, removed after."""
    models, loras = demo_assets.model_root, demo_assets.lora_root
    placed = [models / "zimage-test", models / "zimage-components", loras / "zimage-test"]
    for folder in placed:
        folder.mkdir()
    for part in (zimage_files.vae, zimage_files.text_encoder):
        shutil.copy(part, models / "zimage-components" / part.name)
    shutil.copytree(zimage_files.tokenizer, models / "zimage-components" / "tokenizer")
    shutil.copy(zimage_files.transformer, models / "zimage-test" / "z_image_turbo_bf16.safetensors")
    write_kohya_lora(zimage_files.transformer, loras / "zimage-test" / "harbour.safetensors", seed=1)
    dit_files.flux_kohya_lora(loras / "zimage-test" / "flux.safetensors")
    try:
        yield {
            "model": "zimage-test/z_image_turbo_bf16.safetensors",
            "harbour": "zimage-test/harbour.safetensors",
            "flux": "zimage-test/flux.safetensors",
        }
    finally:
        for folder in placed:
            shutil.rmtree(folder)


async def test_an_admin_adds_zimage_turbo_and_a_lora_and_a_member_imagines_in_eight_steps(
    world: World, zimage_in_folders: dict[str, str]
) -> None:
    files = zimage_in_folders
    text = await run(world, world.admin, "model", {"file": files["model"], "name": "Z Turbo"}, "add")
    assert "I did not register it" not in text, text
    model = await world.registry.models.get(world.guild.id, "Z Turbo")
    assert model is not None and model.architecture == "zimage", text
    assert model.default_steps == 8  # the authors' Turbo setting
    text = await run(world, world.admin, "lora", {"file": files["harbour"], "name": "harbour"}, "add")
    lora = await world.registry.loras.get(world.guild.id, "harbour")
    assert lora is not None and lora.architecture == "zimage", text

    result = await imagine(world, {"model": "Z Turbo", "prompt": "a harbour town at dusk", "size": "256x256",
                                   "seed": 41, "lora1": "harbour", "weight1": "0.8"})  # fmt: skip
    png = result.attachments[0].data
    assert png.startswith(b"\x89PNG")
    parameters = png_parameters(png)
    assert "<lora:harbour:0.8>" in parameters and "Steps: 8" in parameters, parameters
    assert "Seed: 41" in parameters and "Size: 256x256" in parameters
    read = read_image(png)
    assert read.found is not None and read.found.exact, read.reason
    recipe = read.found.recipe
    assert [(x.name, x.weight) for x in recipe.loras] == [("harbour", 0.8)]
    assert (recipe.seed, recipe.steps, recipe.width, recipe.height) == (41, 8, 256, 256)
    assert recipe.model_name == "Z Turbo" and recipe.model_hash
    assert world.double.violations == []


async def test_a_flux_lora_on_zimage_is_refused_before_any_step(
    world: World, zimage_in_folders: dict[str, str]
) -> None:
    base = Recipe(model=zimage_in_folders["model"], prompt="a fox", width=256, height=256, steps=8,
                  sampler="Euler", cfg_scale=1.0, seed=1)  # fmt: skip
    events: list[dict[str, Any]] = []
    with pytest.raises(EngineError) as caught:
        await world.engine.run("refuse-flux", replace(base, loras=(LoraRef(zimage_in_folders["flux"], 1.0),)),
                               on_event=events.append)  # fmt: skip
    assert caught.value.code is ErrorCode.ARCH_MISMATCH, caught.value
    assert "FLUX.1" in str(caught.value) and "Z-Image" in str(caught.value), str(caught.value)
    assert not [e for e in events if e.get("type") == "progress"]
