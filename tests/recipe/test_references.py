"""An edit's further pictures (``Recipe.references``, issue 20): through JSON, share codes and the
A1111 text, apart in the batch key, and refused where the model takes fewer pictures."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from engine import arch
from engine.protocol import EngineError, Recipe
from engine.recipe.a1111 import REFERENCES, carried, read_parameters, write_parameters
from engine.recipe.batching import batch_key
from engine.recipe.model import RecipeError
from engine.recipe.readers import read_text
from engine.recipe.share_code import ShareCodeError, decode, encode
from engine.validation import check_for_architecture, reference_problem, validate_recipe

A, B, C, D = ("a1" * 32), ("b2" * 32), ("c3" * 32), ("d4" * 32)
LINKS = ("https://discord.com/channels/1/2/30", "https://discord.com/channels/1/2/31")

EDIT = Recipe(model="qwen-image-edit-2509.safetensors", prompt="put the hat from picture 2 on the cat",
              width=64, height=64, steps=4, sampler="Euler", cfg_scale=4.0, architecture="qwen_image",
              variant="edit", init_image=A, init_image_source="https://discord.com/channels/1/2/29",
              references=(B, C), reference_sources=LINKS)  # fmt: skip
KONTEXT = replace(EDIT, model="flux1-kontext.safetensors", architecture="flux", variant="kontext")


@pytest.fixture
def three_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Qwen-Image-Edit-2509 as its runtime declares it (``max_images=3``), whether or not this
    engine's qwen_image module says so yet."""
    spec = arch.get("qwen_image")
    assert spec is not None
    monkeypatch.setitem(spec.variants, "edit", replace(spec.variants["edit"], max_images=3))


def test_references_go_through_json_and_share_codes_in_order() -> None:
    data = json.loads(json.dumps(EDIT.to_json()))
    assert data["references"] == [B, C] and data["reference_sources"] == list(LINKS)
    assert Recipe.from_json(data) == EDIT
    assert decode(encode(EDIT)) == EDIT
    swapped = replace(EDIT, references=(C, B), reference_sources=LINKS[::-1])
    assert decode(encode(swapped)) == swapped != EDIT
    # A recipe stored before references existed still loads, with none.
    old = {k: v for k, v in EDIT.to_json().items() if k not in ("references", "reference_sources")}
    assert Recipe.from_json(old) == replace(EDIT, references=(), reference_sources=())
    # A recipe without references writes no key for them in its code.
    plain = replace(EDIT, references=(), reference_sources=())
    assert decode(encode(plain)) == plain and len(encode(plain)) < len(encode(EDIT))


def test_malformed_references_are_refused_when_read() -> None:
    with pytest.raises(RecipeError, match="references must be a list of strings"):
        Recipe.from_json({**EDIT.to_json(), "references": [B, 7]})
    with pytest.raises(RecipeError, match="reference_sources must be a list of strings"):
        Recipe.from_json({**EDIT.to_json(), "reference_sources": "https://discord.com/channels/1/2/3"})
    import base64
    import zlib

    body = json.dumps({"m": "m", "p": "p", "ii": A, "r": [B, 3]}).encode()
    code = "AT1." + base64.urlsafe_b64encode(zlib.compress(body)).decode().rstrip("=")
    with pytest.raises(ShareCodeError, match="references has the wrong type"):
        decode(code)


def test_the_a1111_text_names_references_by_short_hash_and_reads_them_back() -> None:
    text = write_parameters(EDIT, version="t")
    assert f'{REFERENCES}: "{B[:10]}, {C[:10]}"' in text
    read = read_parameters(text)
    assert read.references == (B[:10], C[:10])
    # Like the input image, the pictures are not in the text: the recipe read holds none.
    assert read.recipe == carried(EDIT) and read.recipe.references == () and REFERENCES not in read.extras
    plain = replace(EDIT, references=(), reference_sources=())
    assert REFERENCES not in write_parameters(plain, version="t")
    assert read_parameters(write_parameters(plain, version="t")).references == ()
    # An importer tells the member what was left out.
    found = read_text(text, source="parameters")
    assert found is not None
    assert any("2 more reference pictures" in note for note in found.notes), found.notes


def test_different_references_never_share_a_batch() -> None:
    assert batch_key(EDIT) != batch_key(replace(EDIT, references=(B,)))
    assert batch_key(EDIT) != batch_key(replace(EDIT, references=(C, B)))
    assert batch_key(EDIT) != batch_key(replace(EDIT, references=(B, D)))
    # Where they came from is not what runs: the same pictures batch together.
    assert batch_key(EDIT) == batch_key(replace(EDIT, reference_sources=()))


def test_references_are_validated(three_pictures: None) -> None:
    validate_recipe(EDIT)
    check_for_architecture(EDIT, "qwen_image", "qwen-image-edit-2509")
    with pytest.raises(EngineError, match="64 hex digits each"):
        validate_recipe(replace(EDIT, references=(B, "not-a-hash")))
    with pytest.raises(EngineError, match="64 hex digits each"):
        validate_recipe(replace(EDIT, references=(B[:10],)))
    with pytest.raises(EngineError, match="at most one link per reference"):
        validate_recipe(replace(EDIT, references=(B,)))
    with pytest.raises(EngineError, match=r"need an input picture \(init_image\) first"):
        validate_recipe(replace(EDIT, init_image="", init_image_source=""))
    four = replace(EDIT, references=(B, C, D), reference_sources=())
    with pytest.raises(EngineError, match="takes at most 3 pictures .* this recipe has 4: leave out 1"):
        validate_recipe(four)
    with pytest.raises(EngineError, match="at most 3 pictures"):
        check_for_architecture(four, "qwen_image", "qwen-image-edit-2509")


def test_kontext_and_text_to_image_models_take_no_references() -> None:
    problem = reference_problem(KONTEXT)
    assert problem is not None and problem.startswith("FLUX.1 Kontext takes one picture, the one it edits")
    with pytest.raises(EngineError, match="FLUX.1 Kontext takes one picture"):
        validate_recipe(KONTEXT)
    # The file's architecture decides where the engine knows it.
    with pytest.raises(EngineError, match="FLUX.1 Kontext takes one picture"):
        check_for_architecture(replace(KONTEXT, architecture=""), "flux", "flux1-kontext")
    sd = replace(EDIT, architecture="sd15", variant="", sampler="Euler a")
    with pytest.raises(EngineError, match="SD 1.5 models take one input picture and no reference pictures"):
        validate_recipe(sd)
    # Without references every model is as before.
    assert reference_problem(replace(KONTEXT, references=(), reference_sources=())) is None
    validate_recipe(replace(KONTEXT, references=(), reference_sources=()))


def test_reroll_and_remix_keep_the_references_and_a_new_start_picture_drops_them() -> None:
    """bot.pictures.PictureChoice is what Reroll, Remix and a recipe code carry over
    (bot.ui.actions): the references go with the input they belong to; Vary and "Use as starting
    image" start from a new picture alone."""
    from bot.pictures import PictureChoice

    choice = PictureChoice.of(EDIT)
    assert choice is not None
    again = choice.apply(replace(EDIT, init_image="", references=(), reference_sources=(), seed=99))
    assert (again.init_image, again.references, again.reference_sources) == (A, (B, C), LINKS)
    fresh = PictureChoice(init_image=D, init_image_source="https://discord.com/channels/1/2/40").apply(EDIT)
    assert fresh.init_image == D and fresh.references == () and fresh.reference_sources == ()
