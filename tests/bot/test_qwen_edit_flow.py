"""Qwen-Image-Edit-2509 through the bot, on the real engine process and the Discord double.

An admin adds a tiny -2509 model (the single-file transformer beside ``qwen-image-components/``
with the repository's ``processor/``) with ``/model add variant:edit_plus``: its file has
Qwen-Image's keys, so only the admin's word makes it an edit model. A member edits a picture
with two further pictures (``image2``, ``image3``): the posted PNG's recipe, and the one the bot
keeps for the post's buttons, name the input and both references by sha256, in order, and the
references change the result (the same seed with the one picture gives another image). A
Qwen-Image text-to-image LoRA on the edit model runs with a warning; FLUX.1 Kontext in the same
server refuses a second picture and queues nothing.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.jobs.speed import SpeedBook, work_steps
from bot.pictures import edits, picture_count
from engine.recipe.model import Recipe
from engine.recipe.readers import read_image
from sandbox.qwen_image_builder import QwenImageBuild, build_qwen_image_edit, write_musubi_lora
from tests.bot.conftest import World
from tests.bot.test_admin_registry import run
from tests.bot.test_buttons import recorded
from tests.bot.test_edit_flow import add_kontext, kontext_file, kontext_files
from tests.bot.test_picture_flow import images_posted, next_result, running, seen

__all__ = ["kontext_file", "kontext_files"]  # FLUX.1 Kontext beside the Qwen model, for its refusal

QWEN_EDIT = "Qwen Edit"


@pytest.fixture(scope="module")
def qwen_edit_files(tmp_path_factory: pytest.TempPathFactory) -> QwenImageBuild:
    # Seed 4, as tests/bot/test_qwen_image_flow.py: the shared components are the same bytes
    # there and here (this build adds processor/), whichever test the session engine saw first.
    return build_qwen_image_edit(tmp_path_factory.mktemp("qwen-edit-bot") / "models",
                                 pipeline="QwenImageEditPlusPipeline", seed=4)  # fmt: skip


@pytest.fixture
def qwen_edit_in_folders(demo_assets: Any, qwen_edit_files: QwenImageBuild) -> Iterator[dict[str, str]]:
    models, loras = demo_assets.model_root, demo_assets.lora_root
    placed = [models / "qwen-edit-test", models / "qwen-image-components", loras / "qwen-edit-test"]
    (models / "qwen-edit-test").mkdir()
    (loras / "qwen-edit-test").mkdir()
    shutil.copytree(qwen_edit_files.components, models / "qwen-image-components")
    assert (models / "qwen-image-components" / "processor").is_dir()
    shutil.copy(qwen_edit_files.transformer, models / "qwen-edit-test" / "qwen_image_edit_2509_bf16.safetensors")
    # A Qwen-Image text-to-image LoRA (musubi-tuner's kohya names), not made for editing.
    write_musubi_lora(qwen_edit_files.transformer, loras / "qwen-edit-test" / "ink.safetensors", seed=3)
    try:
        yield {"model": "qwen-edit-test/qwen_image_edit_2509_bf16.safetensors", "ink": "qwen-edit-test/ink.safetensors"}
    finally:
        for folder in placed:
            shutil.rmtree(folder)


def square_png(seed: int, side: int = 64) -> bytes:
    """A smooth square picture: the edit's result keeps its shape, 512x512 (Qwen-Image's least)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def pixels(message: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(message.attachments[0].data)).convert("RGB"), dtype=np.float32)


async def add_qwen_edit(world: World, file: str) -> str:
    """``/model add variant:edit_plus``, then small defaults for the tests (2 steps, 512², CFG 1).
    Two steps, not one: one step of the tiny Qwen models gives NaN."""
    text = await run(world, world.admin, "model", {"file": file, "name": QWEN_EDIT, "variant": "edit_plus"}, "add")
    entry = await world.registry.models.get(world.guild.id, QWEN_EDIT)
    assert entry is not None and (entry.architecture, entry.variant) == ("qwen_image", "edit_plus"), text
    edited = await run(world, world.admin, "model", {"name": QWEN_EDIT, "steps": 2, "size": "512x512", "cfg": 1.0},
                       "edit")  # fmt: skip
    assert "Updated" in edited, edited
    return text


async def edit(world: World, options: dict[str, Any]) -> Any:
    """``/edit`` as Alice: the posted result."""
    before = seen(world)
    handle = await world.double.slash(world.alice, world.channel, "edit", options)
    assert await handle.wait_response(3) == 5
    return await next_result(world, before, within=300)


