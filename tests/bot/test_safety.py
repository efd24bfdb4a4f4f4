"""bot.operator.safety with the real NudeNet on real results, the policy around it, and the blocklist."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.operator.safety import (
    ImageSafety,
    NudeNetClassifier,
    Verdict,
    blocked_terms_in,
    load_classifier,
)
from bot.registry import ImageCheck, RegistryError, ServerSettings
from bot.registry.checks import clean_settings
from engine.client import EngineClient
from engine.protocol import Recipe
from tests.conftest import ENGINE_TOKEN


def _png(colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_nudenet_runs_on_a_real_result(engine_url: str, demo_assets: Any) -> None:
    """The real detector (its ONNX model ships in the wheel) on an image the engine made."""
    async with EngineClient(engine_url, token=ENGINE_TOKEN) as engine:
        recipe = Recipe(model=demo_assets.models["sd15"], prompt="a lighthouse", steps=2, width=128, height=128)
        (image,) = await engine.run("safety-real", recipe)
    classifier = load_classifier("nudenet")
    assert isinstance(classifier, NudeNetClassifier)
    verdict = classifier.classify(image)
    assert verdict == Verdict(False)  # an abstract tiny-model image: nothing explicit
    # The real network, not a stand-in: the 12 MB ONNX model from the wheel, in a live session.
    import nudenet

    assert Path(nudenet.__file__).with_name("320n.onnx").stat().st_size > 10_000_000
    detector = classifier._get()
    assert detector.onnx_session.get_inputs()  # type: ignore[attr-defined]
    assert isinstance(detector.detect(image), list)  # type: ignore[attr-defined]
    screened = await ImageSafety(classifier).screen([image], action=ImageCheck.WITHHOLD, nsfw_allowed_here=False)
    assert [(i, data) for i, data, _ in screened.files] == [(0, image)] and screened.notes == []


class _Flags:
    name = "stand-in"

    def __init__(self, flags: list[bool]) -> None:
        self.flags = flags

    def classify(self, image: bytes) -> Verdict:
        return Verdict(self.flags.pop(0), ("BUTTOCKS_EXPOSED",), 0.8)


class _Broken:
    name = "broken"

    def classify(self, image: bytes) -> Verdict:
        raise RuntimeError("onnxruntime went away")


async def test_the_policy_withholds_spoilers_or_posts() -> None:
    images = [_png(), _png((1, 2, 3)), _png((9, 9, 9))]
    withheld = await ImageSafety(_Flags([False, True, False])).screen(images, action="withhold", nsfw_allowed_here=False)
    assert [i for i, _, _ in withheld.files] == [0, 2] and withheld.withheld == 1
    assert "1 of 3 images was not posted" in withheld.notes[0]
    spoiled = await ImageSafety(_Flags([True, False, False])).screen(images, action="spoiler", nsfw_allowed_here=False)
    assert [s for _, _, s in spoiled.files] == [True, False, False] and "spoiler" in spoiled.notes[0]
    untouched = await ImageSafety(_Flags([])).screen(images, action="withhold", nsfw_allowed_here=True)
    assert len(untouched.files) == 3  # the classifier was not even asked (its list is empty)
    off = await ImageSafety(_Flags([])).screen(images, action="off", nsfw_allowed_here=False)
    assert len(off.files) == 3
    # A classifier that fails keeps the channel clean rather than posting unchecked.
    broken = await ImageSafety(_Broken()).screen(images[:1], action="withhold", nsfw_allowed_here=False)
    assert broken.files == [] and "the image check failed" in broken.notes[0]


def test_load_classifier_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_classifier("off") is None
    assert isinstance(load_classifier("auto"), NudeNetClassifier)
    import sys

    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if not installed
    assert load_classifier("auto") is None
    with pytest.raises(RuntimeError, match=r"atelier\[safety\]"):
        load_classifier("nudenet")


def test_blocklist_matches_whole_words_however_written() -> None:
    terms = clean_settings(ServerSettings(blocked_words=("Gore", "blood bath", "nud*", "gore"))).blocked_words
    assert terms == ("gore", "blood bath", "nud*")
    assert blocked_terms_in("GORE and a blood\tbath", terms) == ["gore", "blood bath"]
    assert blocked_terms_in("ｎｕｄｅ figure", terms) == ["nud*"]  # full-width letters
    assert blocked_terms_in("nu\u200bde figure", terms) == ["nud*"]  # a zero-width space inside
    assert blocked_terms_in("gorgeous, gored?", terms) == []
    with pytest.raises(RegistryError, match="at most 200"):
        clean_settings(ServerSettings(blocked_words=tuple(f"w{i}" for i in range(201))))
    with pytest.raises(RegistryError, match="image check"):
        clean_settings(ServerSettings(image_check="blur"))


def test_bounds_never_exceed_the_engines() -> None:
    from bot.ui.cogs.settings import settings as settings_command
    from engine.validation import DEFAULT_LIMITS

    bounds = {p.name: p.max_value for p in settings_command.parameters if p.max_value is not None}
    assert bounds["cfg_max"] == DEFAULT_LIMITS.max_cfg == 30
    assert bounds["size_max"] == DEFAULT_LIMITS.max_side == 2048
    assert bounds["steps_max"] == DEFAULT_LIMITS.max_steps
    with pytest.raises(RegistryError, match="0 to 30"):
        clean_settings(ServerSettings(cfg_max=31))
    with pytest.raises(RegistryError, match="2048"):
        clean_settings(ServerSettings(size_max=2056))


