"""FLUX.1 through the bot (issue 18), on the real engine process and the Discord double.

An admin adds a tiny FLUX.1 dev model twice (BFL's single-file transformer, whose VAE, CLIP-L
and T5 come from the models folder's shared ``flux-components/``, and a diffusers folder) and
two kohya FLUX LoRAs; a member imagines with the two-LoRA stack and a 300-token natural-language
prompt, and the PNG carries the recipe, read back with the project's own readers. An SDXL LoRA
and a FLUX LoRA of another width are refused with ``arch_mismatch`` before any step.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from engine.recipe.readers import read_image
from sandbox.discord_double import StoredMessage
from sandbox.flux_builder import FluxBuild, build_flux, write_kohya_lora
from tests import dit_files
from tests.bot.conftest import World, png_parameters
from tests.bot.test_admin_registry import run

#: A natural-language prompt of about 300 T5 tokens: past CLIP's 77, inside dev's 512.
LONG_PROMPT = " ".join(
    [
        "A quiet harbour town at the blue hour, seen from a hill above the old lighthouse, where",
        "fishing boats with peeling red and green paint rest against a stone quay and gulls circle",
        "over nets that are drying on wooden racks; warm lamps glow in the windows of narrow houses",
        "stacked along the slope, and a small bakery at the corner still has its door open, spilling",
        "yellow light onto wet cobblestones after a brief summer rain.",
    ]
    * 4
)


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory: pytest.TempPathFactory) -> FluxBuild:
    return build_flux(tmp_path_factory.mktemp("flux-bot"), "dev", seed=5)


@pytest.fixture
def flux_in_folders(demo_assets: Any, flux_files: FluxBuild, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The FLUX files placed in the session engine's folders for one test, removed after."""
    models, loras = demo_assets.model_root, demo_assets.lora_root
    placed = [models / "flux-test", models / "flux-components", loras / "flux-test"]
    for folder in placed:
        folder.mkdir()
    for part in (flux_files.vae, flux_files.clip_l, flux_files.t5):
        shutil.copy(part, models / "flux-components" / part.name)
    shutil.copy(flux_files.transformer, models / "flux-test" / "flux1-dev.safetensors")
    shutil.copytree(flux_files.folder, models / "flux-test" / "flux-dev-diffusers")
    write_kohya_lora(flux_files.transformer, loras / "flux-test" / "harbour.safetensors", seed=1, clip_l=flux_files.clip_l)
    write_kohya_lora(flux_files.transformer, loras / "flux-test" / "lamps.safetensors", seed=2)
    dit_files.flux_kohya_lora(loras / "flux-test" / "wide.safetensors")  # made for FLUX's real 3072
    try:
        yield {
            "single": "flux-test/flux1-dev.safetensors",
            "folder": "flux-test/flux-dev-diffusers",
            "harbour": "flux-test/harbour.safetensors",
            "lamps": "flux-test/lamps.safetensors",
            "wide": "flux-test/wide.safetensors",
        }
    finally:
        for folder in placed:
            shutil.rmtree(folder)


async def imagine(world: World, options: dict[str, Any]) -> StoredMessage:
    before = {m.id for m in world.double.messages(world.channel)}
    handle = await world.double.slash(world.alice, world.channel, "imagine", options)
    assert await handle.wait_response(3) == 5
    return await world.double.wait_for_message(
        world.channel,
        lambda m: bool(m.attachments) and not m.ephemeral and m.id not in before,
        within=120,
    )


async def test_flux_models_and_loras_register_and_a_two_lora_stack_renders(
    world: World, flux_in_folders: dict[str, str]
) -> None:
    files = flux_in_folders
    for file, name in ((files["single"], "Flux Dev"), (files["folder"], "Flux Dev Folder")):
        text = await run(world, world.admin, "model", {"file": file, "name": name}, "add")
        assert "I did not register it" not in text, text
        entry = await world.registry.models.get(world.guild.id, name)
        assert entry is not None and entry.architecture == "flux", text
    for key in ("harbour", "lamps"):
        text = await run(world, world.admin, "lora", {"file": files[key], "name": key}, "add")
        entry = await world.registry.loras.get(world.guild.id, key)
        assert entry is not None and entry.architecture == "flux", text

    result = await imagine(world, {
        "model": "Flux Dev", "prompt": LONG_PROMPT, "steps": 2, "size": "256x256", "seed": 77,
        "lora1": "harbour", "weight1": "0.8", "lora2": "lamps", "weight2": "0.5",
    })  # fmt: skip
    png = result.attachments[0].data
    assert png.startswith(b"\x89PNG")
    parameters = png_parameters(png)
    assert "<lora:harbour:0.8>" in parameters and "<lora:lamps:0.5>" in parameters, parameters
    assert "Seed: 77" in parameters and "Steps: 2" in parameters and "Size: 256x256" in parameters
    read = read_image(png)
    assert read.found is not None and read.found.exact, read.reason
    recipe = read.found.recipe
    assert recipe.prompt == LONG_PROMPT  # whole: nothing cut at 77 tokens
    assert [(lora.name, lora.weight) for lora in recipe.loras] == [("harbour", 0.8), ("lamps", 0.5)]
    assert (recipe.seed, recipe.steps, recipe.width, recipe.height) == (77, 2, 256, 256)
    assert recipe.model_name == "Flux Dev" and recipe.model_hash  # names and hashes, never a path

    # The diffusers folder runs too, and its image differs (its own weights, same seed).
    other = await imagine(world, {"model": "Flux Dev Folder", "prompt": "a lighthouse", "steps": 2,
                                  "size": "256x256", "seed": 77})  # fmt: skip
    assert other.attachments[0].data.startswith(b"\x89PNG")
    health = await world.engine.health()
    assert health["memory_plan"] == {"text_encoders": "device", "transformer_storage": "float32",
                                     "reason": "CPU; on a CPU the text encoders share the one memory"}  # fmt: skip
    assert world.double.violations == []


async def test_an_sdxl_lora_and_a_flux_lora_of_another_width_are_refused_before_any_step(
    world: World, demo_assets: Any, flux_in_folders: dict[str, str]
) -> None:
    """Through the engine's own API, as the bot's jobs reach it: each refusal is
    ``arch_mismatch`` naming both sides, and no step is reported."""
    base = Recipe(model=flux_in_folders["single"], prompt="a fox", width=256, height=256, steps=2,
                  sampler="Euler", cfg_scale=3.5, seed=1)  # fmt: skip
    cases = {
        "sdxl": (LoraRef(demo_assets.lora("pixel-art-xl").file, 1.0), ("SDXL", "FLUX.1")),
        "wide": (LoraRef(flux_in_folders["wide"], 1.0), ("width 32", "another width")),
    }
    for job, (lora, names) in cases.items():
        events: list[dict[str, Any]] = []
        with pytest.raises(EngineError) as caught:
            await world.engine.run(f"refuse-{job}", replace(base, loras=(lora,)), on_event=events.append)
        assert caught.value.code is ErrorCode.ARCH_MISMATCH, caught.value
        assert all(name in str(caught.value) for name in names), str(caught.value)
        assert not [e for e in events if e.get("type") == "progress"]
