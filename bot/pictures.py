"""Input pictures on the bot's side: the kept copies, and what a picture job asks for.

A recipe with an input image names it by sha256 and the message it came from
(:class:`engine.recipe.model.Recipe` ``init_image``/``init_image_source``). Discord's
attachment URLs expire (signed, about a day), so a re-run from a recipe cannot count on the
message; the bot keeps the bytes itself, in ``inputs/`` beside its database, one file per
sha256, with a sidecar naming who brought it in which server. The store is bounded by a total
size and an age (oldest dropped first), and a member's ``/privacy`` deletion and a departed
server's purge take their inputs with them. A recipe whose input is gone is refused with a
message that says to attach the image again.

No torch here; the bytes were checked (:func:`engine.recipe.picture.check_picture`) before
they are stored, and the engine checks them again when they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from engine.protocol import Recipe
from engine.recipe.picture import edit_variant, is_edit

log = logging.getLogger(__name__)

#: Total bytes of inputs kept; past it the least recently brought in go first.
MAX_STORE_BYTES = 2 * 1024**3
#: Inputs are kept this long after they were last brought in (by anyone).
MAX_AGE_S = 30 * 24 * 3600.0
_SHA = re.compile(r"[0-9a-f]{64}")

GONE = ("The input image of this recipe is no longer kept here (inputs are deleted after {days} days, "
        "by `/privacy` and when a server's data is purged). Attach the image again to `/imagine` "
        "(option `image`) or use **Use as starting image** on its message.")  # fmt: skip


def gone_message(max_age_s: float = MAX_AGE_S) -> str:
    return GONE.format(days=round(max_age_s / 86400))


@dataclass(frozen=True)
class PictureChoice:
    """The picture fields of a request: its input and strength, or its upscale pass."""

    init_image: str = ""
    init_image_source: str = ""
    references: tuple[str, ...] = ()
    reference_sources: tuple[str, ...] = ()
    strength: float = 0.75
    resize_mode: str = "just_resize"
    hires_scale: float = 0.0
    hires_steps: int = 0
    hires_upscaler: str = ""
    hires_strength: float = 0.4

    @classmethod
    def of(cls, recipe: Recipe) -> PictureChoice | None:
        """What ``recipe`` carries, or None for a plain text-to-image recipe."""
        if not recipe.init_image and not recipe.hires_scale:
            return None
        return cls(**{f.name: getattr(recipe, f.name) for f in fields(cls)})

    def apply(self, recipe: Recipe) -> Recipe:
        return replace(recipe, **{f.name: getattr(self, f.name) for f in fields(self)})


def edits(recipe: Recipe) -> bool:
    """Whether ``recipe`` edits its input picture (an edit model given a picture)."""
    return is_edit(recipe)


def picture_count(recipe: Recipe) -> int:
    """The pictures an edit reads: its input, and any further references it names."""
    return (1 if recipe.init_image else 0) + len(getattr(recipe, "references", ()) or ())


EDIT_NEEDS_PICTURE = ("`{model}` is an edit model: it changes a picture you give it. Use `/edit` with an image "
                      "and an instruction (or **Apps → Edit this image** on a message), or pick a text-to-image model.")  # fmt: skip


async def picture_refusal(client: Any, recipe: Recipe, guild_id: int | None = None) -> str | None:
    """Why ``recipe``'s picture part cannot run now (its input gone, its upscale too large,
    an edit model without a picture), or None. Asked before a job is queued, so no GPU time
    goes to a job that would fail."""
    edit = edit_variant(recipe.architecture, recipe.variant)
    if edit is not None:
        # An input picture on an edit model is an edit (the prompt is its instruction).
        if not recipe.init_image:
            return EDIT_NEEDS_PICTURE.format(model=recipe.model_label)
        if recipe.hires_scale:
            return (f"The upscale pass does not run after an edit ({edit.label}). Upscale the edited image "
                    "with `/imagine image:` on a text-to-image model instead.")  # fmt: skip
        if picture_count(recipe) > edit.max_images:
            return too_many_pictures(recipe.model_label, edit, picture_count(recipe))
    elif recipe.init_image or recipe.hires_scale:
        from engine import arch

        spec = arch.get(recipe.architecture)
        found = spec.variant(recipe.variant or None) if spec is not None else None
        does = (found.capabilities if found is not None and found.capabilities is not None
                else spec.capabilities if spec is not None else frozenset({"img2img"}))  # fmt: skip
        if "img2img" not in does:
            what = "an input image" if recipe.init_image else "an upscale pass"
            return (f"{arch.label(recipe.architecture)} models like `{recipe.model_label}` do not run image-to-image "
                    f"here, which {what} needs. Pick an SD 1.5, SDXL or FLUX.1 model.")  # fmt: skip
    if recipe.pictures:
        from engine.validation import reference_problem

        store: PictureStore | None = getattr(client, "pictures", None)
        # Inputs are a server's data: a recipe code from elsewhere does not reach another
        # server's copy of its input, even by the right hash. An edit's reference pictures
        # are kept and deleted the same way, and each must still be here.
        for digest in recipe.pictures:
            if store is None or not await store.has(digest, guild_id=guild_id):
                return gone_message(store.max_age_s if store is not None else MAX_AGE_S)
        # More pictures than the model takes (Variant.max_images) is refused as the engine would.
        problem = reference_problem(recipe)
        if problem is not None:
            return problem[0].upper() + problem[1:] + "."
    if recipe.hires_scale:
        from engine.recipe.picture import hires_size
        from engine.validation import DEFAULT_LIMITS

        width, height = hires_size(recipe.width, recipe.height, recipe.hires_scale)
        if max(width, height) > DEFAULT_LIMITS.max_side:
            return (f"Upscaled, this image would be {width}x{height}, past the engine's {DEFAULT_LIMITS.max_side} "
                    "pixels a side. Upscale a smaller image.")  # fmt: skip
    return None


class PictureStore:
    """Input images by sha256 under ``root``; every method is safe to call from the event loop
    (file work runs in a worker thread, one change at a time)."""

    def __init__(self, root: Path, *, max_bytes: int = MAX_STORE_BYTES, max_age_s: float = MAX_AGE_S) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._lock = asyncio.Lock()

    # -- paths ------------------------------------------------------------------------------

    def _data(self, digest: str) -> Path:
        return self.root / f"{digest}.img"

    def _meta(self, digest: str) -> Path:
        return self.root / f"{digest}.json"

    def _read_meta(self, digest: str) -> dict[str, Any] | None:
        try:
            meta = json.loads(self._meta(digest).read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and isinstance(meta.get("owners"), list) else None

    def _write_meta(self, digest: str, meta: dict[str, Any]) -> None:
        temporary = self._meta(digest).with_suffix(".tmp")
        temporary.write_text(json.dumps(meta))
        os.replace(temporary, self._meta(digest))

    def _remove(self, digest: str) -> None:
        for path in (self._data(digest), self._meta(digest)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _digests(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.stem for p in self.root.glob("*.json") if _SHA.fullmatch(p.stem)]

    # -- use --------------------------------------------------------------------------------

    async def add(self, data: bytes, *, guild_id: int, user_id: int, source: str, now: float | None = None) -> str:
        """Keep ``data`` (already checked) for ``user_id`` in ``guild_id``; its sha256."""
        digest = hashlib.sha256(data).hexdigest()
        stamp = time.time() if now is None else now

        def work() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self._data(digest).exists():
                temporary = self._data(digest).with_suffix(".part")
                temporary.write_bytes(data)
                os.replace(temporary, self._data(digest))
            meta = self._read_meta(digest) or {"owners": [], "size": len(data)}
            owners = [o for o in meta["owners"] if (o[0], o[1]) != (guild_id, user_id)]
            owners.append([guild_id, user_id, source])
            meta.update(owners=owners, size=len(data), added_at=stamp)
            self._write_meta(digest, meta)
            self._prune(stamp, keep=digest)

        async with self._lock:
            await asyncio.to_thread(work)
        return digest

    async def read(self, digest: str, *, now: float | None = None) -> bytes | None:
        """The bytes of ``digest``, or None when they are gone (never kept, too old, deleted)."""
        if not _SHA.fullmatch(digest or ""):
            return None
        stamp = time.time() if now is None else now

        def work() -> bytes | None:
            meta = self._read_meta(digest)
            if meta is None or stamp - float(meta.get("added_at", 0)) > self.max_age_s:
                return None
            try:
                return self._data(digest).read_bytes()
            except OSError:
                return None

        return await asyncio.to_thread(work)

    async def has(self, digest: str, *, guild_id: int | None = None, now: float | None = None) -> bool:
        """Whether ``digest`` is kept (for ``guild_id``: brought in there by someone)."""
        if await self.read(digest, now=now) is None:
            return False
        if guild_id is None:
            return True
        meta = await asyncio.to_thread(self._read_meta, digest)
        return meta is not None and any(o[0] == guild_id for o in meta["owners"])

    # -- deletion ---------------------------------------------------------------------------

    async def _forget(self, matches: Any) -> int:
        def work() -> int:
            dropped = 0
            for digest in self._digests():
                meta = self._read_meta(digest)
                if meta is None:
                    continue
                owners = [o for o in meta["owners"] if not matches(o)]
                if len(owners) == len(meta["owners"]):
                    continue
                dropped += len(meta["owners"]) - len(owners)
                if owners:
                    self._write_meta(digest, {**meta, "owners": owners})
                else:
                    self._remove(digest)
            return dropped

        async with self._lock:
            return await asyncio.to_thread(work)

    async def forget_member(self, guild_id: int, user_id: int) -> int:
        """``/privacy``: the member's inputs in this server (bytes go when no one else has them)."""
        return await self._forget(lambda o: o[0] == guild_id and o[1] == user_id)

    async def forget_guild(self, guild_id: int) -> int:
        """A departed server's purge: every input brought in there."""
        return await self._forget(lambda o: o[0] == guild_id)

    async def count_for(self, guild_id: int, user_id: int) -> int:
        def work() -> int:
            return sum(
                1 for d in self._digests() for o in (self._read_meta(d) or {"owners": []})["owners"]
                if o[0] == guild_id and o[1] == user_id
            )  # fmt: skip

        return await asyncio.to_thread(work)

    async def prune(self, now: float | None = None) -> int:
        async with self._lock:
            return await asyncio.to_thread(self._prune, time.time() if now is None else now)

    def _prune(self, now: float, keep: str = "") -> int:
        """Drop inputs past the age limit, then the oldest until under the size cap."""
        entries = []
        dropped = 0
        for digest in self._digests():
            meta = self._read_meta(digest)
            added = float(meta.get("added_at", 0)) if meta else 0.0
            if meta is None or now - added > self.max_age_s:
                self._remove(digest)
                dropped += 1
                continue
            entries.append((added, digest, int(meta.get("size", 0))))
        total = sum(size for _, _, size in entries)
        for _added, digest, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if digest == keep:
                continue
            self._remove(digest)
            total -= size
            dropped += 1
        return dropped


def too_many_pictures(model: str, edit: Any, count: int) -> str:
    """The refusal of more pictures than an edit model's variant takes (``Variant.max_images``)."""
    takes = "one picture" if edit.max_images == 1 else f"up to {edit.max_images} pictures"
    return (f"`{model}` ({edit.label}) takes {takes}; you gave {count}. Leave out `image2`/`image3` "
            "(they are for edit models that take several pictures), or pick such a model.")  # fmt: skip


__all__ = [
    "EDIT_NEEDS_PICTURE", "MAX_AGE_S", "MAX_STORE_BYTES", "PictureChoice", "PictureStore", "edit_variant", "edits",
    "gone_message", "picture_count", "picture_refusal", "too_many_pictures",
]  # fmt: skip