async def test_an_admin_adds_qwen_image_edit_2509_and_a_member_edits_with_three_pictures(
    world: World, qwen_edit_in_folders: dict[str, str], kontext_file: str
) -> None:
    card = await add_qwen_edit(world, qwen_edit_in_folders["model"])
    assert "Qwen-Image-Edit-2509" in card and "edit model" in card, card
    source, hat, scarf = square_png(1), square_png(2), square_png(3)
    digests = [hashlib.sha256(data).hexdigest() for data in (source, hat, scarf)]

    three = await edit(world, {"image": ("photo.png", source), "image2": ("hat.png", hat),
                               "image3": ("scarf.png", scarf), "instruction": "put the hat and the scarf on the cat",
                               "seed": 5})  # fmt: skip
    read = read_image(three.attachments[0].data)
    assert read.found is not None and read.found.exact, read.reason
    recipe = read.found.recipe
    assert (recipe.architecture, recipe.variant, recipe.model_name) == ("qwen_image", "edit_plus", QWEN_EDIT)
    assert recipe.init_image == digests[0] and recipe.references == (digests[1], digests[2])
    assert [s.rsplit(" ", 1)[-1] for s in recipe.reference_sources] == ["(hat.png)", "(scarf.png)"]
    assert (recipe.width, recipe.height, recipe.steps, recipe.seed, recipe.strength) == (512, 512, 2, 5, 1.0)
    assert recipe.prompt == "put the hat and the scarf on the cat"
    # The recipe the bot keeps for the post's buttons says the same.
    await recorded(world, three)
    post = await world.registry.posts.get(world.guild.id, three.id)
    assert post is not None
    stored = Recipe.from_json(post.recipe)
    assert post.recipe["references"] == digests[1:]  # in order, in the JSON itself
    assert (stored.init_image, stored.references, stored.variant) == (digests[0], recipe.references, "edit_plus")

    # The same seed and instruction with the one picture: the references were read.
    one = await edit(world, {"image": ("photo.png", source), "instruction": "put the hat and the scarf on the cat",
                             "seed": 5})  # fmt: skip
    alone = read_image(one.attachments[0].data).found
    assert alone is not None and alone.recipe.references == () and alone.recipe.init_image == digests[0]
    assert np.abs(pixels(one) - pixels(three)).mean() > 0

    # A Qwen-Image text-to-image LoRA on the edit model: warned about, and it runs.
    text = await run(world, world.admin, "lora", {"file": qwen_edit_in_folders["ink"], "name": "ink"}, "add")
    lora = await world.registry.loras.get(world.guild.id, "ink")
    # Its model spec says Qwen-Image (musubi-tuner's "Qwen-Image/lora"), not an edit model.
    assert lora is not None and (lora.architecture, lora.variant) == ("qwen_image", "image"), text
    with_lora = await edit(world, {"image": ("photo.png", source), "image2": ("hat.png", hat),
                                   "instruction": "put the hat on the cat", "seed": 5, "lora1": "ink",
                                   "weight1": "0.8"})  # fmt: skip
    # The warning goes with the job: the reply is the job's status from then on (rewritten as it
    # runs), and the posted result's embed keeps it.
    shown = str(with_lora.embeds)
    assert "`ink` on `Qwen Edit`" in shown and "made for text-to-image rather than editing a reference image" in shown, shown
    ran = read_image(with_lora.attachments[0].data).found
    assert ran is not None and [ref.name for ref in ran.recipe.loras] == ["ink"] and ran.recipe.references == (digests[1],)

    # FLUX.1 Kontext in the same server takes one picture: refused by name, nothing queued.
    await add_kontext(world, kontext_file)
    before = images_posted(world)
    text = await run(world, world.alice, "edit", {"image": ("photo.png", source), "image2": ("hat.png", hat),
                                                  "instruction": "x", "model": "Kontext"})  # fmt: skip
    assert "`Kontext` (FLUX.1 Kontext) takes one picture; you gave 2" in text, text
    assert not running(world) and images_posted(world) == before
    assert world.double.violations == []


def test_a_three_picture_edit_counts_every_picture_in_its_eta() -> None:
    """ETA and fair-turn weight (bot.jobs.speed): an edit runs all its steps over the result's
    tokens and each picture's: -2509 with two references weighs steps x 4, whatever strength
    its recipe carries."""
    book = SpeedBook()
    plain = Recipe(model="q.safetensors", prompt="x", width=512, height=512, steps=20, architecture="qwen_image",
                   variant="image")  # fmt: skip
    book.record(plain, 2.0)
    one = replace(plain, variant="edit_plus", init_image="a" * 64, strength=1.0)
    three = replace(one, references=("b" * 64, "c" * 64))
    assert picture_count(three) == 3 and edits(three)
    assert work_steps(three) == 80 and book.estimate(three) == pytest.approx(8.0)
    assert book.estimate(one) == pytest.approx(4.0)
    assert book.estimate(replace(three, strength=0.25)) == pytest.approx(8.0)


def test_musubi_tuners_model_spec_names_a_qwen_loras_variant(qwen_edit_files: QwenImageBuild, tmp_path: Path) -> None:
    """musubi-tuner writes ``modelspec.architecture`` as "<model>/lora"; the edit models' names
    share words ("Qwen-Image-Edit-Plus": image, edit), so they are read as Civitai's base models."""
    from bot.registry import LoraEntry
    from bot.request.rules import variant_mismatch
    from engine.inspect import inspect_file

    found = {}
    for trained_on in ("Qwen-Image", "Qwen-Image-Edit", "Qwen-Image-Edit-Plus", "Qwen-Image-Edit-2511"):
        path = write_musubi_lora(qwen_edit_files.transformer, tmp_path / f"{trained_on}.safetensors", trained_on=trained_on)
        info = inspect_file(path, relative_to=tmp_path)
        found[trained_on] = LoraEntry.from_file_info(info, name=trained_on).variant
    assert found == {"Qwen-Image": "image", "Qwen-Image-Edit": "edit", "Qwen-Image-Edit-Plus": "edit_plus",
                     "Qwen-Image-Edit-2511": "edit_plus"}  # fmt: skip
    said = variant_mismatch("qwen_image", "edit", "edit_plus")
    assert said is not None and "trained on Qwen-Image-Edit and this model is Qwen-Image-Edit-2509" in said
    assert variant_mismatch("qwen_image", "edit_plus", "edit_plus") is None
