"""A speed LoRA end to end (issue 21), on the real engine process and the Discord double.

An admin adds a tiny SDXL LoRA saved under SDXL-Lightning's published file name; the bot
proposes the SDXL-Lightning 4-step profile and the admin keeps it. A member's ``/imagine``
with it runs 4 steps at CFG 1 on Euler with trailing timesteps (A1111's Euler + SGM Uniform),
as the PNG's recipe says, and the share code of that post makes the same image, bit for bit.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from engine.protocol import Recipe
from engine.recipe import share_code
from engine.recipe.readers import read_image
from sandbox.discord_double import StoredMessage
from tests.bot.conftest import SDXL, World, png_parameters
from tests.bot.test_admin_registry import run
from tests.bot.test_buttons import recorded

LIGHTNING = "sdxl_lightning_4step_lora"


@pytest.fixture
def lightning_file(demo_assets: Any) -> Iterator[str]:
    """ByteDance's layout (diffusers keys, UNet only), as a tiny SDXL LoRA, in the session
    engine's LoRA folder for one test."""
    folder = Path(demo_assets.lora_root) / "speed-test"
    folder.mkdir()
    state = load_file(str(Path(demo_assets.lora_root) / "sdxl" / "twin-diffusers.safetensors"))
    save_file({k: v for k, v in state.items() if k.startswith("unet.")}, str(folder / f"{LIGHTNING}.safetensors"))
    try:
        yield f"speed-test/{LIGHTNING}.safetensors"
    finally:
        shutil.rmtree(folder)


async def imagine(world: World, options: dict[str, Any]) -> StoredMessage:
    before = {m.id for m in world.double.messages(world.channel)}
    handle = await world.double.slash(world.alice, world.channel, "imagine", options)
    assert await handle.wait_response(3) == 5
    return await world.double.wait_for_message(
        world.channel, lambda m: bool(m.attachments) and not m.ephemeral and m.id not in before, within=120
    )


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).copy()


async def test_a_lightning_lora_is_proposed_its_profile_and_runs_4_trailing_steps(
    world: World, lightning_file: str
) -> None:
    text = await run(world, world.admin, "lora", {"file": lightning_file}, "add")
    assert f"Registered **{LIGHTNING}**" in text, text
    assert ("Sampling profile **SDXL-Lightning 4-step** (read from its file name): Euler SGM Uniform, "
            "4 steps, CFG 1") in text  # fmt: skip
    assert "Sampling profile: SDXL-Lightning 4-step · Euler SGM Uniform, 4 steps, CFG 1" in text  # the card
    entry = await world.registry.loras.get(world.guild.id, LIGHTNING)
    assert entry is not None and entry.speed_profile == "sdxl-lightning-4step" and entry.category == "speed"
    # The admin accepts the proposal (sets it as it stands); /lora edit takes profiles by id.
    text = await run(world, world.admin, "lora", {"name": LIGHTNING, "profile": "sdxl-lightning-4step"}, "edit")
    assert f"Updated **{LIGHTNING}**" in text and "SDXL-Lightning 4-step" in text, text

    # The smallest size SDXL's rules allow, as the model's default (the tiny model is quick at it).
    await world.registry.models.update(world.guild.id, SDXL, world.admin.user.id, default_width=640, default_height=640)
    # The member names no sampler, steps or CFG: the model's defaults (2 steps, CFG 7, DPM++ 2M
    # Karras) give way to the LoRA's profile.
    result = await imagine(world, {"model": SDXL, "prompt": "a fox in snow", "lora1": LIGHTNING,
                                   "seed": 11})  # fmt: skip
    png = result.attachments[0].data
    parameters = png_parameters(png)
    assert "Steps: 4, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: 1, Seed: 11," in parameters, parameters
    assert f"<lora:{LIGHTNING}:1>" in parameters
    notes = " ".join(f["value"] for e in result.embeds for f in e.get("fields") or [] if f["name"] == "Notes")
    assert "Sampling profile SDXL-Lightning 4-step" in notes, result.embeds
    read = read_image(png)
    assert read.found is not None and read.found.exact, read.reason
    recipe = read.found.recipe
    assert (recipe.sampler, recipe.steps, recipe.cfg_scale) == ("Euler SGM Uniform", 4, 1.0)

    # Sharing the recipe reproduces the image bit for bit.
    await recorded(world, result)
    post = await world.registry.posts.get(world.guild.id, result.id)
    assert post is not None
    stored = Recipe.from_json(post.recipe)
    assert (stored.sampler, stored.steps, stored.cfg_scale) == ("Euler SGM Uniform", 4, 1.0)
    again = await imagine(world, {"recipe": share_code.encode(stored)})
    assert np.array_equal(pixels(again.attachments[0].data), pixels(png))
    assert png_parameters(again.attachments[0].data) == parameters

    # The member's explicit steps fight the profile: kept, with what the LoRA wants.
    handle = await world.double.slash(world.alice, world.channel, "imagine", {
        "model": SDXL, "prompt": "a fox", "lora1": LIGHTNING, "steps": 3, "seed": 1})  # fmt: skip
    reply = await handle.wait_followup()
    assert f"`{LIGHTNING}` (SDXL-Lightning 4-step) wants 4 steps; running your 3." in reply.content
    # Two speed LoRAs are refused before any GPU time.
    await world.registry.loras.update(world.guild.id, "watercolor-xl", world.admin.user.id, speed_profile="tcd-sdxl")
    handle = await world.double.slash(world.alice, world.channel, "imagine", {
        "model": SDXL, "prompt": "a fox", "lora1": LIGHTNING, "lora2": "watercolor-xl"})  # fmt: skip
    refused = await handle.wait_followup()
    assert "2 speed LoRAs" in refused.content and "Keep one of them." in refused.content
    assert world.double.violations == []


async def test_server_fast_mode_runs_each_model_with_its_speed_lora(world: World, lightning_file: str) -> None:
    await run(world, world.admin, "lora", {"file": lightning_file, "name": "lightning"}, "add")
    await world.registry.models.update(world.guild.id, SDXL, world.admin.user.id, default_width=640, default_height=640)
    text = await run(world, world.admin, "model", {"name": SDXL, "fast_with": "lightning"}, "edit")
    assert "Fast mode: with `lightning`" in text, text
    text = await run(world, world.admin, "model", {"enabled": True}, "fast")
    assert "Fast mode is **on**" in text and f"**{SDXL}** → `lightning`" in text, text
    assert (await world.registry.settings.get(world.guild.id)).fast_mode is True

    quick = await imagine(world, {"model": SDXL, "prompt": "a fox in snow", "seed": 3})
    parameters = png_parameters(quick.attachments[0].data)
    assert "<lora:lightning:1>" in parameters and "Steps: 4, Sampler: Euler, Schedule type: SGM Uniform" in parameters
    # A member who wants the model as it is says so; its defaults (2 steps here) run.
    normal = await imagine(world, {"model": SDXL, "prompt": "a fox in snow", "seed": 3, "speed": "normal"})
    parameters = png_parameters(normal.attachments[0].data)
    assert "<lora:" not in parameters and "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras" in parameters
    assert world.double.violations == []
