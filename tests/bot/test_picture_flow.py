"""A picture in, a picture out (issue 20), through the Discord double and the real engine.

A member attaches a PNG to ``/imagine``; Vary (subtle) and Upscale x2 run on the result; the
"Use as starting image" context menu runs on another member's message. Each result's recipe
is read back from its PNG with the input's sha256. After the member's ``/privacy`` deletion
a re-run from the recipe is refused, saying the input is gone. Bad files each get their
message before any GPU time.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.protocol import Recipe
from engine.recipe.readers import read_image
from engine.recipe.share_code import encode
from sandbox.discord_double import StoredMessage
from tests.bot.conftest import FAST, World, png_parameters
from tests.bot.test_admin_registry import answer
from tests.bot.test_buttons import recorded


def smooth_png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))  # fmt: skip


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), (30, 90, 160)).save(out, "JPEG")
    return out.getvalue()


async def next_result(world: World, before: set[int], within: float = 120) -> StoredMessage:
    return await world.double.wait_for_message(
        world.channel, lambda m: bool(m.attachments) and not m.ephemeral and m.id not in before and m.author.bot,
        within=within,
    )


def seen(world: World) -> set[int]:
    return {m.id for m in world.double.messages(world.channel)}


def running(world: World) -> list[Any]:
    return [job for job in world.bot.dispatcher.jobs.values() if not job.state.final]


def images_posted(world: World) -> set[int]:
    return {m.id for m in world.double.messages(world.channel) if m.attachments and not m.ephemeral}


async def all_told(handle: Any, *, at_least: int = 1, within: float = 30) -> str:
    """Everything the member was told privately in answer to ``handle``."""
    await handle.wait_until(lambda: len(handle.followups) >= at_least, within, "the bot's private answers")
    texts = [handle.original.content] if handle.original is not None else []
    return "\n".join(texts + [m.content for m in handle.followups])


def recipe_of(message: StoredMessage) -> Recipe:
    found = read_image(message.attachments[0].data).found
    assert found is not None and found.exact
    return found.recipe


async def test_a_png_in_imagine_then_vary_upscale_and_the_context_menu(world: World) -> None:
    source = smooth_png(1)
    before = seen(world)
    handle = await world.double.slash(world.alice, world.channel, "imagine", {
        **FAST, "prompt": "a lighthouse", "seed": 5, "image": ("photo.png", source), "strength": 0.5,
    })  # fmt: skip
    assert await handle.wait_response(3) == 5
    first = await next_result(world, before)
    recipe = recipe_of(first)
    digest = hashlib.sha256(source).hexdigest()
    assert recipe.init_image == digest and recipe.strength == 0.5 and recipe.resize_mode == "crop_and_resize"
    assert recipe.init_image_source.startswith(f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/")
    parameters = png_parameters(first.attachments[0].data)
    assert "Denoising strength: 0.5" in parameters and "Resize mode: Crop and resize" in parameters
    await recorded(world, first)
    # The input is kept beside the database, by its hash.
    assert (world.db_path.parent / "inputs" / f"{digest}.img").read_bytes() == source

    # Vary (subtle): image-to-image of the result itself, new seed, crediting its parent.
    before = seen(world)
    click = await world.double.click(world.bob, first, "atelier:pic:vary_subtle")
    assert await click.wait_response(3) == 5
    varied = await next_result(world, before)
    vary = recipe_of(varied)
    assert vary.init_image == hashlib.sha256(first.attachments[0].data).hexdigest()
    assert vary.strength == 0.35 and vary.seed != recipe.seed and vary.init_image_source.endswith(str(first.id))
    assert "Vary (subtle) of this image" in str(varied.embeds) and str(first.id) in str(varied.embeds)
    await recorded(world, varied)
    lineage = await world.registry.book.lineage(world.guild.id, varied.id)
    assert lineage is not None and lineage.parent_message_id == first.id and lineage.origin == "vary_subtle"

    # Upscale x2: the same recipe, a hires pass; the PNG is twice the size.
    before = seen(world)
    click = await world.double.click(world.bob, first, "atelier:pic:upscale")
    assert await click.wait_response(3) == 5
    upscaled = await next_result(world, before)
    assert Image.open(io.BytesIO(upscaled.attachments[0].data)).size == (512, 512)
    up = recipe_of(upscaled)
    assert (up.hires_scale, up.hires_strength, up.hires_upscaler, up.seed) == (2.0, 0.4, "Lanczos", recipe.seed)
    assert up.init_image == digest  # the same recipe: its input too
    assert "Hires upscale: 2" in png_parameters(upscaled.attachments[0].data)

    # "Use as starting image" on another member's message, through its modal.
    posted = await world.double.send_user_message(world.bob, world.channel, "my sketch", files=[("sketch.png", smooth_png(2))])
    menu = await world.double.message_command(world.alice, posted, "Use as starting image")
    await menu.wait_until(lambda: menu.modal is not None, 5, "the starting-image modal")
    before = seen(world)
    submit = await world.double.submit_modal(world.alice, menu, {"prompt": "a watercolour harbour", "strength": "0.7"})
    assert await submit.wait_response(3) == 5
    started = await next_result(world, before)
    start = recipe_of(started)
    assert start.init_image == hashlib.sha256(smooth_png(2)).hexdigest() and start.strength == 0.7
    assert start.init_image_source == f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/{posted.id}"
    assert world.double.violations == []


async def test_a_recipe_whose_input_was_deleted_is_refused(world: World) -> None:
    source = smooth_png(3)
    before = seen(world)
    await world.double.slash(world.alice, world.channel, "imagine",
                             {**FAST, "prompt": "a fox", "image": ("fox.png", source), "strength": 0.4})  # fmt: skip
    result = await next_result(world, before)
    await recorded(world, result)
    code = encode(recipe_of(result))
    # /privacy delete takes the member's inputs with it.
    ask = await world.double.slash(world.alice, world.channel, "privacy", {}, subcommand="delete")
    asked = await ask.wait_followup()
    confirm = await world.double.click(world.alice, asked, f"atelier:privacy:delete:{world.alice.user.id}:0")
    told = await answer(confirm)
    assert "1 input image(s)" in told, told
    assert not (world.db_path.parent / "inputs" / f"{hashlib.sha256(source).hexdigest()}.img").exists()
    before = images_posted(world)
    rerun = await world.double.slash(world.bob, world.channel, "imagine", {"recipe": code})
    text = await answer(rerun)
    assert "no longer kept" in text and "Attach the image again" in text, text
    assert not running(world) and images_posted(world) == before  # nothing queued, nothing posted


async def test_bad_files_each_get_their_message(world: World) -> None:
    cases = {
        "cut.png": (smooth_png(4, (64, 64))[:100], "damaged or cut short"),
        "huge.png": (bomb_png(), "30000x30000 pixels"),
        "party.gif": (b"GIF89a" + b"\0" * 64, "GIF file; inputs must be PNG, JPEG or WebP"),
        "empty.png": (b"", "empty (0 bytes)"),
        # Past the server's upload limit (the interaction's attachment_size_limit, 10 MiB here):
        # refused from the attachment's size, before any download.
        "poster.png": (b"\x89PNG\r\n\x1a\n" + bytes(11 * 2**20), "input images may be at most 10 MiB"),
    }
    before = images_posted(world)
    for name, (data, message) in cases.items():
        handle = await world.double.slash(world.alice, world.channel, "imagine",
                                          {**FAST, "prompt": "x", "image": (name, data)})  # fmt: skip
        text = await answer(handle)
        assert message in text, (name, text)
    assert not running(world) and images_posted(world) == before  # none of them queued anything
    # A JPEG named .png is read by its content: it runs, and the member is told.
    handle = await world.double.slash(world.alice, world.channel, "imagine",
                                      {**FAST, "prompt": "x", "image": ("renamed.png", jpeg())})  # fmt: skip
    told = await all_told(handle, at_least=2)
    assert "really a JPEG" in told, told
    result = await next_result(world, before)
    assert recipe_of(result).init_image == hashlib.sha256(jpeg()).hexdigest()
    # strength without an image is refused.
    handle = await world.double.slash(world.alice, world.channel, "imagine", {**FAST, "prompt": "x", "strength": 0.3})
    assert "go with `image`" in await answer(handle)


async def test_an_input_the_image_check_flags_is_refused_before_any_gpu_time(world: World) -> None:
    """The server's image check (withhold, the default) applies to inputs: a flagged input in a
    channel that is not age-restricted is neither kept nor queued. The classifier is the safety
    tests' stand-in (tests/bot/test_safety.py), which flags what it is told to."""
    from tests.bot.test_safety import _Flags

    world.bot.safety.classifier = _Flags([True])
    try:
        source = smooth_png(9)
        before = images_posted(world)
        handle = await world.double.slash(world.alice, world.channel, "imagine",
                                          {**FAST, "prompt": "x", "image": ("input.png", source)})  # fmt: skip
        text = await answer(handle)
    finally:
        world.bot.safety.classifier = None
    assert "image check flagged it" in text and "age-restricted" in text, text
    assert not running(world) and images_posted(world) == before
    assert not (world.db_path.parent / "inputs" / f"{hashlib.sha256(source).hexdigest()}.img").exists()


