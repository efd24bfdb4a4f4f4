"""What an image made by another tool says about how it was made.

:func:`read_image` takes an image file's bytes and returns a :class:`~engine.recipe.readers.found.FoundRecipe`
(the prompt and settings as a :class:`~engine.recipe.model.Recipe`, the model, LoRAs,
embeddings and VAE it names as :class:`~engine.recipe.readers.found.Resource` with every hash
given, and what could not be carried over), or None with the reason. One module per tool
family; the order below is the order of precedence when an image carries several:

- :mod:`.atelier`: our own ``atelier_recipe`` chunk (exact, files included).
- :mod:`.invokeai`: ``invokeai_metadata`` (and InvokeAI 2's ``sd-metadata``, 1.x's ``Dream`` text).
- :mod:`.novelai`: NovelAI's ``Comment`` JSON (with the ``Description`` chunk for old images).
- :mod:`.swarmui`: ``sui_image_params`` JSON in ``parameters`` / EXIF UserComment.
- :mod:`.fooocus`: Fooocus's JSON scheme in ``parameters`` / UserComment.
- :mod:`.civitai`: Civitai's JSON meta (``civitaiResources``); also its ``Civitai resources``
  and ``Hashes`` in A1111 text.
- :mod:`.a1111`: AUTOMATIC1111/Forge ``parameters`` text (PNG chunk, JPEG/WebP UserComment).
- :mod:`.comfyui`: the ComfyUI API graph in the ``prompt`` chunk.
- :mod:`.stealth`: A1111 "stealth PNG info" hidden in the alpha channel (or RGB) bits.

Why our own code: sd-prompt-reader (1.3.5) is a desktop application, not a library (it pins
pillow==10.3.0 and pulls in tkinter, customtkinter and requests); sd-parsers (0.6) splits
A1111 settings on every ``:`` and ``,`` without A1111's quoting (so ``Lora hashes`` and
quoted values break), needs ComfyUI's ``workflow`` beside the API graph, reads stealth info
by listing every pixel as Python tuples (unbounded memory for large images), has no
SwarmUI or Civitai reader and does not lift out LoRAs or their hashes. Readers here never
raise on any input and read bounded amounts (see :mod:`.container`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.recipe.readers import (
    a1111,
    atelier,
    civitai,
    comfyui,
    fooocus,
    invokeai,
    novelai,
    stealth,
    swarmui,
)
from engine.recipe.readers.container import MAX_FILE_BYTES, ImageMetadata, read_container
from engine.recipe.readers.found import FoundRecipe, Resource, load_json

__all__ = ["MAX_FILE_BYTES", "FoundRecipe", "ImageRead", "Resource", "read_image", "read_text"]

NO_METADATA = (
    "no recipe found: the image carries no generation data. Re-uploads, screenshots, forwards "
    "and many apps strip it; ask for the original PNG file."
)


class ImageRead:
    """The outcome of :func:`read_image`: ``found``, or ``reason`` why there is nothing."""

    __slots__ = ("found", "reason", "kind")

    def __init__(self, found: FoundRecipe | None, reason: str = "", kind: str = "") -> None:
        self.found = found
        self.reason = reason
        #: The file type ("png", "jpeg", "webp", ...) or "" when not an image.
        self.kind = kind

    def __repr__(self) -> str:
        return f"ImageRead(found={self.found!r}, reason={self.reason!r}, kind={self.kind!r})"


def read_text(text: str, *, source: str, scheme: str | None = None) -> FoundRecipe | None:
    """A ``parameters``-style text (A1111 text or one of the JSON schemes), else None."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        data = load_json(stripped)
        if isinstance(data, dict) and isinstance(data.get("Comment"), str):
            # NovelAI's stealth payload is its whole PNG info: {"Software", "Source", "Comment": "{...}"}.
            return novelai.read_chunks({k: v for k, v in data.items() if isinstance(v, str)})
        if isinstance(data, dict):
            readers: tuple[Callable[[dict[str, Any], str], FoundRecipe | None], ...] = (
                swarmui.read,
                lambda d, s: fooocus.read(d, s, scheme=scheme),
                civitai.read_meta,
                novelai.read_comment,
            )
            for reader in readers:
                found = reader(data, source)
                if found is not None:
                    return found
        return None
    return a1111.read(text, source)


def _guarded(read: Callable[[], FoundRecipe | None]) -> FoundRecipe | None:
    # The readers are written to take anything; this is the last line so that a bug in one
    # of them reads as "not found" instead of an error for the member.
    try:
        return read()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError):
        return None


def read_image(data: bytes) -> ImageRead:
    """Everything :mod:`engine.recipe.readers` can learn from one image file's bytes."""
    meta = read_container(data)
    if meta.kind == "":
        return ImageRead(None, meta.problem or "this file is not an image (PNG, JPEG or WebP)")
    found = _guarded(lambda: _read(meta))
    if found is not None:
        return ImageRead(found, kind=meta.kind)
    reason = NO_METADATA
    if meta.problem:
        reason += f" ({meta.problem})"
    return ImageRead(None, reason, kind=meta.kind)


def _read(meta: ImageMetadata) -> FoundRecipe | None:
    texts = meta.texts
    if atelier.KEY in texts:
        found = atelier.read(texts[atelier.KEY], texts.get("parameters"))
        if found is not None:
            return found
    if "invokeai_metadata" in texts or "sd-metadata" in texts or "Dream" in texts:
        found = invokeai.read_chunks(texts)
        if found is not None:
            return found
    if "Comment" in texts:
        found = novelai.read_chunks(texts, (meta.width, meta.height))
        if found is not None:
            return found
    for key, source in (("parameters", "PNG text chunk 'parameters'"), ("exif", "EXIF UserComment"), ("comment", "JPEG comment")):
        text = texts.get(key)
        if text:
            found = read_text(text, source=source, scheme=texts.get("fooocus_scheme"))
            if found is not None:
                return found
    if "prompt" in texts:
        graph = load_json(texts["prompt"])
        if isinstance(graph, dict):
            found = comfyui.read(graph, "PNG text chunk 'prompt' (an API graph)")
            if found is not None:
                return found
    hidden = stealth.read(meta)
    if hidden is not None:
        found = read_text(hidden, source="hidden in the pixels (stealth PNG info)")
        if found is not None:
            return found
    return None
