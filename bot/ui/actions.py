"""What happens behind each command, button and modal that touches a generation.

Commands and views stay thin (option definitions, UI shape); the flow lives here so that
``/imagine``, Reroll and Remix share one path: build a request, validate it against the
server's registry, queue it. Every handler acknowledges the interaction before doing
anything slow, and every refusal is an ephemeral message that says what to do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import discord

from bot.jobs import Job, QueueFull, token_expiry
from bot.jobs.poster import with_retries
from bot.jobs.status import status_text
from bot.pictures import PictureChoice, edits, picture_refusal
from bot.registry import NsfwPolicy
from bot.registry.recipe_book import Lineage
from bot.services import Services
from bot.sources.actions import SourceActions
from bot.sources.refs import split_inline_air
from bot.ui import embeds, views
from bot.ui.common import can_manage_messages, nsfw_channel, role_ids, send_private
from engine.protocol import Recipe

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1


def new_seed() -> int:
    return random.randint(0, MAX_SEED)


@dataclass(frozen=True)
class Parent:
    """The message a new job is made from; the result records it and links to it."""

    message_id: int
    channel_id: int
    #: What the result's embed says above the recipe, e.g. "🎲 Reroll of this image".
    label: str
    guild_id: int

    @property
    def url(self) -> str:
        return f"https://discord.com/channels/{self.guild_id}/{self.channel_id}/{self.message_id}"


def parent_of(interaction: discord.Interaction[Any], origin: str) -> Parent | None:
    message = interaction.message
    if message is None or interaction.guild_id is None:
        return None
    label = {"reroll": "🎲 Reroll of this image", "remix": "🎛️ Remix of this image"}.get(origin, f"Made from this ({origin})")
    return Parent(message.id, message.channel.id, label, interaction.guild_id)


def _is_whole_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``²``, which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


async def show_modal(interaction: discord.Interaction[Any], modal: discord.ui.Modal) -> None:
    """Open ``modal`` without leaving it in discord.py's in-memory modal store.

    The store keys modals by custom id alone, so two members' modals for one image would
    collide; submits are routed from their payload instead (``Actions.modal_submit``).
    """
    await interaction.response.send_modal(modal)
    modal.stop()


def parse_lora_lines(text: str) -> list[tuple[str, str | None]]:
    """Remix's ``name:weight`` lines -> (name, weight text); a line without ``:`` keeps the default."""
    slots: list[tuple[str, str | None]] = []
    for raw in text.splitlines():
        line = raw.strip().strip("<>")
        if not line:
            continue
        if line.lower().startswith("lora:"):
            line = line[5:]
        air = split_inline_air(line)  # civitai:120096@135931[:0.7]
        if air is not None:
            slots.append((air[0], air[1] or None))
            continue
        name, sep, weight = line.rpartition(":")
        if not sep:
            name, weight = line, ""
        slots.append((name.strip(), weight.strip() or None))
    return slots


#: What the bot needs in a channel to post an image with its recipe and buttons.
POST_PERMISSIONS = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
    "embed_links": "Embed Links",
    "attach_files": "Attach Files",
}


def missing_post_permissions(interaction: discord.Interaction[Any]) -> list[str]:
    permissions = interaction.app_permissions
    if permissions.administrator:
        return []
    return [label for name, label in POST_PERMISSIONS.items() if not getattr(permissions, name)]


