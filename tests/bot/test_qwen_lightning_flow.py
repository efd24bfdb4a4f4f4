"""Qwen-Image-Lightning end to end (issue 21), on the real engine process and the Discord double.

An admin adds a tiny Qwen-Image model and a LoRA saved under the published file name
``Qwen-Image-Lightning-4steps-V1.0.safetensors``; the bot proposes the 4-step profile and the
admin keeps it. A member's ``/imagine`` runs 4 steps at CFG 1 with the authors' shift 3, as
the PNG's recipe says; sharing the recipe makes the same image bit for bit, and a shift the
member sets is kept with what the LoRA wants.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from engine.protocol import Recipe
from engine.recipe import share_code
from engine.recipe.readers import read_image
from sandbox.qwen_image_builder import QwenImageBuild, build_qwen_image, write_musubi_lora
from tests.bot.conftest import SD15, World, png_parameters
from tests.bot.test_admin_registry import run
from tests.bot.test_buttons import recorded
from tests.bot.test_speed_flow import imagine, pixels

LIGHTNING = "Qwen-Image-Lightning-4steps-V1.0"


@pytest.fixture(scope="module")
def qwen_files(tmp_path_factory: pytest.TempPathFactory) -> QwenImageBuild:
    return build_qwen_image(tmp_path_factory.mktemp("qwen-lightning") / "models", seed=6)


@pytest.fixture
def lightning_in_folders(demo_assets: Any, qwen_files: QwenImageBuild) -> Iterator[dict[str, str]]:
    models, loras = demo_assets.model_root, demo_assets.lora_root
    placed = [models / "qwen-lightning", models / "qwen-image-components", loras / "qwen-lightning"]
    (models / "qwen-lightning").mkdir()
    shutil.copytree(qwen_files.components, models / "qwen-image-components")
    shutil.copy(qwen_files.transformer, models / "qwen-lightning" / "qwen_image_bf16.safetensors")
    write_musubi_lora(qwen_files.transformer, loras / "qwen-lightning" / f"{LIGHTNING}.safetensors", seed=5)
    try:
        yield {"model": "qwen-lightning/qwen_image_bf16.safetensors", "lora": f"qwen-lightning/{LIGHTNING}.safetensors"}
    finally:
        for folder in placed:
            shutil.rmtree(folder, ignore_errors=True)


async def test_qwen_image_lightning_runs_4_steps_cfg_1_shift_3_and_a_share_reproduces_it(
    world: World, lightning_in_folders: dict[str, str]
) -> None:
    text = await run(world, world.admin, "model", {"file": lightning_in_folders["model"], "name": "Qwen"}, "add")
    model = await world.registry.models.get(world.guild.id, "Qwen")
    assert model is not None and model.architecture == "qwen_image", text
    text = await run(world, world.admin, "lora", {"file": lightning_in_folders["lora"]}, "add")
    assert f"Registered **{LIGHTNING}**" in text, text
    assert ("Sampling profile **Qwen-Image-Lightning 4-step** (read from its file name): Euler, 4 steps, CFG 1, "
            "shift 3") in text  # fmt: skip
    entry = await world.registry.loras.get(world.guild.id, LIGHTNING)
    assert entry is not None and entry.architecture == "qwen_image"
    assert entry.speed_profile == "qwen-image-lightning-4steps"
    # The admin accepts the proposal as it stands.
    text = await run(world, world.admin, "lora", {"name": LIGHTNING, "profile": "qwen-image-lightning-4steps"}, "edit")
    assert f"Updated **{LIGHTNING}**" in text, text

    # The member names no steps, CFG or shift: the model's (50 steps, CFG 4, its own shift) give
    # way to the LoRA's profile.
    result = await imagine(world, {"model": "Qwen", "prompt": "a harbour at dawn", "lora1": LIGHTNING,
                                   "size": "512x512", "seed": 21})  # fmt: skip
    png = result.attachments[0].data
    parameters = png_parameters(png)
    assert "Steps: 4, Sampler: Euler, Schedule type: Automatic, CFG scale: 1, Shift: 3, Seed: 21," in parameters, parameters
    notes = " ".join(f["value"] for e in result.embeds for f in e.get("fields") or [] if f["name"] == "Notes")
    assert "Sampling profile Qwen-Image-Lightning 4-step" in notes and "shift 3" in notes, result.embeds
    shown = {f["name"]: f["value"] for e in result.embeds for f in e.get("fields") or []}
    assert shown.get("Shift") == "3", shown
    read = read_image(png)
    assert read.found is not None and read.found.exact, read.reason
    assert (read.found.recipe.steps, read.found.recipe.cfg_scale, read.found.recipe.shift) == (4, 1.0, 3.0)

    # Sharing the recipe reproduces the image bit for bit.
    await recorded(world, result)
    post = await world.registry.posts.get(world.guild.id, result.id)
    assert post is not None
    stored = Recipe.from_json(post.recipe)
    assert (stored.steps, stored.cfg_scale, stored.shift) == (4, 1.0, 3.0)
    again = await imagine(world, {"recipe": share_code.encode(stored)})
    assert np.array_equal(pixels(again.attachments[0].data), pixels(png))
    assert png_parameters(again.attachments[0].data) == parameters

    # The member's own shift fights the profile: kept, with what the LoRA wants, and it shows.
    other = await imagine(world, {"model": "Qwen", "prompt": "a harbour at dawn", "lora1": LIGHTNING,
                                  "size": "512x512", "seed": 21, "shift": 6.0})  # fmt: skip
    assert "Shift: 6," in png_parameters(other.attachments[0].data)
    assert not np.array_equal(pixels(other.attachments[0].data), pixels(png))
    notes = " ".join(f["value"] for e in other.embeds for f in e.get("fields") or [] if f["name"] == "Notes")
    assert f"`{LIGHTNING}` (Qwen-Image-Lightning 4-step) wants shift 3; running your 6." in notes, other.embeds
    assert world.double.violations == []


async def test_a_shift_on_an_sd_model_is_refused_before_any_gpu_time(world: World) -> None:
    handle = await world.double.slash(world.alice, world.channel, "imagine", {"prompt": "a fox", "shift": 3.0})
    refused = await handle.wait_followup()
    assert "Shift is a setting of flow-matching models" in refused.content and "Leave shift empty." in refused.content
    # A shared Qwen-Image recipe run on an SD model instead leaves its shift behind.
    code = share_code.encode(Recipe(model="qwen_image_bf16.safetensors", model_name="Qwen", prompt="a fox", steps=2,
                                    sampler="Euler", cfg_scale=1.0, seed=4, shift=3.0))  # fmt: skip
    result = await imagine(world, {"recipe": code, "model": SD15, "size": "512x512"})
    parameters = png_parameters(result.attachments[0].data)
    assert "Steps: 2, Sampler: Euler," in parameters and "Shift" not in parameters, parameters
    assert world.double.violations == []
