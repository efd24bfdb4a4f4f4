"""Pictures going in: checking an untrusted input image, and what a picture recipe costs.

Plain Python and Pillow, no torch: the bot checks an attachment with :func:`check_picture`
before anything is stored or queued, and the engine decodes the stored bytes with the same
:func:`open_picture`, so both sides see one image (EXIF orientation applied, alpha flattened on
white as A1111 does, the first frame of an animated file).

Untrusted input is bounded before any pixel is decoded: the format is told from the first
bytes (a JPEG named ``.png`` is a JPEG), and the pixel count is read from the header, so a
30000x30000 "decompression bomb" is refused in microseconds without allocating its 2.7 GB.

:func:`resize_picture` is A1111's ``images.resize_image`` (modes 0, 1, 2) re-written on
Pillow: that function lives in A1111's web UI and is not importable.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

#: Formats accepted, by their first bytes (never by file name or the sender's content type).
FORMATS = ("PNG", "JPEG", "WEBP")
#: The most pixels an input may have; 4096x4096 (16.8 M) passes, a 64 MP photo does too.
MAX_PIXELS = 64 * 1024 * 1024
#: The most bytes the bot fetches for one input, whatever the server's upload limit says.
MAX_BYTES = 25 * 1024 * 1024
#: A1111's resize modes, as recipes name them, with A1111's own labels.
RESIZE_MODES: dict[str, str] = {
    "just_resize": "Just resize",
    "crop_and_resize": "Crop and resize",
    "resize_and_fill": "Resize and fill",
}
ResizeMode = Literal["just_resize", "crop_and_resize", "resize_and_fill"]
#: What a file name's extension claims (only ever used to tell a member the name is wrong).
_NAMED = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
#: The colour a transparent input is flattened on (A1111's ``img2img_background_color``).
BACKGROUND = (255, 255, 255)
#: Second-pass (Upscale) defaults, as A1111's hires fix is commonly set.
HIRES_STRENGTH = 0.4
HIRES_UPSCALER = "Lanczos"


class PictureError(ValueError):
    """An input image that cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class CheckedPicture:
    """What a check found: the format from the content, the size after EXIF orientation,
    and notes a member should read (first frame taken, transparency flattened, ...)."""

    format: str
    width: int
    height: int
    notes: tuple[str, ...] = field(default=())


