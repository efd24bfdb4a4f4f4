"""Input pictures (issue 20): the checks every attachment passes, A1111's resize modes, what a
picture recipe costs, and its fields through the A1111 text and the share code."""

from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from engine.protocol import EngineError, Recipe
from engine.recipe.a1111 import carried, read_parameters, write_parameters
from engine.recipe.batching import batch_key
from engine.recipe.picture import (
    PictureError,
    check_picture,
    effective_steps,
    img2img_steps,
    is_edit,
    open_picture,
    resize_picture,
    step_work,
)
from engine.recipe.share_code import decode, encode
from engine.validation import validate_recipe

SHA = "ab" * 32


def png_bytes(width: int, height: int, mode: str = "RGB", noise: bool = False) -> bytes:
    if noise:
        image = Image.frombytes(mode, (width, height), os.urandom(width * height * len(mode)))
    else:
        image = Image.new(mode, (width, height), (10, 20, 30, 0)[: len(mode)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height``: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(width: int = 40, height: int = 30, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (width, height), (200, 10, 10))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def test_a_png_passes_with_its_size() -> None:
    checked = check_picture(png_bytes(64, 32), "a.png")
    assert (checked.format, checked.width, checked.height, checked.notes) == ("PNG", 64, 32, ())


def test_a_bomb_is_refused_from_its_header_fast_and_without_decoding() -> None:
    data = png_header(30000, 30000)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(PictureError, match=r"30000x30000 pixels .* Scale it down"):
        check_picture(data, "bomb.png")
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.05 and peak < 10 * 2**20  # decoded it would be 2.7 GB


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"", "empty.png", r"empty \(0 bytes\)"),
        (b"GIF89a" + b"\0" * 40, "cat.gif", r"GIF file; inputs must be PNG, JPEG or WebP"),
        (b"hello world, not a picture", "notes.png", r"not an image file I know"),
    ],
)
def test_bad_files_get_their_message(data: bytes, name: str, message: str) -> None:
    with pytest.raises(PictureError, match=message):
        check_picture(data, name)


