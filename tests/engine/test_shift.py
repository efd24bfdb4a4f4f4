"""The flow-matching shift as a recipe setting (issue 21: Qwen-Image-Lightning's shift 3).

The recipe records it in every form (JSON, share code, Forge's ``Shift`` in A1111 text,
ComfyUI's ModelSampling nodes read back); the DiT runtimes run it as diffusers'
FlowMatchEulerDiscreteScheduler with a static shift; SD refuses it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

from engine.generate import Generator
from engine.protocol import EngineError, ErrorCode, Recipe
from engine.recipe import a1111, share_code
from engine.recipe.batching import batch_key
from engine.recipe.readers import read_image
from engine.validation import check_for_architecture, validate_recipe
from sandbox.qwen_image_builder import QwenImageBuild, build_qwen_image
from tests.recipe.test_flux_recipes import comfy_flux_png
from tests.recipe.test_zimage_recipes import COMFY_ZIMAGE_TURBO

CONFIGS = Path(__file__).resolve().parents[2] / "data" / "configs"
QWEN = json.loads((CONFIGS / "qwen_image" / "scheduler" / "scheduler_config.json").read_text())
#: The Lightning README's scheduler (ModelTC/Qwen-Image-Lightning generate_with_diffusers.py):
#: a dynamic shift pinned at log(3) either side, and no terminal stretch.
LIGHTNING = {**QWEN, "base_shift": math.log(3), "max_shift": math.log(3), "shift_terminal": None}

RECIPE = Recipe(model="qwen_image_bf16.safetensors", prompt="a lighthouse", width=64, height=64, steps=4,
                sampler="Euler", cfg_scale=1.0, seed=5, architecture="qwen_image", shift=3.0)  # fmt: skip


def test_the_shift_is_recorded_in_every_form() -> None:
    assert Recipe.from_json(json.loads(json.dumps(RECIPE.to_json()))) == RECIPE
    assert share_code.decode(share_code.encode(RECIPE)) == RECIPE
    assert share_code.decode(share_code.encode(dataclasses.replace(RECIPE, shift=2.5))).shift == 2.5
    text = a1111.write_parameters(RECIPE, version="atelier test")
    assert "CFG scale: 1, Shift: 3, Seed: 5," in text, text
    read = a1111.read_parameters(text)
    assert read.recipe.shift == 3.0 and "Shift" not in read.extras
    assert read.recipe == a1111.carried(RECIPE)
    # None (the model's own) writes nothing and reads back as None.
    own = dataclasses.replace(RECIPE, shift=None)
    text = a1111.write_parameters(own, version="atelier test")
    assert "Shift" not in text and a1111.read_parameters(text).recipe.shift is None
    assert share_code.decode(share_code.encode(own)) == own
    # Forge's text as Forge writes it on a flow model.
    forge = "a fox\nSteps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Shift: 3.1, Seed: 1, Size: 1024x1024"
    assert a1111.read_parameters(forge).recipe.shift == 3.1


def test_jobs_with_different_shifts_do_not_batch() -> None:
    assert batch_key(RECIPE) == batch_key(dataclasses.replace(RECIPE, seed=9))
    assert batch_key(RECIPE) != batch_key(dataclasses.replace(RECIPE, shift=None))
    assert batch_key(RECIPE) != batch_key(dataclasses.replace(RECIPE, shift=2.0))


def test_comfyui_model_sampling_nodes_give_the_shift() -> None:
    graph = {k: {**v, "inputs": dict(v["inputs"])} for k, v in COMFY_ZIMAGE_TURBO.items()}
    graph["11"]["inputs"]["shift"] = 3.1
    found = read_image(comfy_flux_png(graph)).found
    assert found is not None and found.recipe.shift == 3.1
    graph["11"]["class_type"] = "ModelSamplingSD3"
    graph["11"]["inputs"]["shift"] = 6
    found = read_image(comfy_flux_png(graph)).found
    assert found is not None and found.recipe.shift == 6.0
    # Without such a node (the model's own schedule), no shift.
    graph["3"]["inputs"]["model"] = ["30", 0]
    del graph["11"]
    found = read_image(comfy_flux_png(graph)).found
    assert found is not None and found.recipe.shift is None


@pytest.mark.parametrize("shift", [0, -1.0, 20.5, float("nan"), True, "3"])
def test_a_shift_out_of_range_is_refused_before_the_queue(shift: object) -> None:
    validate_recipe(RECIPE)
    with pytest.raises(EngineError) as caught:
        validate_recipe(dataclasses.replace(RECIPE, shift=shift))  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.INVALID_RECIPE and "shift must be above 0" in caught.value.message


@pytest.mark.parametrize("architecture", ["sd15", "sdxl"])
def test_shift_is_refused_on_sd(architecture: str) -> None:
    check_for_architecture(RECIPE, "qwen_image", "qwen")
    recipe = dataclasses.replace(RECIPE, sampler="Euler", width=512, height=512)
    with pytest.raises(EngineError) as caught:
        check_for_architecture(recipe, architecture, "dream")
    assert "have no flow-matching shift" in caught.value.message and "leave shift out" in caught.value.message
    check_for_architecture(dataclasses.replace(recipe, shift=None), architecture, "dream")


def test_sd_runs_refuse_a_shift_before_any_step(tiny_generator: Generator) -> None:
    recipe = Recipe(model="sd15-tiny.safetensors", prompt="a castle", steps=2, width=64, height=64, shift=3.0)
    with pytest.raises(EngineError) as caught:
        tiny_generator.run(recipe)
    assert "have no flow-matching shift" in caught.value.message


@pytest.mark.parametrize("module", ["flux", "zimage", "qwen_image", "flux2"])
def test_every_dit_runtime_runs_a_static_shift(module: str) -> None:
    import importlib

    runtime = importlib.import_module(f"engine.arch.{module}.pipeline").RUNTIME
    folder = {"flux": "flux1", "flux2": "flux2_klein"}.get(module, module)
    config = json.loads((CONFIGS / folder / "scheduler" / "scheduler_config.json").read_text())
    own = runtime.scheduler(config, "Euler")
    assert dict(own.config) == dict(FlowMatchEulerDiscreteScheduler.from_config(config).config)
    fixed = runtime.scheduler(config, "Euler", shift=3.0)
    assert (fixed.config.shift, fixed.config.use_dynamic_shifting, fixed.config.shift_terminal) == (3.0, False, None)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> QwenImageBuild:
    return build_qwen_image(tmp_path_factory.mktemp("qwen-shift") / "models", seed=3)


@pytest.fixture(scope="module")
def generator(build: QwenImageBuild, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return Generator(build.transformer.parent, tmp_path_factory.mktemp("qwen-shift-loras"))


def _pixels(png: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(png)).tobytes()


def test_a_qwen_image_run_uses_diffusers_static_shift_sigmas(generator: Generator) -> None:
    png = generator.run(RECIPE).images[0]
    assert generator.current is not None
    used = generator.current.pipe.scheduler.sigmas.clone()
    # QwenImagePipeline's own call: sigmas linspace(1, 1/steps, steps) and a mu from the length.
    sigmas = np.linspace(1.0, 1 / RECIPE.steps, RECIPE.steps)
    mu = calculate_shift((RECIPE.width // 16) * (RECIPE.height // 16), 256, 8192, 0.5, 0.9)
    reference = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    reference.set_timesteps(sigmas=sigmas, mu=mu)
    assert torch.equal(used, reference.sigmas), (used, reference.sigmas)
    # The Lightning README's own config gives the same schedule (log(3) pinned = shift 3).
    # The pipeline computes mu from the scheduler's own base and max shift: log(3) here.
    length = (RECIPE.width // 16) * (RECIPE.height // 16)
    authors = FlowMatchEulerDiscreteScheduler.from_config(LIGHTNING)
    authors.set_timesteps(sigmas=sigmas, mu=calculate_shift(length, 256, 8192, math.log(3), math.log(3)))
    assert torch.allclose(used, authors.sigmas, atol=1e-6)
    # And the model's own (dynamic, terminal-stretched) schedule is another one.
    generator.run(dataclasses.replace(RECIPE, shift=None))
    assert not torch.allclose(generator.current.pipe.scheduler.sigmas, used)
    # The PNG says so, in both forms.
    found = read_image(png).found
    assert found is not None and found.recipe.shift == 3.0


def test_the_shift_changes_the_image_and_a_recipe_reproduces_bit_for_bit(generator: Generator) -> None:
    at = {shift: _pixels(generator.run(dataclasses.replace(RECIPE, shift=shift)).images[0])
          for shift in (None, 1.0, 3.0)}  # fmt: skip
    assert len(set(at.values())) == 3
    again = share_code.decode(share_code.encode(RECIPE))
    assert _pixels(generator.run(again).images[0]) == at[3.0]