async def test_a_recipe_whose_reference_picture_was_deleted_is_refused(world: World) -> None:
    """An edit's further pictures (``Recipe.references``) are kept like its input: each must still
    be here, and a member's ``/privacy`` deletion takes theirs with it."""
    before = seen(world)
    await world.double.slash(world.alice, world.channel, "imagine",
                             {**FAST, "prompt": "a fox", "image": ("fox.png", smooth_png(5)), "strength": 0.4})  # fmt: skip
    result = await next_result(world, before)
    await recorded(world, result)
    # Bob brought the reference picture in (as /edit keeps its image2).
    link = f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/1"
    hat = await world.bot.pictures.add(smooth_png(6), guild_id=world.guild.id, user_id=world.bob.user.id, source=link)
    code = encode(replace(recipe_of(result), references=(hat,), reference_sources=(link,)))
    # Every picture kept: the model's own rule answers, before any GPU time.
    before = images_posted(world)
    text = await answer(await world.double.slash(world.alice, world.channel, "imagine", {"recipe": code}))
    assert "SD 1.5 models take one input picture and no reference pictures" in text, text
    ask = await world.double.slash(world.bob, world.channel, "privacy", {}, subcommand="delete")
    asked = await ask.wait_followup()
    confirm = await world.double.click(world.bob, asked, f"atelier:privacy:delete:{world.bob.user.id}:0")
    assert "1 input image(s)" in await answer(confirm)
    assert not (world.db_path.parent / "inputs" / f"{hat}.img").exists()
    text = await answer(await world.double.slash(world.alice, world.channel, "imagine", {"recipe": code}))
    assert "no longer kept" in text and "Attach the image again" in text, text
    assert not running(world) and images_posted(world) == before  # nothing queued, nothing posted


