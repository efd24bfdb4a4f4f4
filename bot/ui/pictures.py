"""A picture in, a picture out: ``/imagine image:``, "Use as starting image", Vary and Upscale.

Every input goes the same way before anything is queued: its size against the server's
upload limit, then the original file is fetched (never the media proxy's preview), checked by
content (:func:`engine.recipe.picture.check_picture`: PNG/JPEG/WebP, pixels counted from the
header before decoding), screened by the server's image check (an input that would not be
posted in this channel is not used either), and kept by sha256 (:mod:`bot.pictures`). Each
refusal says what to do instead. The recipe then names the input by hash and message link.

Vary (subtle/strong) is image-to-image of a result at two strengths with a new seed; Upscale
x2 is the same recipe with A1111's hires-fix pass (Lanczos, then image-to-image at 0.4). The
result credits its parent like Reroll and Remix do.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import discord

from bot.operator.safety import screen_for_channel
from bot.pictures import PictureChoice, PictureStore, edit_variant, too_many_pictures
from bot.registry.models import ModelEntry
from bot.services import Services
from bot.ui import embeds, views
from bot.ui.actions import Actions, Parent, new_seed, show_modal
from bot.ui.common import send_private
from engine.protocol import Recipe
from engine.recipe.picture import (
    HIRES_STRENGTH,
    MAX_BYTES,
    CheckedPicture,
    PictureError,
    check_picture,
)

log = logging.getLogger(__name__)

#: Vary's strengths (Midjourney's subtle and strong, as image-to-image denoising).
SUBTLE, STRONG = 0.35, 0.7
#: What "Use as starting image" proposes.
DEFAULT_STRENGTH = 0.6
#: Fetching and checking one input may take this long.
FETCH_TIMEOUT_S = 30.0
CHECK_TIMEOUT_S = 15.0
_IMAGE_NAMES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".avif", ".heic", ".tif", ".tiff")


def message_link(guild_id: int, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id}/{channel_id}/{message_id}"


def first_image(message: discord.Message) -> discord.Attachment | None:
    for attachment in message.attachments:
        if (attachment.content_type or "").startswith("image/") or attachment.filename.lower().endswith(_IMAGE_NAMES):
            return attachment
    return None


def parse_strength(text: str) -> float | None:
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return value if 0 <= value <= 1 else None


#: What an edit's result credits (its embed's author line links the source message).
EDIT_LABEL = "✏️ Edit of this image"
NO_EDIT_MODEL = ("No edit model is registered in this server. An admin adds one with `/model add` and "
                 "`variant: FLUX.1 Kontext` (its file looks like FLUX.1 dev). Meanwhile `/imagine image:` "
                 "does image-to-image.")  # fmt: skip
NOT_AN_EDIT_MODEL = ("`{model}` is a text-to-image model; /edit needs an edit model such as FLUX.1 Kontext — "
                     "use `/imagine image:` for image-to-image.")  # fmt: skip
#: An edit's result keeps the picture's shape within these (a panorama would pass the size rules).
_MAX_ASPECT = 2.5


def edit_size(model: ModelEntry, width: int, height: int, *, side_min: int = 0,
              side_max: int = 1 << 16) -> tuple[int, int] | None:  # fmt: skip
    """The picture's shape at about the model's default area, each side a multiple of its
    architecture's and within the server's sides (Kontext's own pipeline also keeps the
    input's aspect ratio)."""
    from engine import arch

    spec = arch.get(model.architecture)
    if spec is None or spec.size is None or width <= 0 or height <= 0:
        return None
    multiple = spec.size.multiple
    aspect = min(_MAX_ASPECT, max(1 / _MAX_ASPECT, width / height))
    area = model.default_width * model.default_height
    w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
    grow = max(1.0, side_min / min(w, h))
    w, h = w * grow, h * grow
    shrink = min(1.0, side_max / max(w, h))
    w, h = w * shrink, h * shrink
    low = -(-max(side_min, multiple) // multiple) * multiple
    high = max(low, side_max // multiple * multiple)

    def fit(side: float) -> int:
        return min(high, max(low, round(side / multiple) * multiple))

    return fit(w), fit(h)


class PictureActions:
    """The picture flows of one bot."""

    def __init__(self, services: Services, actions: Actions) -> None:
        self.services = services
        self.actions = actions

    @property
    def store(self) -> PictureStore:
        return self.services.client.pictures  # type: ignore[attr-defined,no-any-return]

    # -- taking an input ----------------------------------------------------------------------

    async def take(self, interaction: discord.Interaction[Any], attachment: discord.Attachment, *,
                   source: str, notes: list[str]) -> str | None:  # fmt: skip
        """Fetch, check, screen and keep ``attachment``; its sha256, or None after telling the
        member why not (the interaction is deferred). ``notes`` gets what they should know."""
        taken = await self.take_checked(interaction, attachment, source=source, notes=notes)
        return taken[0] if taken is not None else None

    async def take_checked(self, interaction: discord.Interaction[Any], attachment: discord.Attachment, *,
                           source: str, notes: list[str]) -> tuple[str, CheckedPicture] | None:  # fmt: skip
        """:meth:`take`, with what the check found (an edit sizes its result from the picture)."""
        assert interaction.guild_id is not None and interaction.channel_id is not None
        name = embeds.truncate(attachment.filename, 80)
        limit = min(MAX_BYTES, max(interaction.filesize_limit or 0, 10 * 1024 * 1024))
        if attachment.size > limit:
            await send_private(interaction, f"`{name}` is {attachment.size / 2**20:.1f} MiB; input images may be at most "
                               f"{limit / 2**20:.0f} MiB. Save it smaller (JPEG or WebP, or fewer pixels) and attach it again.")  # fmt: skip
            return None
        try:
            # The original file, never the media proxy's preview.
            data = await asyncio.wait_for(attachment.read(use_cached=False), FETCH_TIMEOUT_S)
        except (discord.HTTPException, discord.NotFound) as exc:
            await send_private(interaction, f"I could not download `{name}` (Discord answered {getattr(exc, 'status', exc)}). "
                               "The message may have been deleted or its link expired: attach the image again.")  # fmt: skip
            return None
        except (TimeoutError, OSError) as exc:
            await send_private(interaction, f"Downloading `{name}` failed ({type(exc).__name__}); try again in a moment.")
            return None
        if len(data) > limit:
            await send_private(interaction, f"`{name}` is larger than the {limit / 2**20:.0f} MiB an input may have.")
            return None
        try:
            checked = await asyncio.wait_for(asyncio.to_thread(check_picture, data, attachment.filename), CHECK_TIMEOUT_S)
        except PictureError as exc:
            await send_private(interaction, str(exc))
            return None
        except TimeoutError:
            await send_private(interaction, f"Reading `{name}` took too long, so I stopped. Save it as a plain PNG or JPEG.")
            return None
        screened = await screen_for_channel(self.services.client, interaction.guild_id, interaction.channel_id, [data])
        if screened.withheld or any(spoiler for _, _, spoiler in screened.files):
            await send_private(interaction, "I can't use that image here: the server's image check flagged it, and "
                               "this is not an age-restricted channel. Use it in an age-restricted channel, or pick another image.")  # fmt: skip
            return None
        notes.extend(checked.notes)
        digest = await self.store.add(data, guild_id=interaction.guild_id, user_id=interaction.user.id, source=source)
        return digest, checked

    # -- /imagine image: ------------------------------------------------------------------------

    async def imagine_choice(self, interaction: discord.Interaction[Any], attachment: discord.Attachment,
                             strength: float | None, resize: str | None) -> PictureChoice | None:  # fmt: skip
        """``/imagine``'s image and strength as a :class:`PictureChoice` (None: refused)."""
        assert interaction.guild_id is not None and interaction.channel_id is not None
        # A slash command's attachment lives on no message; the interaction's channel is where it was given.
        source = f"{message_link(interaction.guild_id, interaction.channel_id, interaction.id)} ({attachment.filename})"
        notes: list[str] = []
        digest = await self.take(interaction, attachment, source=source[:300], notes=notes)
        if digest is None:
            return None
        if notes:
            await send_private(interaction, "\n".join(f"• {n}" for n in notes))
        return PictureChoice(init_image=digest, init_image_source=source[:300],
                             strength=DEFAULT_STRENGTH if strength is None else strength,
                             resize_mode=resize or "crop_and_resize")  # fmt: skip

    # -- "Use as starting image" ----------------------------------------------------------------

    async def use_as_start(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        """The context menu: a modal for the prompt and strength first (it must be the first answer)."""
        if interaction.guild_id is None:
            await send_private(interaction, "This works on images in a server channel.")
            return
        if first_image(message) is None:
            await send_private(interaction, "That message has no image attached. Use it on a message with a PNG, JPEG or WebP image.")
            return
        post = await self.services.registry.posts.get(interaction.guild_id, message.id)
        prompt = Recipe.from_json(post.recipe).prompt if post is not None else ""
        await show_modal(interaction, views.StartImageModal(message_id=message.id, prompt=prompt,
                                                            strength=f"{DEFAULT_STRENGTH:g}"))  # fmt: skip

    async def use_submit(self, interaction: discord.Interaction[Any], message_id: int, fields: Mapping[str, str]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None or interaction.channel_id is None:
            await send_private(interaction, "This works on images in a server channel.")
            return
        prompt = fields.get("prompt", "").strip()
        strength = parse_strength(fields.get("strength", ""))
        if not prompt:
            await send_private(interaction, "Describe what to make of the image in the prompt.")
            return
        if strength is None:
            await send_private(interaction, f"Strength `{embeds.truncate(fields.get('strength', ''), 20)}` is not a number "
                               "from 0 (keep the image) to 1 (keep only its size); e.g. 0.6.")  # fmt: skip
            return
        found = await self._message_image(interaction, message_id)
        if found is None:
            return
        message, attachment = found
        link = message_link(interaction.guild_id, message.channel.id, message.id)
        notes: list[str] = []
        digest = await self.take(interaction, attachment, source=link, notes=notes)
        if digest is None:
            return
        if notes:
            await send_private(interaction, "\n".join(f"• {n}" for n in notes))
        parent = Parent(message.id, message.channel.id, "🖼️ Made from this image", interaction.guild_id)
        choice = PictureChoice(init_image=digest, init_image_source=link, strength=strength, resize_mode="crop_and_resize")
        await self.actions.imagine(interaction, prompt=prompt, model=None, slots=[], origin="start_image",
                                   parent=parent, picture=choice)  # fmt: skip

    # -- /edit and "Edit this image" -----------------------------------------------------------

    async def _message_image(self, interaction: discord.Interaction[Any],
                             message_id: int) -> tuple[discord.Message, discord.Attachment] | None:  # fmt: skip
        """The message a modal was opened on, read again, and its first image; or None after
        telling the member why not (the message or its image is gone since the modal opened)."""
        assert interaction.channel_id is not None
        try:
            channel = interaction.channel or await self.services.client.fetch_channel(interaction.channel_id)
            message = await channel.fetch_message(message_id)  # type: ignore[union-attr]
        except (discord.HTTPException, AttributeError):
            await send_private(interaction, "I can't read that message any more (deleted, or I can't see the channel).")
            return None
        attachment = first_image(message)
        if attachment is None:
            await send_private(interaction, "That message has no image attached any more.")
            return None
        return message, attachment

    async def edit_models(self, guild_id: int, channel_id: int | None = None) -> list[ModelEntry]:
        """The server's enabled edit models (variant with "edit": FLUX.1 Kontext), usable in
        ``channel_id``, in the registry's order: the first is the default of an edit."""
        models = await self.services.registry.models.all(guild_id)
        return [m for m in models if m.enabled and (channel_id is None or m.allowed_in(channel_id))
                and edit_variant(m.architecture, m.variant) is not None]  # fmt: skip

    async def edit_model(self, interaction: discord.Interaction[Any], name: str | None, pictures: int) -> str | None:
        """The edit model's name for an edit of ``pictures`` pictures, or None after telling the
        member why not (a text-to-image model, too many pictures, no edit model here). A name
        this server lacks is passed on: validation says so with its suggestions."""
        assert interaction.guild_id is not None
        registry = self.services.registry
        if name:
            entry = await registry.models.get(interaction.guild_id, name)
            if entry is None:
                return name
        else:
            found = await self.edit_models(interaction.guild_id, interaction.channel_id)
            if not found:
                await send_private(interaction, NO_EDIT_MODEL)
                return None
            entry = found[0]
        edit = edit_variant(entry.architecture, entry.variant)
        if edit is None:
            await send_private(interaction, NOT_AN_EDIT_MODEL.format(model=entry.name))
            return None
        if pictures > edit.max_images:
            await send_private(interaction, too_many_pictures(entry.name, edit, pictures))
            return None
        return entry.name

    async def edit_command(self, interaction: discord.Interaction[Any], *, image: discord.Attachment, instruction: str,
                           model: str | None, extra: list[discord.Attachment], size: tuple[int, int] | None,
                           **options: Any) -> None:  # fmt: skip
        """``/edit``: the picture changed as ``instruction`` says (the interaction is deferred)."""
        assert interaction.guild_id is not None and interaction.channel_id is not None
        name = await self.edit_model(interaction, model, 1 + len(extra))
        if name is None:
            return
        link = message_link(interaction.guild_id, interaction.channel_id, interaction.id)
        # image2/image3 (a model that takes several: Qwen-Image-Edit-2509) are the recipe's
        # references: each is checked, screened and kept like the edited picture.
        references = [(a, f"{link} ({a.filename})"[:300]) for a in extra]
        await self._run_edit(interaction, image, source=f"{link} ({image.filename})"[:300], instruction=instruction,
                             model=name, parent=None, size=size, references=references, **options)  # fmt: skip

    async def edit_this(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        """The "Edit this image" menu: a modal for the instruction first (the first answer)."""
        if interaction.guild_id is None:
            await send_private(interaction, "This works on images in a server channel.")
            return
        if first_image(message) is None:
            await send_private(interaction, "That message has no image attached. Use it on a message with a PNG, JPEG or WebP image.")
            return
        found = await self.edit_models(interaction.guild_id, interaction.channel_id)
        if not found:
            await send_private(interaction, NO_EDIT_MODEL)
            return
        await show_modal(interaction, views.EditImageModal(message_id=message.id, model=found[0].name,
                                                           ask_model=len(found) > 1))  # fmt: skip

    async def edit_submit(self, interaction: discord.Interaction[Any], message_id: int, fields: Mapping[str, str]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None or interaction.channel_id is None:
            await send_private(interaction, "This works on images in a server channel.")
            return
        instruction = fields.get("instruction", "").strip()
        if not instruction:
            await send_private(interaction, "Say how to change the image in the instruction, e.g. \"make the sky red\".")
            return
        name = await self.edit_model(interaction, fields.get("model", "").strip() or None, 1)
        if name is None:
            return
        found = await self._message_image(interaction, message_id)
        if found is None:
            return
        message, attachment = found
        link = message_link(interaction.guild_id, message.channel.id, message.id)
        parent = Parent(message.id, message.channel.id, EDIT_LABEL, interaction.guild_id)
        await self._run_edit(interaction, attachment, source=link, instruction=instruction, model=name,
                             parent=parent, size=None)  # fmt: skip

    async def _run_edit(self, interaction: discord.Interaction[Any], attachment: discord.Attachment, *, source: str,
                        instruction: str, model: str, parent: Parent | None, size: tuple[int, int] | None,
                        references: Sequence[tuple[discord.Attachment, str]] = (), **options: Any) -> None:  # fmt: skip
        notes: list[str] = []
        taken = await self.take_checked(interaction, attachment, source=source, notes=notes)
        if taken is None:
            return
        digest, checked = taken
        kept: list[str] = []
        for reference, reference_source in references:
            found = await self.take(interaction, reference, source=reference_source, notes=notes)
            if found is None:
                return
            kept.append(found)
        if notes:
            await send_private(interaction, "\n".join(f"• {n}" for n in notes))
        if size is None:
            registry = self.services.registry
            entry = await registry.models.get(interaction.guild_id or 0, model)
            settings = await registry.settings.get(interaction.guild_id or 0)
            size = (edit_size(entry, checked.width, checked.height, side_min=settings.size_min,
                              side_max=settings.size_max) if entry is not None else None)  # fmt: skip
        # Strength does not apply to an edit (all steps run over the picture's tokens): 1 says so
        # in the recipe, and every step count read from it (ETAs, the engine's cost model) is whole.
        choice = PictureChoice(init_image=digest, init_image_source=source, strength=1.0, resize_mode="crop_and_resize",
                               references=tuple(kept), reference_sources=tuple(s for _, s in references))  # fmt: skip
        width, height = size if size is not None else (None, None)
        options.setdefault("slots", [])
        await self.actions.imagine(interaction, prompt=instruction, model=model, origin="edit", parent=parent,
                                   picture=choice, width=width, height=height, **options)  # fmt: skip

    # -- Vary and Upscale -----------------------------------------------------------------------

    async def button(self, interaction: discord.Interaction[Any], action: str) -> None:
        if interaction.guild_id is None or interaction.message is None:
            await send_private(interaction, "This button only works on images in a server channel.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        message = interaction.message
        post = await self.services.registry.posts.get(interaction.guild_id, message.id)
        recipe: Recipe | None = Recipe.from_json(post.recipe) if post is not None else None
        if recipe is None:
            just_posted = self.services.dispatcher.posted_job(message.id)
            recipe = just_posted.recipe if just_posted is not None and just_posted.guild_id == interaction.guild_id else None
        if recipe is None:
            await send_private(interaction, "I have no recipe for this message any more (it may have been deleted).")
            return
        link = message_link(interaction.guild_id, message.channel.id, message.id)
        if action == "upscale":
            if recipe.hires_scale:
                await send_private(interaction, "This image is already an upscale; Vary it, or upscale the image it came from.")
                return
            base = PictureChoice.of(recipe) or PictureChoice()
            choice = PictureChoice(**{**base.__dict__, "hires_scale": 2.0, "hires_strength": HIRES_STRENGTH,
                                      "hires_upscaler": "Lanczos", "hires_steps": 0})  # fmt: skip
            parent = Parent(message.id, message.channel.id, "🔍 Upscale ×2 of this image", interaction.guild_id)
            await self.actions.rerun(interaction, recipe, origin="upscale", parent=parent, picture=choice, count=1)
            return
        attachment = first_image(message)
        if attachment is None:
            await send_private(interaction, "This result has no image to vary (it may have been withheld by the image check).")
            return
        notes: list[str] = []
        digest = await self.take(interaction, attachment, source=link, notes=notes)
        if digest is None:
            return
        strength = SUBTLE if action == "vary_subtle" else STRONG
        choice = PictureChoice(init_image=digest, init_image_source=link, strength=strength)
        label = "🪄 Vary (subtle) of this image" if action == "vary_subtle" else "🌀 Vary (strong) of this image"
        parent = Parent(message.id, message.channel.id, label, interaction.guild_id)
        await self.actions.rerun(interaction, recipe, origin=action, parent=parent, picture=choice, seed=new_seed())


__all__ = ["EDIT_LABEL", "STRONG", "SUBTLE", "PictureActions", "edit_size", "first_image", "message_link", "parse_strength"]