def sniff(data: bytes) -> str | None:
    """The format its first bytes say: "PNG", "JPEG", "WEBP", "GIF", ... or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "AVIF/HEIC"
    return None


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR, read by hand so a refusal can name them even when
    Pillow would refuse to open the file at all."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    return None


def _too_large(width: int, height: int, name: str) -> PictureError:
    return PictureError(
        f"`{name}` is {width}x{height} pixels ({width * height / 1e6:.0f} MP); inputs may have at most "
        f"{MAX_PIXELS / 1e6:.0f} MP. Scale it down (e.g. to 2048 pixels on the long side) and attach it again."
    )


def _header(data: bytes, name: str) -> tuple[Any, str]:
    """Open (header only, no pixels) after the content and pixel checks; (image, format)."""
    from PIL import Image

    if not data:
        raise PictureError(
            f"`{name}` is empty (0 bytes). Attach the image file itself, as PNG, JPEG or WebP."
        )
    kind = sniff(data)
    if kind not in FORMATS:
        what = f"a {kind} file" if kind else "not an image file I know"
        hint = " Animated GIFs are not taken: save one frame as PNG." if kind == "GIF" else ""
        raise PictureError(f"`{name}` is {what}; inputs must be PNG, JPEG or WebP.{hint}")
    size = _png_header_size(data) if kind == "PNG" else None
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise _too_large(size[0], size[1], name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PictureError(
            f"`{name}` has too many pixels for an input ({exc}). Scale it down and attach it again."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PictureError(
            f"`{name}` looks like {kind} but its header cannot be read ({exc}); the file may be damaged. Export it again."
        ) from exc
    if image.width * image.height > MAX_PIXELS:
        raise _too_large(image.width, image.height, name)
    if image.width < 1 or image.height < 1:
        raise PictureError(f"`{name}` has no pixels ({image.width}x{image.height}).")
    return image, kind


def open_picture(data: bytes, name: str = "the image") -> tuple[Any, CheckedPicture]:
    """Decode ``data`` into an RGB Pillow image, bounded by :data:`MAX_PIXELS` before decoding;
    raises :class:`PictureError` with advice for anything unusable."""
    from PIL import Image, ImageOps

    image, kind = _header(data, name)
    notes: list[str] = []
    named = _NAMED.get(name.lower().rsplit(".", 1)[-1]) if "." in name else None
    if named is not None and named != kind:
        notes.append(f"`{name}` is really a {kind} file despite its name; it was read as {kind}.")
    if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
        notes.append(
            f"`{name}` is animated ({image.n_frames} frames): only its first frame is used."
        )
        image.seek(0)
    try:
        image.load()
        oriented = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise PictureError(
            f"`{name}` could not be decoded ({exc}); the file is damaged or cut short. Export it again."
        ) from exc
    if oriented is not image and oriented.size != image.size:
        notes.append("Rotated as its EXIF orientation says.")
    image = oriented
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("Transparent parts were filled with white.")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        image = flat
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return image, CheckedPicture(kind, image.width, image.height, tuple(notes))


def check_picture(data: bytes, name: str = "the image") -> CheckedPicture:
    """:func:`open_picture` without keeping the pixels: what the bot runs on an attachment."""
    image, checked = open_picture(data, name)
    image.close()
    return checked


def resize_picture(image: Any, width: int, height: int, mode: str = "just_resize") -> Any:
    """``image`` brought to ``width`` x ``height`` the way A1111's resize modes do it.

    ``just_resize`` stretches; ``crop_and_resize`` scales to cover and cuts the centre;
    ``resize_and_fill`` scales to fit, centres, and fills the bands with the image's own edge
    rows (or columns) stretched outwards.
    """
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    if mode not in RESIZE_MODES:
        raise PictureError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    if image.size == (width, height):
        return image
    if mode == "just_resize":
        return image.resize((width, height), lanczos)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == "crop_and_resize":
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((max(1, src_w), max(1, src_h)), lanczos)
        result = Image.new("RGB", (width, height))
        result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return result
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((max(1, src_w), max(1, src_h)), lanczos)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(
                resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                box=(0, fill + src_h),
            )
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(
                resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                box=(fill + src_w, 0),
            )
    return result


# --- what a picture recipe costs -----------------------------------------------------------


def img2img_steps(steps: int, strength: float) -> int:
    """Denoising steps image-to-image runs: diffusers' and A1111's ``int(steps * strength)``,
    at least one for any strength above 0 (0 is the VAE's round trip, no step at all)."""
    if strength <= 0:
        return 0
    if strength >= 1:
        return steps
    return max(1, min(steps, int(steps * strength)))


def hires_size(width: int, height: int, scale: float, multiple: int = 8) -> tuple[int, int]:
    """The second pass's size: ``scale`` times the first, each side down to ``multiple``."""
    return (max(multiple, int(width * scale) // multiple * multiple),
            max(multiple, int(height * scale) // multiple * multiple))  # fmt: skip


def edit_variant(architecture: str, variant: str | None) -> Any:
    """The :class:`engine.arch.base.Variant` of an edit model (FLUX.1 Kontext, Qwen-Image-Edit),
    or None. An edit model's file has its text-to-image sibling's keys, so the registry's (or
    the recipe's) variant decides, never the file. The one rule the bot, the cost model and
    the engine's :func:`engine.picture_run.edits` share."""
    from engine import arch

    spec = arch.get(architecture)
    found = spec.variants.get(variant) if spec is not None and variant else None
    return found if found is not None and found.capabilities is not None and "edit" in found.capabilities else None


def is_edit(recipe: Any, architecture: str = "") -> bool:
    """Whether ``recipe`` gives its input picture to an edit model. Without a picture an edit
    model's recipe stays text-to-image. ``architecture``: the model file's, where the recipe
    names none."""
    return bool(getattr(recipe, "init_image", "")) and edit_variant(
        getattr(recipe, "architecture", None) or architecture, getattr(recipe, "variant", None)
    ) is not None


def step_work(recipe: Any) -> float:
    """Denoising work of ``recipe`` in units of one step at its own size: what ETAs, the cost
    model's step counts and scheduling weights scale by. Text-to-image is ``steps``;
    image-to-image ``int(steps * strength)``; an upscale pass adds its steps times its
    pixel ratio (a 2x pass at strength 0.4 of 20 steps adds 8 steps of 4x the pixels).
    An edit runs all its steps whatever ``strength`` says (it starts from noise; the picture is
    read beside it): /edit stores strength 1, but a recipe code may carry another."""
    steps = int(recipe.steps)
    work = (
        float(img2img_steps(steps, float(getattr(recipe, "strength", 1.0))))
        if getattr(recipe, "init_image", "") and not is_edit(recipe)
        else float(steps)
    )
    scale = float(getattr(recipe, "hires_scale", 0.0) or 0.0)
    if scale > 0:
        hires = int(getattr(recipe, "hires_steps", 0) or 0) or steps
        w, h = hires_size(int(recipe.width), int(recipe.height), scale)
        work += (
            img2img_steps(hires, float(getattr(recipe, "hires_strength", HIRES_STRENGTH)))
            * (w * h)
            / (recipe.width * recipe.height)
        )
    return work


def effective_steps(recipe: Any) -> int:
    """:func:`step_work` rounded up to whole steps (at least 1): for code that counts steps."""
    import math

    return max(1, math.ceil(step_work(recipe) - 1e-9))


__all__ = [
    "BACKGROUND",
    "FORMATS",
    "HIRES_STRENGTH",
    "HIRES_UPSCALER",
    "MAX_BYTES",
    "MAX_PIXELS",
    "RESIZE_MODES",
    "CheckedPicture",
    "PictureError",
    "ResizeMode",
    "check_picture",
    "effective_steps",
    "hires_size",
    "edit_variant",
    "is_edit",
    "img2img_steps",
    "open_picture",
    "resize_picture",
    "sniff",
    "step_work",
]