def test_a_truncated_file_is_refused() -> None:
    data = png_bytes(64, 64, noise=True)
    with pytest.raises(PictureError, match="damaged or cut short"):
        check_picture(data[: len(data) // 2], "cut.png")


def test_content_decides_the_format_not_the_name() -> None:
    checked = check_picture(jpeg_bytes(), "photo.png")
    assert checked.format == "JPEG" and "really a JPEG" in checked.notes[0]


def test_exif_orientation_alpha_and_first_frame() -> None:
    rotated = check_picture(jpeg_bytes(40, 30, orientation=6), "phone.jpg")
    assert (rotated.width, rotated.height) == (30, 40) and any("EXIF" in n for n in rotated.notes)
    image, checked = open_picture(png_bytes(8, 8, "RGBA"), "clear.png")
    assert (
        image.mode == "RGB"
        and image.getpixel((0, 0)) == (255, 255, 255)
        and "white" in checked.notes[0]
    )
    frames = [Image.new("RGB", (16, 16), (i * 80, 0, 0)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    image, checked = open_picture(out.getvalue(), "moving.webp")
    assert "3 frames" in checked.notes[0] and image.getpixel((0, 0))[0] < 20


def test_resize_modes_follow_a1111() -> None:
    wide = Image.new("RGB", (200, 100), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 10, 100))  # a red band on the left edge
    stretched = resize_picture(wide, 64, 64, "just_resize")
    cropped = resize_picture(wide, 64, 64, "crop_and_resize")
    filled = resize_picture(wide, 64, 64, "resize_and_fill")
    assert stretched.size == cropped.size == filled.size == (64, 64)
    assert stretched.getpixel((0, 32))[0] > 200  # the band survives a stretch
    assert cropped.getpixel((0, 32))[2] > 200  # and is cut off by a centre crop
    # Fit: 64x32 in the middle, bands above and below filled from the edge rows (blue).
    assert filled.getpixel((40, 2))[2] > 200 and filled.getpixel((40, 61))[2] > 200
    with pytest.raises(PictureError, match="unknown resize mode"):
        resize_picture(wide, 64, 64, "zoom")


def test_what_a_picture_recipe_costs() -> None:
    base = Recipe(model="m.safetensors", prompt="p", steps=20, width=512, height=512)
    assert step_work(base) == 20
    assert step_work(replace(base, init_image=SHA, strength=0.5)) == 10
    assert (
        img2img_steps(20, 0.0) == 0 and img2img_steps(2, 0.1) == 1 and img2img_steps(20, 1.0) == 20
    )
    # Upscale x2 at 0.4: 8 second-pass steps of 4x the pixels on top of the first 20.
    assert step_work(replace(base, hires_scale=2.0, hires_strength=0.4)) == 20 + 8 * 4
    assert effective_steps(replace(base, init_image=SHA, strength=0.01)) == 1


@pytest.mark.parametrize(("architecture", "variant"), [("flux", "kontext"), ("qwen_image", "edit"), ("qwen_image", "edit_plus")])
def test_an_edit_costs_all_its_steps_whatever_its_strength(architecture: str, variant: str) -> None:
    """An edit starts from noise and reads the picture beside it: every step runs. /edit stores
    strength 1; a recipe code (or an API caller) may carry another, which must not shrink the
    engine's step count (its cost model, the measured seconds per call) or the bot's ETA."""
    edit = Recipe(model="m.safetensors", prompt="p", steps=20, width=512, height=512, architecture=architecture,
                  variant=variant, init_image=SHA, strength=0.3)  # fmt: skip
    assert is_edit(edit) and step_work(edit) == 20 and effective_steps(edit) == 20
    assert step_work(replace(edit, references=(SHA, SHA))) == 20  # the references' cost is per step (bot.jobs.speed)
    # Without a picture it is text-to-image; the same strength on a text-to-image variant is img2img.
    assert not is_edit(replace(edit, init_image="")) and step_work(replace(edit, init_image="")) == 20
    plain = replace(edit, variant="dev" if architecture == "flux" else "image")
    assert not is_edit(plain) and step_work(plain) == 6
    # An unknown architecture or none named: image-to-image as before.
    assert step_work(replace(edit, architecture="")) == 6


def test_picture_fields_are_validated_and_batched_apart() -> None:
    base = Recipe(model="m.safetensors", prompt="p")
    validate_recipe(replace(base, init_image=SHA, strength=0.3, resize_mode="crop_and_resize"))
    for bad in ({"init_image": "x"}, {"strength": 1.5}, {"resize_mode": "zoom"}, {"hires_scale": 9.0},
                {"hires_scale": 4.0, "width": 1024, "height": 1024}):  # fmt: skip
        with pytest.raises(EngineError):
            validate_recipe(replace(base, **bad))
    assert batch_key(replace(base, init_image=SHA)) != batch_key(base)
    assert batch_key(replace(base, init_image=SHA, strength=0.3)) != batch_key(
        replace(base, init_image=SHA)
    )


def test_a1111_text_and_share_code_carry_picture_fields() -> None:
    img2img = Recipe(model="m.safetensors", prompt="p", init_image=SHA, init_image_source="https://discord.com/channels/1/2/3",
                     strength=0.35, resize_mode="resize_and_fill")  # fmt: skip
    text = write_parameters(img2img, version="t")
    assert "Denoising strength: 0.35" in text and "Resize mode: Resize and fill" in text
    assert read_parameters(text).recipe == carried(img2img)
    upscaled = Recipe(
        model="m.safetensors",
        prompt="p",
        hires_scale=2.0,
        hires_strength=0.4,
        hires_upscaler="Lanczos",
    )
    text = write_parameters(upscaled, version="t")
    assert "Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: Lanczos" in text
    assert read_parameters(text).recipe == carried(upscaled)
    both = replace(img2img, hires_scale=1.5, hires_steps=12, hires_strength=0.25)
    assert read_parameters(write_parameters(both, version="t")).recipe == carried(both)
    assert decode(encode(both)) == both


async def test_the_bot_keeps_inputs_per_server_within_its_limits(tmp_path: Path) -> None:
    """bot.pictures: by sha256, per (server, member); /privacy and purges drop owners, the bytes
    go with the last one; past the age limit or the size cap the oldest go first."""
    from bot.pictures import PictureStore

    store = PictureStore(tmp_path / "inputs", max_bytes=2500, max_age_s=100.0)
    a, b, c = b"a" * 1000, b"b" * 1000, b"c" * 1000
    da = await store.add(a, guild_id=1, user_id=10, source="s", now=0.0)
    assert await store.read(da, now=1.0) == a
    assert await store.has(da, guild_id=1, now=1.0) and not await store.has(da, guild_id=2, now=1.0)
    await store.add(a, guild_id=1, user_id=11, source="s", now=1.0)
    assert await store.forget_member(1, 10) == 1 and await store.read(da, now=2.0) == a  # 11 still has it
    assert await store.forget_member(1, 11) == 1 and await store.read(da, now=2.0) is None
    db = await store.add(b, guild_id=2, user_id=10, source="s", now=10.0)
    assert await store.forget_guild(2) == 1 and await store.read(db, now=11.0) is None
    d1 = await store.add(a, guild_id=1, user_id=1, source="s", now=20.0)
    d2 = await store.add(b, guild_id=1, user_id=1, source="s", now=21.0)
    d3 = await store.add(c, guild_id=1, user_id=1, source="s", now=22.0)  # 3000 bytes > 2500: oldest goes
    assert await store.read(d1, now=23.0) is None and await store.read(d3, now=23.0) == c
    assert await store.read(d2, now=200.0) is None  # past the age limit
    assert await store.prune(now=200.0) >= 1 and not list((tmp_path / "inputs").glob("*.img"))
