"""What happens behind each command, button and modal that touches a generation.

Commands and views stay thin (option definitions, UI shape); the flow lives here so that
``/imagine``, Reroll and Remix share one path: build a request, validate it against the
server's registry, queue it. Every handler acknowledges the interaction before doing
anything slow, and every refusal is an ephemeral message that says what to do.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import discord

from bot.jobs import Job, QueueFull, token_expiry
from bot.jobs.poster import with_retries
from bot.jobs.status import status_text
from bot.recipes.text import recipe_reply, suggest_name
from bot.registry import Category, NsfwPolicy, RegistryError
from bot.registry.recipe_book import Lineage
from bot.services import Services
from bot.sources.actions import SourceActions
from bot.sources.refs import split_inline_air
from bot.ui import embeds, views
from bot.ui.common import can_manage_messages, is_admin, nsfw_channel, role_ids, send_private
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


class PostSharing(Protocol):
    """The recipes feature's "Share" of an image's recipe (see bot.ui.recipe_actions)."""

    async def share_post(self, interaction: discord.Interaction[Any], requester_id: int, recipe: Recipe) -> None: ...


class Actions:
    """Generation, LoRA cards and the image buttons. ``recipes`` is set once the recipes
    feature is built on top of this one (it reruns through :meth:`rerun`)."""

    def __init__(self, services: Services, sources: SourceActions) -> None:
        self.services = services
        self.sources = sources
        self.recipes: PostSharing | None = None

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
    ) -> bool:
        """Validate and queue; the interaction must already be deferred (ephemeral).

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
            notes=tuple(n.message for n in outcome.notes),
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
        if outcome.notes:
            text += "\n" + "\n".join(f"• {n.message}" for n in outcome.notes)
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

    async def _post_recipe(self, interaction: discord.Interaction[Any]) -> tuple[int, Recipe] | None:
        """(requester id, recipe) behind the clicked image, from the database.

        A click within moments of the post may come before its record is written; the
        dispatcher still holds that job, so its recipe is used rather than refusing.
        """
        assert interaction.guild_id is not None and interaction.message is not None
        post = await self.services.registry.posts.get(interaction.guild_id, interaction.message.id)
        if post is not None:
            return post.user_id, Recipe.from_json(post.recipe)
        just_posted = self.services.dispatcher.posted_job(interaction.message.id)
        if just_posted is not None and just_posted.guild_id == interaction.guild_id:
            return just_posted.user_id, just_posted.recipe
        await send_private(interaction, "I have no recipe for this message any more (it may have been deleted).")
        return None

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
        }
        values.update(changes)
        return await self.imagine(interaction, origin=origin, **values)

    async def image_button(self, interaction: discord.Interaction[Any], action: str) -> None:
        if interaction.guild_id is None or interaction.message is None:
            await send_private(interaction, "This button only works on images in a server channel.")
            return
        if action == "remix":
            # A modal must be the first response, so no deferral here; one indexed lookup.
            found = await self._post_recipe(interaction)
            if found is None:
                return
            _, recipe = found
            await show_modal(
                interaction,
                views.RemixModal(
                    message_id=interaction.message.id,
                    prompt=recipe.prompt,
                    negative=recipe.negative_prompt,
                    loras="\n".join(f"{lo.display_name}:{lo.weight:g}" for lo in recipe.loras),
                    seed=str(recipe.seed),
                    steps=str(recipe.steps),
                ),
            )
            return
        if action == "save":
            # The member names it: a modal first (no deferral), prefilled with a valid name.
            found = await self._post_recipe(interaction)
            if found is not None:
                modal = views.SaveRecipeModal(
                    kind="savepost", target=interaction.message.id, name=suggest_name(found[1]), scope="me"
                )
                await show_modal(interaction, modal)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        found = await self._post_recipe(interaction)
        if found is None:
            return
        requester_id, recipe = found
        if action == "reroll":
            await self._rerun(interaction, recipe, origin="reroll", seed=new_seed(), parent=parent_of(interaction, "reroll"))
        elif action == "recipe":
            text, attachment = recipe_reply(recipe)
            files = [discord.File(io.BytesIO(attachment.encode("utf-8")), filename="recipe.txt")] if attachment else []
            await send_private(interaction, text, files=files)
        elif action == "share":
            assert self.recipes is not None
            await self.recipes.share_post(interaction, requester_id, recipe)
        elif action == "delete":
            if interaction.user.id != requester_id and not can_manage_messages(interaction):
                await send_private(
                    interaction, "Only the person who asked for this image, or a member with Manage Messages, can delete it."
                )
                return
            try:
                await interaction.message.delete()
            except discord.HTTPException as exc:
                await send_private(interaction, f"Discord did not let me delete it ({exc.status}).")
                return
            await self.services.registry.posts.delete(interaction.guild_id, interaction.message.id)
            await send_private(interaction, "Deleted.")

    async def remix_submit(self, interaction: discord.Interaction[Any], message_id: int, fields: Mapping[str, str]) -> None:
        """Run the Remix modal of the image ``message_id`` with the submitted text ``fields``."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None:
            await send_private(interaction, "Remix only works on images in a server channel.")
            return
        post = await self.services.registry.posts.get(interaction.guild_id, message_id)
        just_posted = self.services.dispatcher.posted_job(message_id)
        if post is not None:
            recipe = Recipe.from_json(post.recipe)
        elif just_posted is not None and just_posted.guild_id == interaction.guild_id:
            recipe = just_posted.recipe
        else:
            await send_private(interaction, "The original image is gone, so there is nothing to remix.")
            return
        parent = Parent(message_id, interaction.channel_id or 0, "🎛️ Remix of this image", interaction.guild_id)
        await self.run_remix_form(interaction, recipe, fields, parent=parent)

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

    # -- LoRA cards --------------------------------------------------------------------
    async def lora_card_button(self, interaction: discord.Interaction[Any], action: str, lora_id: int) -> None:
        if interaction.guild_id is None:
            await send_private(interaction, "This button only works in a server.")
            return
        if not is_admin(interaction):
            await send_private(interaction, "Only members with the **Manage Server** permission can change LoRAs.")
            return
        lora = await self.services.registry.loras.get_by_id(interaction.guild_id, lora_id)
        if lora is None:
            await send_private(interaction, "This LoRA is not registered any more.")
            return
        if action == "edit":
            await show_modal(
                interaction,
                views.LoraEditModal(lora_id=lora_id, **views.lora_edit_values(lora)),
            )
            return
        if action == "lookup":
            await self.sources.lookup(interaction, lora)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self.services.registry.loras.remove(interaction.guild_id, lora.name, interaction.user.id)
        except RegistryError as exc:
            await send_private(interaction, str(exc))
            return
        await send_private(interaction, f"Removed **{lora.name}** from this server's registry.")

    async def lora_edit_submit(self, interaction: discord.Interaction[Any], lora_id: int, fields: Mapping[str, str]) -> None:
        """Apply the Edit modal of a LoRA card; the admin check is repeated for the submit."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None or not is_admin(interaction):
            await send_private(interaction, "Only members with the **Manage Server** permission can change LoRAs.")
            return
        lora = await self.services.registry.loras.get_by_id(interaction.guild_id, lora_id)
        if lora is None:
            await send_private(interaction, "This LoRA is not registered any more.")
            return
        # Only what the admin changed: a prefilled text cut to Discord's limit, sent back as
        # it was, must not overwrite the whole value (e.g. a 10,000-character description).
        prefilled = views.lora_edit_values(lora)
        edited = {key: value for key, value in fields.items() if key in prefilled and value != prefilled[key]}
        if not edited:
            await send_private(interaction, "Nothing changed.", embed=embeds.lora_card(lora, show_file=True))
            return
        changes, problems = lora_changes(**edited)
        if problems:
            await send_private(interaction, embeds.problems_message(problems))
            return
        try:
            updated = await self.services.registry.loras.update(interaction.guild_id, lora.name, interaction.user.id, **changes)
        except RegistryError as exc:
            await send_private(interaction, str(exc))
            return
        await send_private(interaction, "Saved.", embed=embeds.lora_card(updated, show_file=True))


def lora_changes(
    *,
    trigger_words: str | None = None,
    default_weight: str | None = None,
    weight_range: str | None = None,
    category: str | None = None,
    description: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Turn an admin's typed fields into registry changes, or explain what is wrong."""
    changes: dict[str, Any] = {}
    problems: list[str] = []
    if trigger_words is not None:
        changes["trigger_words"] = tuple(w.strip() for w in trigger_words.split(",") if w.strip())
    if default_weight:
        try:
            changes["default_weight"] = float(default_weight)
        except ValueError:
            problems.append(f"Default weight `{default_weight}` is not a number; write it like `0.8`.")
    if weight_range:
        low, sep, high = weight_range.replace("–", "-").replace(" to ", "-").rpartition("-")
        try:
            if not sep or not low:
                raise ValueError
            changes["recommended_min"], changes["recommended_max"] = float(low), float(high)
        except ValueError:
            problems.append(f"Range `{weight_range}` should look like `0.5-1.0`.")
    if category:
        try:
            changes["category"] = Category(category.strip().lower())
        except ValueError:
            problems.append(
                f"Category `{category}` is not one of: " + ", ".join(c.value for c in Category) + "."
            )
    if description is not None:
        changes["description"] = description
    return changes, problems
