"""Qwen-Image-Edit and -2509 edit pictures in the engine (tiny builds in the real layouts).

Their transformers look like Qwen-Image's, so the recipe's variant ("edit", "edit_plus") says
it is an edit; the runtime then runs diffusers' ``QwenImageEditPipeline`` /
``QwenImageEditPlusPipeline`` on the loaded components with Qwen2.5-VL's processor from the
repository's ``processor/`` folder. The authors' pipelines read each picture at about 1 MP for
the VAE (and the vision tower); here that area is cut to 128x128 (``small_pictures``), so the
tiny models stay tiny: the same diffusers code runs, only its target area is smaller. The bot
flow (tests/bot/test_qwen_edit_flow.py) runs the real 1 MP area in the engine process.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from bot.request.rules import variant_mismatch
from engine import arch
from engine.arch.qwen_image.edit import processor_of
from engine.arch.qwen_image.pipeline import COMPONENTS_FOLDER, RUNTIME
from engine.generate import Generator
from engine.inspect import inspect_file
from engine.protocol import EngineError, ErrorCode, LoraRef, Recipe
from sandbox.qwen_image_builder import QwenImageBuild, build_qwen_image_edit, write_musubi_lora
from tests.engine.test_img2img import diff, picture, with_input

EDIT = Recipe(model="qwen_image_edit_bf16.safetensors", prompt="make the sky red", negative_prompt="", width=80,
              height=64, steps=2, sampler="Euler", cfg_scale=4.0, seed=11, architecture="qwen_image",
              variant="edit")  # fmt: skip


#: The picture area the edit pipelines aim at in these tests (the authors': 1024 * 1024).
SMALL_AREA = 128 * 128


@pytest.fixture(autouse=True)
def small_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' edit pipelines size every picture to about 1 MP (``calculate_dimensions(1024 *
    1024, ratio)``; -2509 also ``VAE_IMAGE_SIZE``): on the tiny models that VAE encode was most of
    each test's 20-40 s. The same functions run, aimed at ``SMALL_AREA``."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    for module in (edit, plus):
        real = module.calculate_dimensions
        monkeypatch.setattr(module, "calculate_dimensions",
                            lambda area, ratio, real=real: real(min(area, SMALL_AREA), ratio))  # fmt: skip
    monkeypatch.setattr(plus, "VAE_IMAGE_SIZE", SMALL_AREA)
    monkeypatch.setattr(plus, "CONDITION_IMAGE_SIZE", min(plus.CONDITION_IMAGE_SIZE, SMALL_AREA))


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> QwenImageBuild:
    return build_qwen_image_edit(tmp_path_factory.mktemp("qwen-edit") / "models", seed=2)


@pytest.fixture(scope="module")
def generator(build: QwenImageBuild, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    loras = tmp_path_factory.mktemp("qwen-edit-loras")
    write_musubi_lora(build.transformer, loras / "style.safetensors", seed=1)
    return Generator(build.transformer.parent, loras)


def pil(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.open(io.BytesIO(picture(seed, size))).convert("RGB")


def edit_pixels(pipe: Any, recipe: Recipe, images: list[Image.Image]) -> bytes:
    """One edit through the runtime as the generator calls it (engine.picture_run.edit), for
    more pictures than a recipe carries today."""
    encoder = RUNTIME.prompt_encoder(pipe, clip_skip=1, embeddings={})
    generators = [torch.Generator().manual_seed(recipe.seed)]
    with torch.inference_mode():
        conditioning = encoder.conditioning([recipe.prompt], [recipe.negative_prompt],
                                            guidance=RUNTIME.rows_per_image(recipe) > 1)  # fmt: skip
        latents = RUNTIME.prepare_latents(pipe, recipe, generators, device=torch.device("cpu"))
        out = RUNTIME.edit(pipe, conditioning=conditioning, recipe=recipe, images=images, latents=latents,
                           generators=generators, callback=lambda _p, _i, _t, kwargs: kwargs)  # fmt: skip
    (image,) = out.images
    assert image.size == (recipe.width, recipe.height)
    return image.tobytes()


def test_an_edit_keeps_the_recipes_size_and_reads_the_picture_and_the_instruction(generator: Generator) -> None:
    a, b = picture(21, (96, 64)), picture(22, (96, 64))
    out_a = generator.run(with_input(generator, EDIT, a)).images[0]
    assert Image.open(io.BytesIO(out_a)).size == (80, 64)
    assert out_a == generator.run(with_input(generator, EDIT, a)).images[0]  # bit-identical twice
    # The same seed and instruction with another picture, then another instruction: other images.
    assert diff(out_a, generator.run(with_input(generator, EDIT, b)).images[0]) > 0
    other = replace(EDIT, prompt="turn the house into a boat")
    assert diff(out_a, generator.run(with_input(generator, other, a)).images[0]) > 0
    # True CFG (4, the authors' default) reads the negative prompt, itself read beside the picture.
    assert diff(out_a, generator.run(with_input(generator, replace(EDIT, negative_prompt="blurry"), a)).images[0]) > 0


def test_an_edit_model_without_a_picture_stays_text_to_image(generator: Generator) -> None:
    alone = generator.run(EDIT).images[0]
    assert diff(alone, generator.run(replace(EDIT, variant=None)).images[0]) == 0


def test_cfg_1_and_a_qwen_image_lora_on_the_edit_model_with_weight_zero_change_nothing(generator: Generator) -> None:
    recipe = with_input(generator, replace(EDIT, cfg_scale=1.0), picture(23, (80, 64)))
    plain = generator.run(recipe).images[0]
    # CFG 1: one transformer call per step, the negative prompt not read.
    assert diff(generator.run(replace(recipe, negative_prompt="blurry")).images[0], plain) == 0
    assert diff(generator.run(replace(recipe, loras=(LoraRef("style.safetensors", 0.8),))).images[0], plain) > 0
    # The PNGs' recipes differ (the LoRA is named in them); the pixels do not.
    assert diff(generator.run(replace(recipe, loras=(LoraRef("style.safetensors", 0.0),))).images[0], plain) == 0


def test_edit_plus_reads_every_picture(build: QwenImageBuild) -> None:
    pipe = RUNTIME.load(build.transformer, device="cpu", dtype="float32", model_root=build.transformer.parent)
    plus = replace(EDIT, variant="edit_plus", cfg_scale=1.0)
    first, second, third = pil(31, (80, 64)), pil(32, (64, 64)), pil(33, (64, 80))
    one = edit_pixels(pipe, plus, [first])
    # -2509's pipeline is not Qwen-Image-Edit's: another prompt template and picture sizes.
    assert edit_pixels(pipe, replace(plus, variant="edit"), [first]) != one
    two = edit_pixels(pipe, plus, [first, second])
    three = edit_pixels(pipe, plus, [first, second, third])
    assert len({one, two, three}) == 3


@pytest.mark.parametrize(("variant", "count", "says"), [
    ("edit", 2, "Qwen-Image-Edit takes at most 1 picture and this edit has 2: send one, or use a "
                "Qwen-Image-Edit-2509 model, which takes up to 3"),
    ("edit_plus", 4, "Qwen-Image-Edit-2509 takes at most 3 pictures and this edit has 4: send at most 3"),
])  # fmt: skip
def test_more_pictures_than_the_model_reads_are_refused(variant: str, count: int, says: str) -> None:
    images = [Image.new("RGB", (64, 64))] * count
    with pytest.raises(EngineError) as caught:  # refused before the pipeline is touched (None here)
        RUNTIME.edit(None, conditioning=None, recipe=replace(EDIT, variant=variant), images=images, latents=None,
                     generators=[], callback=lambda *a: {})  # fmt: skip
    assert caught.value.code is ErrorCode.INVALID_RECIPE and says in str(caught.value)


def test_the_diffusers_folders_are_edit_models_that_run(build: QwenImageBuild, generator: Generator,
                                                        tmp_path: Path) -> None:  # fmt: skip
    info = inspect_file(build.folder)
    assert (info.architecture, info.variant, info.cannot_run) == ("qwen_image", "edit", None)
    plus = build_qwen_image_edit(tmp_path, pipeline="QwenImageEditPlusPipeline", seed=2)
    info = inspect_file(plus.folder)
    assert (info.architecture, info.variant, info.cannot_run) == ("qwen_image", "edit_plus", None)
    recipe = replace(EDIT, model=build.folder.name, cfg_scale=1.0)
    out = generator.run(with_input(generator, recipe, picture(24, (80, 64)))).images[0]
    assert Image.open(io.BytesIO(out)).size == (80, 64)


def test_a_single_file_without_the_processor_folder_says_what_to_copy(build: QwenImageBuild, tmp_path: Path) -> None:
    shutil.copy(build.transformer, tmp_path / build.transformer.name)
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(build.components / part, tmp_path / COMPONENTS_FOLDER / part)
    pipe = RUNTIME.load(tmp_path / build.transformer.name, device="cpu", dtype="float32", model_root=tmp_path)
    with pytest.raises(EngineError) as caught:
        processor_of(pipe)
    assert caught.value.code is ErrorCode.UNKNOWN_FILE
    assert "processor/" in str(caught.value) and "qwen-image-components" in str(caught.value)


def test_civitai_names_and_the_lora_warning() -> None:
    assert arch.from_base_model("Qwen")[:2] == ("qwen_image", "image")
    assert arch.from_base_model("Qwen Image Edit")[:2] == ("qwen_image", "edit")
    assert arch.from_base_model("Qwen Image Edit 2509")[:2] == ("qwen_image", "edit_plus")
    assert arch.from_pipeline_class("QwenImageEditPlusPipeline") == ("qwen_image", "edit_plus")
    said = variant_mismatch("qwen_image", "image", "edit")
    assert said is not None and "made for text-to-image rather than editing a reference image" in said
    assert variant_mismatch("qwen_image", "image", None) is None


def test_edit_plus_through_the_generator_hands_every_reference_on_in_order(
    generator: Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Recipe.references`` on -2509 (as /edit's image2 and image3 make it): the engine decodes each
    held picture and the runtime's edit gets the edited picture (fitted to the recipe's size)
    and the references as they came, in the recipe's order. A reference the engine does not
    hold is refused by its sha256, before any step."""
    from engine.arch.qwen_image.pipeline import QwenImageRuntime

    seen: list[list[tuple[int, int]]] = []
    real_edit = QwenImageRuntime.edit

    def spy(self: QwenImageRuntime, pipe: object, **kwargs: Any) -> Any:
        seen.append([image.size for image in kwargs["images"]])
        return real_edit(self, pipe, **kwargs)

    monkeypatch.setattr(QwenImageRuntime, "edit", spy)
    hat, scarf = picture(41, (48, 96)), picture(42, (96, 48))
    plus = with_input(generator, replace(EDIT, variant="edit_plus", cfg_scale=1.0), picture(43, (96, 64)))
    recipe = replace(plus, references=(hashlib.sha256(hat).hexdigest(), hashlib.sha256(scarf).hexdigest()))
    steps: list[int] = []
    with pytest.raises(EngineError) as caught:
        generator.run(recipe, on_step=lambda step, total: steps.append(step))
    assert caught.value.code is ErrorCode.INVALID_RECIPE
    assert f"the reference picture {recipe.references[0][:12]}… was not sent to this engine" in str(caught.value)
    assert seen == [] and steps == []
    generator.inputs.put(hat)
    with pytest.raises(EngineError, match=f"the reference picture {recipe.references[1][:12]}… was not sent"):
        generator.run(recipe)
    assert seen == []
    generator.inputs.put(scarf)
    three = generator.run(recipe).images[0]
    assert seen == [[(80, 64), (48, 96), (96, 48)]]
    assert Image.open(io.BytesIO(three)).size == (80, 64)
    # The references are read: the pictures in another order, or one fewer, give other images.
    swapped = generator.run(replace(recipe, references=recipe.references[::-1])).images[0]
    fewer = generator.run(replace(recipe, references=recipe.references[:1])).images[0]
    assert seen[1:] == [[(80, 64), (96, 48), (48, 96)], [(80, 64), (48, 96)]]
    assert diff(three, swapped) > 0 and diff(three, fewer) > 0
