"""The flow-matching shift in validation (issue 21): the model's own, then the stack's profile
(Qwen-Image-Lightning's 3), then the member's explicit option; refused where it means nothing."""

from __future__ import annotations

from typing import Any

import pytest

from bot.registry import Catalog, ServerSettings
from bot.request.parse import build_request
from bot.request.validation import Rejected, Validated, validate

from .conftest import GUILD, lora, model


def catalog() -> Catalog:
    return Catalog(
        GUILD,
        ServerSettings(),
        [
            model("Qwen", "qwen_image", default_width=1024, default_height=1024, default_cfg=4.0,
                  default_steps=30, default_sampler="Euler"),
            model("XL", "sdxl", default_steps=30, default_cfg=7.0, default_sampler="DPM++ 2M Karras"),
            model("Dream", "sd15"),
        ],  # fmt: skip
        [
            lora("Lightning", "qwen_image", speed_profile="qwen-image-lightning-4steps"),
            lora("Style", "qwen_image"),
            lora("XL Lightning", "sdxl", speed_profile="sdxl-lightning-4step"),
        ],
    )


def run(*slots: tuple[str, str | None], model_name: str = "Qwen", **kw: Any) -> Validated | Rejected:
    values: dict[str, Any] = {"guild_id": GUILD, "channel_id": 1, "user_id": 2, "channel_is_nsfw": False,
                              "prompt": "a fox", "model": model_name, "slots": list(slots), "seed": 1}  # fmt: skip
    values.update(kw)
    return validate(build_request(**values), catalog())


def notes(result: Validated | Rejected) -> dict[str, str]:
    assert isinstance(result, Validated), result
    return {n.code: n.message for n in result.notes}


def test_without_a_profile_the_model_keeps_its_own_shift() -> None:
    result = run(("Style", None))
    assert isinstance(result, Validated)
    assert (result.recipe.steps, result.recipe.shift) == (30, None)


def test_the_lightning_profile_brings_shift_3_and_says_so() -> None:
    result = run(("Lightning", None), ("Style", "0.5"))
    assert isinstance(result, Validated)
    recipe = result.recipe
    assert (recipe.sampler, recipe.steps, recipe.cfg_scale, recipe.shift) == ("Euler", 4, 1.0, 3.0)
    assert notes(result)["profile"] == ("Sampling profile Qwen-Image-Lightning 4-step (from `Lightning`): "
                                        "Euler, 4 steps, CFG 1, shift 3.")  # fmt: skip
    assert "profile_shift" not in notes(result)


def test_the_members_shift_wins_with_a_one_line_warning() -> None:
    result = run(("Lightning", None), shift=5.0)
    assert isinstance(result, Validated) and result.recipe.shift == 5.0
    said = notes(result)
    assert said["profile_shift"] == "`Lightning` (Qwen-Image-Lightning 4-step) wants shift 3; running your 5."
    # The same value as the profile's: no warning.
    same = run(("Lightning", None), shift=3.0)
    assert isinstance(same, Validated) and same.recipe.shift == 3.0 and "profile_shift" not in notes(same)
    # Without a profile, the member's shift is recorded as given.
    plain = run(("Style", None), shift=2.5)
    assert isinstance(plain, Validated) and plain.recipe.shift == 2.5


@pytest.mark.parametrize("model_name", ["XL", "Dream"])
def test_shift_is_refused_on_models_without_flow_matching(model_name: str) -> None:
    result = run(model_name=model_name, shift=3.0)
    assert isinstance(result, Rejected)
    (problem,) = [p for p in result.problems if p.code == "shift_unsupported"]
    assert "flow-matching models" in problem.message and problem.fix == "Leave shift empty."
    # An SDXL speed profile brings no shift.
    lightning = run(("XL Lightning", None), model_name="XL")
    assert isinstance(lightning, Validated) and lightning.recipe.shift is None


@pytest.mark.parametrize("shift", [0.0, -1.0, 20.5, float("nan"), float("inf")])
def test_a_shift_out_of_range_is_refused(shift: float) -> None:
    result = run(("Style", None), shift=shift)
    assert isinstance(result, Rejected)
    (problem,) = [p for p in result.problems if p.code == "shift_out_of_range"]
    assert "at most 20" in problem.message
    assert isinstance(run(("Style", None), shift=20.0), Validated)