class Actions:
    """Generation: ``/imagine``, the reruns other features ask for (:meth:`rerun`, the Remix
    form), the Cancel buttons of a job, and what a posted result records."""

    def __init__(self, services: Services, sources: SourceActions) -> None:
        self.services = services
        self.sources = sources

    # -- helpers for autocomplete ------------------------------------------------------
    # These read single rows (settings.get, models.get), never ``registry.catalogs.get()``: after
    # an admin change the catalog of a 100k-LoRA server takes most of a second to rebuild,
    # and autocomplete must answer within Discord's 3 seconds while members keep typing.
    async def nsfw_ok(self, guild_id: int, channel_is_nsfw: bool) -> bool | None:
        """None: the policy allows NSFW anywhere; True: allowed in this channel; False: hide it."""
        settings = await self.services.registry.settings.get(guild_id)
        if settings.nsfw_policy == NsfwPolicy.ANYWHERE:
            return None
        if settings.nsfw_policy == NsfwPolicy.NEVER:
            return False
        return channel_is_nsfw

    async def chosen_model(self, interaction: discord.Interaction[Any]) -> Any:
        """The model picked earlier in the same command (or the default), if any."""
        assert interaction.guild_id is not None
        registry = self.services.registry
        name = getattr(interaction.namespace, "model", None)
        if not name:
            name = (await registry.settings.get(interaction.guild_id)).default_model
        if not name:
            return None
        return await registry.models.get(interaction.guild_id, str(name))

    async def chosen_architecture(self, interaction: discord.Interaction[Any]) -> str | None:
        """The architecture of the model picked earlier in the same command, if any."""
        entry = await self.chosen_model(interaction)
        return entry.architecture if entry else None

    # -- generation --------------------------------------------------------------------
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        *,
        prompt: str,
        model: str | None,
        slots: list[tuple[str | None, str | None]],
        negative: str | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        count: int | None = None,
        origin: str = "imagine",
        clip_skip: int | None = None,
        parent: Parent | None = None,
        picture: PictureChoice | None = None,
        speed: str | None = None,
        shift: float | None = None,
    ) -> bool:
        """Validate and queue; the interaction must already be deferred (ephemeral).

        ``picture``: an input image (kept in bot.pictures) and its strength, or an upscale
        pass, added to the validated recipe (bot.ui.pictures checks them first).
        True when the job was queued.
        """
        from bot.request.parse import build_request
        from bot.request.validation import Rejected, validate

        assert interaction.guild_id is not None and interaction.channel_id is not None
        registry = self.services.registry
        catalog = await registry.catalogs.get(interaction.guild_id)
        request = build_request(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            channel_is_nsfw=nsfw_channel(interaction),
            user_role_ids=role_ids(interaction),
            prompt=prompt,
            model=model,
            slots=slots,
            negative_prompt=negative,
            sampler=sampler,
            steps=steps,
            cfg=cfg,
            seed=seed,
            width=width,
            height=height,
            count=count,
            clip_skip=clip_skip,
            speed=speed,
            shift=shift,
        )
        # LoRAs named by a Civitai AIR this server lacks: fetched first where the member's role
        # may (bot.sources), else validation explains who can add them.
        fresh = await self.sources.fetch_missing(interaction, request, catalog)
        if fresh is None:
            return False
        outcome = validate(request, fresh)
        catalog = fresh
        if isinstance(outcome, Rejected):
            await send_private(interaction, embeds.problems_message(outcome.problems))
            return False
        recipe: Recipe = outcome.recipe
        notes = [n.message for n in outcome.notes]
        if picture is not None:
            recipe = picture.apply(recipe)
        # Asked of every recipe: an edit model without a picture is refused here too.
        refusal = await picture_refusal(interaction.client, recipe, interaction.guild_id)
        if refusal is not None:
            await send_private(interaction, refusal)
            return False
        if edits(recipe):
            if recipe.strength != 1.0:
                # /imagine image: (or Vary) on an edit model: an edit, all steps; 1 says strength has no part.
                recipe = replace(recipe, strength=1.0)
            if origin != "edit":
                notes.append(f"`{recipe.model_label}` is an edit model: the prompt was the instruction for "
                             "changing the picture, and strength does not apply (`/edit` does this directly).")  # fmt: skip
        refusal = self.services.access.recipe_refusal(interaction.guild_id, recipe)
        if refusal is not None:
            await send_private(interaction, refusal)
            return False
        settings = catalog.settings
        missing = missing_post_permissions(interaction)
        if missing:
            # Checked before queueing: Discord resolved the bot's permissions in this channel
            # for the interaction, so no GPU second is spent on an image that cannot be posted.
            await send_private(
                interaction,
                f"I can't post images in this channel: I'm missing {', '.join(missing)}. Ask an "
                "admin to give me View Channel, Send Messages, Embed Links and Attach Files "
                "here, or use another channel.",
            )
            return False
        priority = bool(set(settings.priority_roles) & set(role_ids(interaction)))
        job = Job(
            recipe=recipe,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            user_name=interaction.user.display_name,
            file_limit=interaction.filesize_limit,
            notes=tuple(notes),
            origin=origin,
            weight=2 if priority else 1,
            application_id=interaction.application_id,
            interaction_token=interaction.token,
            token_expires_at=token_expiry(interaction.created_at.timestamp()),
            parent_message_id=parent.message_id if parent else None,
            parent_channel_id=parent.channel_id if parent else None,
            parent_credit=(parent.label, parent.url) if parent else None,
        )
        dispatcher = self.services.dispatcher
        try:
            await dispatcher.submit(
                job,
                user_limit=settings.queue_limit_per_user,
                server_limit=settings.server_queue_limit,
                active_limit=settings.active_jobs_per_user,
            )
        except QueueFull as exc:
            await send_private(interaction, str(exc))
            return False
        # The member's private reply is the job's status message from now on (edited through
        # this interaction's token, which has its own rate limit, not the channel's).
        status = status_text(job, engines_down=dispatcher.engines_down())
        text = status
        if notes:
            text += "\n" + "\n".join(f"• {n}" for n in notes)
        try:
            reply = await with_retries(
                lambda: interaction.followup.send(
                    embeds.truncate(text, embeds.CONTENT_LIMIT),
                    view=views.detached(views.status_view(job.id)),
                    ephemeral=True,
                    wait=True,
                ),
                within_s=30, what=f"the reply to interaction {interaction.id}",
            )  # fmt: skip
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            # The job is queued all the same: its image (or a failure notice) comes in the channel.
            log.warning("could not answer interaction %s: %s", interaction.id, exc)
            await dispatcher.reply_lost(job)
            return True
        await dispatcher.attach_status(job, reply.id, status)
        return True

    async def record_result(self, job: Job, message: discord.Message, seconds: float) -> None:
        await self.services.registry.posts.record(
            job.guild_id, job.channel_id, message.id, job.user_id, job.recipe.to_json()
        )
        lineage = Lineage(job.origin, job.parent_message_id, job.parent_channel_id)
        await self.services.registry.book.record_lineage(job.guild_id, message.id, lineage, [a.id for a in message.attachments])
        names = [lora.display_name for lora in job.recipe.loras]
        if names:
            await self.services.registry.loras.record_use(job.guild_id, names)

    async def rerun(self, interaction: discord.Interaction[Any], recipe: Recipe, *, origin: str, **changes: Any) -> bool:
        """Run ``recipe`` again for the presser (validated against today's registry)."""
        return await self._rerun(interaction, recipe, origin=origin, **changes)

    @staticmethod
    def _slots_of(recipe: Recipe) -> list[tuple[str | None, str | None]]:
        return [(lora.display_name, f"{lora.weight:g}") for lora in recipe.loras]

    async def _rerun(self, interaction: discord.Interaction[Any], recipe: Recipe, *, origin: str, **changes: Any) -> bool:
        values: dict[str, Any] = {
            "prompt": recipe.prompt,
            "model": recipe.model_name or recipe.model,
            "slots": self._slots_of(recipe),
            "negative": recipe.negative_prompt,
            "sampler": recipe.sampler,
            "steps": recipe.steps,
            "cfg": recipe.cfg_scale,
            "seed": recipe.seed,
            "width": recipe.width,
            "height": recipe.height,
            "count": recipe.count,
            "clip_skip": recipe.clip_skip,
            # The shift that ran, whoever set it (the member, or a profile since changed).
            "shift": recipe.shift,
            # An input image and its strength, or an upscale pass, go with the recipe.
            "picture": PictureChoice.of(recipe),
            # A recipe says what ran: the server's fast mode does not add to it.
            "speed": "normal",
        }
        values.update(changes)
        if "shift" not in changes and values["model"] != (recipe.model_name or recipe.model):
            values["shift"] = None  # another model: its own shift (or none: SD has none)
        return await self.imagine(interaction, origin=origin, **values)

    async def run_remix_form(
        self, interaction: discord.Interaction[Any], recipe: Recipe, fields: Mapping[str, str], *, parent: Parent | None
    ) -> bool:
        """Run ``recipe`` changed by a submitted Remix form (the interaction is deferred)."""
        problems: list[str] = []
        seed_text, steps_text = fields.get("seed", "").strip(), fields.get("steps", "").strip()
        seed = new_seed()
        if seed_text:
            if _is_whole_number(seed_text):
                seed = int(seed_text)
            else:
                problems.append(
                    f"Seed `{embeds.truncate(seed_text, 40)}` is not a whole number; leave it empty for a random one."
                )
        steps = recipe.steps
        if steps_text:
            if _is_whole_number(steps_text):
                steps = int(steps_text)
            else:
                problems.append(f"Steps `{embeds.truncate(steps_text, 40)}` is not a whole number.")
        if problems:
            await send_private(interaction, embeds.problems_message(problems))
            return False
        # A text input holds 4000 characters, a prompt may hold more: text sent back exactly
        # as it was prefilled means "unchanged", not "cut the prompt here".
        prompt, negative = fields.get("prompt", ""), fields.get("negative", "")
        if prompt == recipe.prompt[: views.TEXT_INPUT_LIMIT]:
            prompt = recipe.prompt
        if negative == recipe.negative_prompt[: views.TEXT_INPUT_LIMIT]:
            negative = recipe.negative_prompt
        return await self._rerun(
            interaction,
            recipe,
            origin="remix",
            parent=parent,
            prompt=prompt,
            negative=negative,
            slots=parse_lora_lines(fields.get("loras", "")),
            seed=seed,
            steps=steps,
        )

    async def cancel_job(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = self.services.dispatcher.jobs.get(job_id)
        # Another server's job is treated as unknown: its moderators are not this one's.
        if job is None or job.guild_id != interaction.guild_id:
            await send_private(interaction, "This job is no longer running.")
            return
        if interaction.user.id != job.user_id and not can_manage_messages(interaction):
            await send_private(interaction, "Only the person who asked for this image, or a member with Manage Messages, can cancel it.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        cancelled = await self.services.dispatcher.cancel(job_id)
        await send_private(interaction, "Cancelling…" if cancelled else "It had already finished.")

    async def cancel_mine(self, interaction: discord.Interaction[Any]) -> None:
        """The "Cancel all my jobs" button under ``/queue``."""
        if interaction.guild_id is None:
            await send_private(interaction, "This button only works in a server.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        count = await self.services.dispatcher.cancel_all(interaction.guild_id, interaction.user.id)
        if count:
            await send_private(interaction, f"Cancelling your {count} job(s) in this server.")
        else:
            await send_private(interaction, "You have no jobs waiting or running in this server.")
