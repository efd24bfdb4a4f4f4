"""Edit models through the bot (issue 20): FLUX.1 Kontext on the real engine and the Discord double.

An admin registers a tiny FLUX.1 transformer as Kontext (``/model add variant:kontext``: its
file has dev's keys, so only the admin's word makes it an edit model); a member edits a PNG
with ``/edit``, and the result's recipe, read back from its PNG, names the input by sha256 and
says Kontext. Reroll keeps the input; "Edit this image" runs on another member's message through
its modal; ``/imagine image:`` on Kontext is an edit and says so. Each refusal (a text-to-image
model, too many pictures, no picture, no edit model here, a variant of another architecture)
gets its message and queues nothing. An edit's ETA counts all its steps over twice the tokens.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.jobs.speed import SpeedBook
from engine.protocol import Recipe
from sandbox.flux_builder import FluxBuild, build_flux
from tests.bot.conftest import SD15, World, png_parameters
from tests.bot.test_admin_registry import answer, run
from tests.bot.test_buttons import recorded
from tests.bot.test_picture_flow import (
    images_posted,
    next_result,
    recipe_of,
    running,
    seen,
    smooth_png,
)

KONTEXT = "Kontext"


@pytest.fixture(scope="module")
def kontext_files(tmp_path_factory: pytest.TempPathFactory) -> FluxBuild:
    # A Kontext transformer has dev's keys and shapes: the tiny dev build stands in for one.
    return build_flux(tmp_path_factory.mktemp("kontext-bot"), "dev", seed=8)


@pytest.fixture
def kontext_file(demo_assets: Any, kontext_files: FluxBuild) -> Iterator[str]:
    """The transformer (and FLUX's shared components) in the session engine's model folder."""
    models = demo_assets.model_root
    placed = [models / "kontext-test", models / "flux-components"]
    for folder in placed:
        folder.mkdir()
    for part in (kontext_files.vae, kontext_files.clip_l, kontext_files.t5):
        shutil.copy(part, models / "flux-components" / part.name)
    shutil.copy(kontext_files.transformer, models / "kontext-test" / "flux1-kontext-dev.safetensors")
    shutil.copy(kontext_files.transformer, models / "kontext-test" / "flux1-kontext-other.safetensors")
    try:
        yield "kontext-test/flux1-kontext-dev.safetensors"
    finally:
        for folder in placed:
            shutil.rmtree(folder)


async def add_kontext(world: World, file: str) -> str:
    """``/model add variant:kontext``, then small defaults for the tests (2 steps, 256²)."""
    text = await run(world, world.admin, "model", {"file": file, "name": KONTEXT, "variant": "kontext"}, "add")
    entry = await world.registry.models.get(world.guild.id, KONTEXT)
    assert entry is not None and entry.architecture == "flux" and entry.variant == "kontext", text
    assert entry.default_steps == 28 and entry.default_cfg == 3.5, entry  # Kontext's defaults
    edited = await run(world, world.admin, "model", {"name": KONTEXT, "steps": 2, "size": "256x256"}, "edit")
    assert "Updated" in edited, edited
    return text


async def lineage_of(world: World, message: Any, origin: str) -> Any:
    """The post's lineage once recorded: the bot stores the post, then its lineage, a moment
    after the double shows the message."""
    await recorded(world, message)
    for _ in range(100):
        lineage = await world.registry.book.lineage(world.guild.id, message.id)
        if lineage is not None and lineage.origin == origin:
            return lineage
        await asyncio.sleep(0.05)
    return await world.registry.book.lineage(world.guild.id, message.id)


def embed_text(message: Any) -> str:
    return str(message.embeds)


async def test_an_admin_adds_kontext_and_members_edit_with_the_command_and_the_menu(
    world: World, kontext_file: str
) -> None:
    card = await add_kontext(world, kontext_file)
    assert "Variant: FLUX.1 Kontext · edit model" in card, card

    # /edit: the picture and an instruction; the result keeps the picture's shape (96x64 -> 3:2
    # at the model's 256² area, the short side up to the server's 256, sides multiples of 16).
    source = smooth_png(1)
    before = seen(world)
    handle = await world.double.slash(world.alice, world.channel, "edit",
                                      {"image": ("photo.png", source), "instruction": "make the sky red", "seed": 5})  # fmt: skip
    assert await handle.wait_response(3) == 5
    first = await next_result(world, before)
    recipe = recipe_of(first)
    digest = hashlib.sha256(source).hexdigest()
    assert recipe.init_image == digest and recipe.variant == "kontext" and recipe.architecture == "flux"
    assert recipe.prompt == "make the sky red" and recipe.model_name == KONTEXT
    assert (recipe.width, recipe.height, recipe.steps, recipe.seed, recipe.strength) == (384, 256, 2, 5, 1.0)
    assert recipe.init_image_source.startswith(f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/")
    parameters = png_parameters(first.attachments[0].data)
    assert "Edit of: " in parameters and "Denoising strength" not in parameters, parameters
    assert "Edit of" in embed_text(first) and "photo.png" in embed_text(first)
    lineage = await lineage_of(world, first, "edit")
    assert lineage is not None and lineage.origin == "edit"

    # Reroll keeps the input picture (and credits its parent).
    before = seen(world)
    click = await world.double.click(world.bob, first, "atelier:img:reroll")
    assert await click.wait_response(3) == 5
    rerolled = await next_result(world, before)
    again = recipe_of(rerolled)
    assert again.init_image == digest and again.variant == "kontext" and again.seed != 5
    lineage = await lineage_of(world, rerolled, "reroll")
    assert lineage is not None and lineage.parent_message_id == first.id

    # "Edit this image" on another member's message, through its modal (one edit model: the
    # modal asks only for the instruction).
    posted = await world.double.send_user_message(world.bob, world.channel, "my sketch", files=[("sketch.png", smooth_png(2))])
    menu = await world.double.message_command(world.alice, posted, "Edit this image")
    await menu.wait_until(lambda: menu.modal is not None, 5, "the edit modal")
    assert menu.modal is not None and len(menu.modal["components"]) == 1
    assert menu.modal["components"][0]["components"][0]["custom_id"] == "instruction"
    before = seen(world)
    submit = await world.double.submit_modal(world.alice, menu, {"instruction": "turn the house into a boat"})
    assert await submit.wait_response(3) == 5
    edited = await next_result(world, before)
    made = recipe_of(edited)
    assert made.init_image == hashlib.sha256(smooth_png(2)).hexdigest() and made.variant == "kontext"
    assert made.prompt == "turn the house into a boat"
    assert made.init_image_source == f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/{posted.id}"
    assert "Edit of this image" in embed_text(edited) and str(posted.id) in embed_text(edited)
    lineage = await lineage_of(world, edited, "edit")
    assert lineage is not None and lineage.parent_message_id == posted.id and lineage.origin == "edit"

    # A second edit model: /edit's model option offers only the two, and the menu (here on the
    # bot's own post) asks which, prefilled with the first.
    text = await run(world, world.admin, "model", {"file": "kontext-test/flux1-kontext-other.safetensors",
                                                   "name": "Kontext B", "variant": "kontext"}, "add")  # fmt: skip
    assert "Registered **Kontext B**" in text, text
    await run(world, world.admin, "model", {"name": "Kontext B", "steps": 2, "size": "256x256"}, "edit")
    offered = await world.double.autocomplete(world.alice, world.channel, "edit", {"model": ""}, "model")
    assert sorted(c["value"] for c in offered) == [KONTEXT, "Kontext B"], offered
    menu = await world.double.message_command(world.bob, first, "Edit this image")
    await menu.wait_until(lambda: menu.modal is not None, 5, "the edit modal")
    assert menu.modal is not None
    prefilled = {row["components"][0]["custom_id"]: row["components"][0].get("value") for row in menu.modal["components"]}
    assert prefilled == {"instruction": None, "model": KONTEXT}, prefilled
    before = seen(world)
    submit = await world.double.submit_modal(world.bob, menu, {"instruction": "add snow", "model": "Kontext B"})
    assert await submit.wait_response(3) == 5
    second = recipe_of(await next_result(world, before))
    assert second.model_name == "Kontext B" and second.init_image == hashlib.sha256(first.attachments[0].data).hexdigest()
    assert second.init_image_source.endswith(f"/{first.id}")

    # /imagine image: on an edit model is an edit too: all steps, the prompt as instruction, said so.
    before = seen(world)
    handle = await world.double.slash(world.alice, world.channel, "imagine", {
        "model": KONTEXT, "prompt": "add a moon", "image": ("photo.png", source), "strength": 0.5, "size": "256x256",
    })  # fmt: skip
    assert await handle.wait_response(3) == 5
    imagined = await next_result(world, before)
    ran = recipe_of(imagined)
    assert ran.init_image == digest and ran.strength == 1.0 and ran.variant == "kontext"
    assert "is an edit model: the prompt was the instruction" in embed_text(imagined)
    assert world.double.violations == []


async def test_each_refusal_gets_its_message_and_queues_nothing(world: World, kontext_file: str) -> None:
    posted = await world.double.send_user_message(world.bob, world.channel, "pic", files=[("p.png", smooth_png(4))])
    before = images_posted(world)
    picture = ("photo.png", smooth_png(3))
    # No edit model in this server yet: /edit and the menu both say what to do.
    text = await run(world, world.alice, "edit", {"image": picture, "instruction": "x"})
    assert "No edit model is registered in this server" in text and "variant" in text, text
    menu = await world.double.message_command(world.alice, posted, "Edit this image")
    assert "No edit model is registered" in await answer(menu)

    # A variant of another architecture is refused at registration, naming the file's own.
    text = await run(world, world.admin, "model", {"file": kontext_file, "name": "Wrong", "variant": "turbo"}, "add")
    assert "is a FLUX.1 model, so `turbo` is not one of its variants" in text and "FLUX.1 Kontext" in text, text
    assert await world.registry.models.get(world.guild.id, "Wrong") is None
    await add_kontext(world, kontext_file)
    # /edit's LoRAs are those of its edit model, not of the server's default (SD 1.5) model.
    assert await world.double.autocomplete(world.alice, world.channel, "imagine", {"lora1": "water"}, "lora1")
    assert await world.double.autocomplete(world.alice, world.channel, "edit", {"lora1": "water"}, "lora1") == []

    # A text-to-image model named in /edit.
    text = await run(world, world.alice, "edit", {"image": picture, "instruction": "x", "model": SD15})
    assert f"`{SD15}` is a text-to-image model; /edit needs an edit model such as FLUX.1 Kontext" in text, text
    assert "/imagine image:" in text
    # More pictures than Kontext takes.
    text = await run(world, world.alice, "edit", {"image": picture, "image2": ("b.png", smooth_png(5)), "instruction": "x"})
    assert "takes one picture; you gave 2" in text, text
    # An edit model without a picture.
    text = await run(world, world.alice, "imagine", {"model": KONTEXT, "prompt": "a fox", "size": "256x256"})
    assert f"`{KONTEXT}` is an edit model" in text and "/edit" in text, text
    assert not running(world) and images_posted(world) == before


def test_an_edit_counts_all_its_steps_over_the_picture_tokens_too() -> None:
    """ETA and fair-turn weight: image-to-image runs strength x steps, an edit all its steps
    over twice Kontext's sequence (the result's tokens and the picture's)."""
    book = SpeedBook()
    plain = Recipe(model="k.safetensors", prompt="x", width=256, height=256, steps=20, architecture="flux", variant="dev")
    book.record(plain, 2.0)
    img2img = replace(plain, init_image="a" * 64, strength=0.5)
    edit = replace(plain, variant="kontext", init_image="a" * 64, strength=0.5)
    assert book.estimate(img2img) == pytest.approx(1.0)
    assert book.estimate(edit) == pytest.approx(4.0)
    # Without a picture a Kontext recipe is not an edit (and is refused before it is queued).
    assert book.estimate(replace(edit, init_image="")) == pytest.approx(2.0)


def test_a_kontext_file_is_registered_with_the_admins_variant(tmp_path: Path) -> None:
    """The registry's defaults follow the chosen variant, not the file's (which says dev)."""
    from bot.registry import ModelEntry
    from engine.inspect import inspect_file

    build = build_flux(tmp_path, "schnell", seed=1)
    info = inspect_file(build.transformer, relative_to=tmp_path)
    assert info.variant == "schnell"
    entry = ModelEntry.from_file_info(info, name="k", variant="kontext")
    assert (entry.variant, entry.default_steps, entry.default_cfg) == ("kontext", 28, 3.5)
    assert ModelEntry.from_file_info(info, name="s").default_steps == 4


def test_an_edit_says_what_it_edited_where_a_recipe_is_shown() -> None:
    """The result's embed, the recipe card and A1111's text name the source; image-to-image
    of the same picture keeps its strength and says nothing of an edit."""
    from bot.ui.embeds import recipe_card, recipe_embed
    from engine.recipe.a1111 import write_parameters

    link = "https://discord.com/channels/1/2/3"
    edit = Recipe(model="k.safetensors", prompt="make it snow", width=256, height=256, steps=2, architecture="flux",
                  variant="kontext", init_image="a" * 64, init_image_source=link, strength=1.0)  # fmt: skip
    img2img = replace(edit, variant="dev", strength=0.5)
    for embed in (recipe_embed(edit), recipe_card(edit, title="t", author_id=None, shared_by=None, code="AT1.x")):
        assert {"name": "Edit of", "value": link, "inline": False} in embed.to_dict()["fields"]
    for embed in (recipe_embed(img2img), recipe_card(img2img, title="t", author_id=None, shared_by=None, code="AT1.x")):
        assert all(f["name"] != "Edit of" for f in embed.to_dict()["fields"])
    assert f'Edit of: "{link}"' in write_parameters(edit) and "Denoising strength" not in write_parameters(edit)
    assert "Denoising strength: 0.5" in write_parameters(img2img) and "Edit of" not in write_parameters(img2img)


def test_an_edits_size_keeps_the_pictures_shape_within_the_servers_sides() -> None:
    from bot.registry import ModelEntry
    from bot.ui.pictures import edit_size

    model = ModelEntry(name="k", architecture="flux", file="k.safetensors", default_width=1024, default_height=1024,
                       variant="kontext")  # fmt: skip
    assert edit_size(model, 1200, 800) == (1248, 832)  # 3:2 at about 1024², multiples of 16
    assert edit_size(model, 500, 500) == (1024, 1024)
    # A panorama is held at 2.5:1, and the long side within the server's largest.
    width, height = edit_size(model, 4000, 500, side_min=256, side_max=1280) or (0, 0)
    assert width == 1280 and height == 512


async def test_model_edit_variant_is_checked_and_moves_untouched_defaults(world: World, kontext_file: str) -> None:
    text = await run(world, world.admin, "model", {"file": kontext_file, "name": KONTEXT}, "add")
    entry = await world.registry.models.get(world.guild.id, KONTEXT)
    assert entry is not None and entry.variant == "dev" and entry.default_steps == 28, text  # the file says dev
    text = await run(world, world.admin, "model", {"name": KONTEXT, "variant": "turbo"}, "edit")
    assert "so `turbo` is not one of its variants" in text and "Nothing was changed" in text, text
    text = await run(world, world.admin, "model", {"name": KONTEXT, "variant": "schnell"}, "edit")
    entry = await world.registry.models.get(world.guild.id, KONTEXT)
    assert entry is not None and (entry.variant, entry.default_steps, entry.default_cfg) == ("schnell", 4, 1.0), text
    await run(world, world.admin, "model", {"name": KONTEXT, "steps": 6}, "edit")
    text = await run(world, world.admin, "model", {"name": KONTEXT, "variant": "kontext"}, "edit")
    assert "Variant: FLUX.1 Kontext · edit model" in text, text
    entry = await world.registry.models.get(world.guild.id, KONTEXT)
    assert entry is not None and (entry.variant, entry.default_steps, entry.default_cfg) == ("kontext", 6, 3.5)


async def test_picture_refusals_of_an_edit_model() -> None:
    """Asked before any job is queued: an edit model without a picture, an upscale pass after
    an edit (Upscale ×2 under an edit's result); image-to-image on a model without it."""
    from bot.pictures import picture_refusal

    kontext = Recipe(model="k.safetensors", model_name="K", prompt="x", architecture="flux", variant="kontext")
    assert "`K` is an edit model" in (await picture_refusal(None, kontext) or "")
    upscale = replace(kontext, init_image="a" * 64, hires_scale=2.0)
    assert "upscale pass does not run after an edit" in (await picture_refusal(None, upscale) or "")
    qwen = Recipe(model="q.safetensors", model_name="Q", prompt="x", architecture="qwen_image", init_image="a" * 64)
    assert "do not run image-to-image" in (await picture_refusal(None, qwen) or "")
    # A plain recipe has nothing to refuse (and reaches no store).
    assert await picture_refusal(None, replace(kontext, variant="dev")) is None
