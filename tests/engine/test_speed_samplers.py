"""The speed samplers (issue 21): each one's timesteps and sigmas against its reference.

References: diffusers' own schedulers built the way the speed LoRAs' authors build them in
their model cards, and the timesteps DMD2's README passes (``[999, 749, 499, 249]``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
)

from engine.generate import Generator
from engine.protocol import Recipe
from engine.recipe import a1111, share_code
from engine.recipe.readers.samplers import from_comfy
from engine.recipe.sampler_names import SAMPLERS, TOOL_NAMES
from engine.samplers import a1111_base_name, flow_match_scheduler, make_scheduler, schedule_type
from tests.engine._images import pixels


def read_text(png: bytes) -> str:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return str(image.info["parameters"])

CONFIGS = Path(__file__).resolve().parents[2] / "data" / "configs"
SDXL = json.loads((CONFIGS / "sdxl" / "scheduler" / "scheduler_config.json").read_text())
FLUX = json.loads((CONFIGS / "flux1" / "scheduler" / "scheduler_config.json").read_text())
#: DMD2's README (tianweiy/DMD2, "4-step LoRA"): ``timesteps=[999, 749, 499, 249]``.
DMD2_TIMESTEPS = [999, 749, 499, 249]


def _schedule(scheduler: object, steps: int) -> tuple[list[int], list[float] | None]:
    scheduler.set_timesteps(steps)  # type: ignore[attr-defined]
    sigmas = getattr(scheduler, "sigmas", None)
    return (
        [int(t) for t in scheduler.timesteps],  # type: ignore[attr-defined]
        None if sigmas is None else [float(s) for s in sigmas],
    )


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        # SDXL-Lightning's card: EulerDiscreteScheduler(timestep_spacing="trailing").
        ("Euler SGM Uniform", lambda: EulerDiscreteScheduler.from_config(SDXL, timestep_spacing="trailing")),
        # Hyper-SD's card: DDIMScheduler(timestep_spacing="trailing").
        ("DDIM SGM Uniform", lambda: DDIMScheduler.from_config(SDXL, timestep_spacing="trailing")),
        # LCM-LoRA (diffusers docs): LCMScheduler.from_config(pipe.scheduler.config).
        ("LCM", lambda: LCMScheduler.from_config(SDXL)),
        # TCD's README: TCDScheduler.from_config(pipe.scheduler.config).
        ("TCD", lambda: TCDScheduler.from_config(SDXL)),
    ],
)
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_timesteps_and_sigmas_equal_diffusers_reference(name: str, reference: object, steps: int) -> None:
    ours = _schedule(make_scheduler(name, SDXL), steps)
    assert ours == _schedule(reference(), steps)  # type: ignore[operator]


def test_trailing_spacing_gives_the_lightning_timesteps() -> None:
    """Trailing really is in effect (the model's own config says "leading")."""
    assert _schedule(make_scheduler("Euler SGM Uniform", SDXL), 4)[0] == [999, 749, 499, 249]
    assert _schedule(make_scheduler("Euler", SDXL), 4)[0] != [999, 749, 499, 249]


@pytest.mark.parametrize("steps", [4])
def test_dmd2_runs_on_its_published_timesteps(steps: int) -> None:
    ours = make_scheduler("LCM SGM Uniform", SDXL)
    assert _schedule(ours, steps)[0] == DMD2_TIMESTEPS
    reference = LCMScheduler.from_config(SDXL)
    reference.set_timesteps(timesteps=DMD2_TIMESTEPS)
    assert [int(t) for t in reference.timesteps] == DMD2_TIMESTEPS
    # And it is LCM's own stepping (the same class underneath), not a rewrite.
    assert isinstance(ours, LCMScheduler)
    # Plain LCM at 4 steps uses its 50-step skipping schedule, which differs.
    assert _schedule(make_scheduler("LCM", SDXL), 4)[0] == [999, 759, 499, 259]


def test_flow_matching_euler_with_shift_equals_diffusers() -> None:
    for shift in (1.0, 3.0):
        ours = flow_match_scheduler(FLUX, shift)
        reference = FlowMatchEulerDiscreteScheduler.from_config(FLUX, shift=shift, use_dynamic_shifting=False)
        ours.set_timesteps(8)
        reference.set_timesteps(8)
        assert torch.equal(ours.sigmas, reference.sigmas)
        assert torch.equal(ours.timesteps, reference.timesteps)
    # Without a shift it is the model's own (dynamic) scheduler, as FLUX runs today.
    assert dict(flow_match_scheduler(FLUX).config) == dict(FlowMatchEulerDiscreteScheduler.from_config(FLUX).config)


def test_flux_runtime_uses_the_shared_flow_matching_scheduler() -> None:
    from engine.arch.flux.pipeline import RUNTIME

    scheduler = RUNTIME.scheduler(FLUX, "Euler")
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    assert scheduler.config.use_dynamic_shifting is True


@pytest.mark.parametrize("name", sorted(TOOL_NAMES))
def test_each_speed_sampler_is_written_and_read_under_the_other_tools_names(name: str) -> None:
    """One table: A1111's split (Sampler + Schedule type), ComfyUI's pair, and back."""
    names = TOOL_NAMES[name]
    assert name in SAMPLERS
    assert a1111.split_sampler(name) == (names.a1111, names.schedule)
    assert a1111.join_sampler(names.a1111, names.schedule) == name
    assert a1111_base_name(name) == names.a1111
    assert schedule_type(name) == names.schedule
    assert from_comfy(names.comfy, names.comfy_scheduler) == name
    # And A1111/Forge text written with it reads back as the same recipe.
    recipe = Recipe(model="m.safetensors", prompt="a fox", sampler=name, steps=4, cfg_scale=1.0, seed=3)
    text = a1111.write_parameters(recipe, version="atelier test")
    assert f"Sampler: {names.a1111}, Schedule type: {names.schedule}," in text
    assert a1111.read_parameters(text).recipe == a1111.carried(recipe)


def test_eta_is_recorded_in_every_form() -> None:
    recipe = Recipe(model="m.safetensors", prompt="a fox", sampler="TCD", steps=4, cfg_scale=0.0, eta=0.3)
    text = a1111.write_parameters(recipe, version="atelier test")
    assert "Sampler: TCD, Schedule type: Automatic, CFG scale: 0, Eta: 0.3," in text
    read = a1111.read_parameters(text)
    assert read.recipe.eta == 0.3 and read.recipe.sampler == "TCD"
    assert read.recipe == a1111.carried(recipe)
    assert share_code.decode(share_code.encode(recipe)) == recipe
    assert Recipe.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe
    lightning = dataclasses.replace(recipe, sampler="Euler SGM Uniform", eta=None)
    text = a1111.write_parameters(lightning, version="atelier test")
    assert "Sampler: Euler, Schedule type: SGM Uniform," in text and "Eta" not in text
    assert a1111.read_parameters(text).recipe == a1111.carried(lightning)


RECIPE = Recipe(model="sd15-tiny.safetensors", prompt="a castle", steps=4, width=64, height=64, seed=5, cfg_scale=1.0)


def test_every_speed_sampler_runs_and_tcd_reads_its_eta(tiny_generator: Generator) -> None:
    images = {}
    for name in TOOL_NAMES:
        png = tiny_generator.run(dataclasses.replace(RECIPE, sampler=name)).images[0]
        images[name] = pixels(png)
        assert f"Sampler: {TOOL_NAMES[name].a1111}, Schedule type: {TOOL_NAMES[name].schedule}," in read_text(png)
    assert len({img.tobytes() for img in images.values()}) == len(images)
    at = {eta: pixels(tiny_generator.run(dataclasses.replace(RECIPE, sampler="TCD", eta=eta)).images[0])
          for eta in (0.0, 0.3)}  # fmt: skip
    assert not np.array_equal(at[0.0], at[0.3])
    # No eta = TCD's own default (0.3), not the pipeline's 0.
    assert np.array_equal(at[0.3], images["TCD"])


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), True, "0.3"])
def test_an_eta_out_of_range_is_refused_before_the_queue(eta: object) -> None:
    from engine.protocol import EngineError, ErrorCode
    from engine.validation import validate_recipe

    validate_recipe(dataclasses.replace(RECIPE, sampler="TCD", eta=0.3))
    with pytest.raises(EngineError) as caught:
        validate_recipe(dataclasses.replace(RECIPE, sampler="TCD", eta=eta))  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.INVALID_RECIPE and "eta must be from 0 to 1" in caught.value.message