async def test_the_dispatcher_sends_every_picture_or_none(world: World) -> None:
    """Each (re)submission sends the input and every reference picture first (``POST /inputs``),
    all read before any is sent: a job with one picture gone sends none of them."""
    from bot.jobs.model import Job
    from engine.protocol import EngineError

    store, dispatcher = world.bot.pictures, world.bot.dispatcher
    slot = dispatcher.pool.slots[0]
    kept = [await store.add(smooth_png(10 + i), guild_id=world.guild.id, user_id=world.alice.user.id, source="s")
            for i in range(3)]  # fmt: skip
    recipe = Recipe(model="sd15-tiny.safetensors", prompt="p", architecture="sd15", width=64, height=64,
                    init_image=kept[0], references=(kept[1], kept[2]))  # fmt: skip
    job = Job(recipe, world.guild.id, world.channel.id, world.alice.user.id, "alice")
    await dispatcher._send_input(slot, job)
    # The engine holds all three: its own rule answers, not a missing picture.
    with pytest.raises(EngineError, match="SD 1.5 models take one input picture and no reference"):
        await world.engine.submit("all-sent", recipe)
    lone = await store.add(smooth_png(20), guild_id=world.guild.id, user_id=world.alice.user.id, source="s")
    never_kept = hashlib.sha256(smooth_png(21)).hexdigest()
    gone = replace(recipe, init_image=lone, references=(never_kept,))
    with pytest.raises(EngineError, match="no longer kept"):
        await dispatcher._send_input(slot, Job(gone, world.guild.id, world.channel.id, world.alice.user.id, "alice"))
    with pytest.raises(EngineError, match=f"the input image {lone[:12]}… has not been sent"):
        await world.engine.submit("none-sent", replace(recipe, init_image=lone, references=()))
