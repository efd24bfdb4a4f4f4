"""Qwen-Image through the bot (issue 19), on the real engine process and the Discord double.

An admin adds a tiny Qwen-Image model (the published single-file transformer, its VAE, text
encoder and tokenizer folders shared from ``qwen-image-components/``) and a musubi-tuner LoRA;
a member imagines with a negative prompt under true CFG, and the PNG's recipe carries both.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from engine.recipe.readers import read_image
from sandbox.qwen_image_builder import QwenImageBuild, build_qwen_image, write_musubi_lora
from tests.bot.conftest import World, png_parameters
from tests.bot.test_admin_registry import run
from tests.bot.test_flux_flow import imagine


@pytest.fixture(scope="module")
def qwen_files(tmp_path_factory: pytest.TempPathFactory) -> QwenImageBuild:
    return build_qwen_image(tmp_path_factory.mktemp("qwen-bot") / "models", seed=4)


@pytest.fixture
def qwen_in_folders(demo_assets: Any, qwen_files: QwenImageBuild) -> Iterator[dict[str, str]]:
    models, loras = demo_assets.model_root, demo_assets.lora_root
    placed = [models / "qwen-test", models / "qwen-image-components", loras / "qwen-test"]
    (models / "qwen-test").mkdir()
    (loras / "qwen-test").mkdir()
    shutil.copytree(qwen_files.components, models / "qwen-image-components")
    shutil.copy(qwen_files.transformer, models / "qwen-test" / "qwen_image_bf16.safetensors")
    write_musubi_lora(qwen_files.transformer, loras / "qwen-test" / "ink.safetensors", seed=3)
    try:
        yield {"model": "qwen-test/qwen_image_bf16.safetensors", "ink": "qwen-test/ink.safetensors"}
    finally:
        for folder in placed:
            shutil.rmtree(folder)


async def test_an_admin_adds_qwen_image_and_a_lora_and_a_member_imagines_with_a_negative(
    world: World, qwen_in_folders: dict[str, str]
) -> None:
    text = await run(world, world.admin, "model", {"file": qwen_in_folders["model"], "name": "Qwen"}, "add")
    model = await world.registry.models.get(world.guild.id, "Qwen")
    assert model is not None and model.architecture == "qwen_image", text
    assert (model.default_steps, model.default_cfg) == (50, 4.0)  # the authors' pipeline
    text = await run(world, world.admin, "lora", {"file": qwen_in_folders["ink"], "name": "ink"}, "add")
    lora = await world.registry.loras.get(world.guild.id, "ink")
    assert lora is not None and lora.architecture == "qwen_image", text

    result = await imagine(world, {"model": "Qwen", "prompt": "an ink drawing of a harbour", "negative": "blurry",
                                   "size": "512x512", "steps": 3, "seed": 12, "lora1": "ink", "weight1": "0.7"})  # fmt: skip
    png = result.attachments[0].data
    parameters = png_parameters(png)
    assert "Negative prompt: blurry" in parameters and "CFG scale: 4" in parameters, parameters
    assert "<lora:ink:0.7>" in parameters and "Steps: 3" in parameters
    read = read_image(png)
    assert read.found is not None and read.found.exact, read.reason
    assert (read.found.recipe.negative_prompt, read.found.recipe.cfg_scale) == ("blurry", 4.0)
    assert world.double.violations == []
