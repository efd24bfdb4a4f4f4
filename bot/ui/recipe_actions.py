"""What happens behind sharing, recipe cards and saved recipes (the member's and the server's book).

:mod:`bot.ui.actions` runs generations; this module moves recipes around: posts a recipe card
in the channel (Share button, ``/recipe share``), saves under a name the member picks (the
card's and the result's Save, ``/recipe save``), and lists and runs saved recipes. Cards and
saved recipes are one concept kept in one module on purpose: a card's Save and ``/recipe
share <name>`` go through the saved recipes' lookup, and a saved recipe is shown as a card.
Reading an image from anywhere ("Remix this image", ``/recipe read``) is
:mod:`bot.ui.image_reading`; it answers with a card made here.

Saved recipes live in two stores with different rules, kept apart on purpose: a member's own
(``saved_recipes``: private, a name per member, saving again overwrites) and the server's book
(``recipe_book``: everyone sees and uses it, names unique per server, use counts, only the author
or an admin deletes). ``/recipe`` reaches both through one ``scope`` (``mine`` / ``server``):
without it, a name is looked up in both and the member is asked only when both have it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import discord

from bot.recipes.match import health
from bot.recipes.text import imagine_command, suggest_name
from bot.registry import Registry, RegistryError
from bot.registry.recipe_book import BookEntry, Card
from bot.registry.text import name_key, parse_air
from bot.services import Services
from bot.ui import embeds, views
from bot.ui.actions import Actions, Parent, new_seed, parse_lora_lines, show_modal
from bot.ui.common import is_admin, send_private
from engine.protocol import Recipe
from engine.recipe import share_code
from engine.recipe.model import RecipeError

log = logging.getLogger(__name__)

MESSAGE_LINK = re.compile(r"https?://(?:\w+\.)?discord(?:app)?\.com/channels/(\d+|@me)/(\d+)/(\d+)")
_PERSONAL = {"me", "mine", "my", "personal", "private", "my recipes", "just me", "you"}
_SERVER = {"server", "book", "recipe book", "the server", "everyone", "public", "all", "guild"}
PAGE = 10
#: Characters of each of a member's own recipes' /imagine line in a list; ``show`` has it whole.
LINE_PREVIEW = 300
#: Where a saved recipe lives: the member's own recipes or the server's book.
Scope = Literal["mine", "server"]
_SCOPE_WORDS = {"mine": "your recipes", "server": "this server's recipe book"}


@dataclass(frozen=True)
class Named:
    """A saved recipe found by name, in either store."""

    scope: Scope
    name: str
    recipe: Recipe | None  # None: stored, but no longer readable
    author_id: int
    source_message_id: int | None
    book: BookEntry | None  # the book entry, for scope "server"


def stored_recipe(data: Mapping[str, Any]) -> Recipe | None:
    """The recipe a stored row holds, or None where it no longer reads (an older or damaged row)."""
    try:
        return Recipe.from_json(data)
    except (RecipeError, TypeError, ValueError, KeyError):
        return None


class RecipeActions:
    """Recipe cards, saved recipes and the recipe book; a recipe is made again through
    ``actions`` (the generation feature)."""

    def __init__(self, services: Services, actions: Actions) -> None:
        self.services = services
        self.actions = actions

    @property
    def registry(self) -> Registry:
        return self.services.registry

    # -- cards --------------------------------------------------------------------------
    async def _lora_links(self, guild_id: int, recipe: Recipe) -> dict[str, str]:
        """Each LoRA's registry source as a link (its Civitai page or URL), where it has one."""
        links: dict[str, str] = {}
        for lora in recipe.loras:
            entry = await self.registry.loras.get(guild_id, lora.display_name)
            source = entry.source if entry else None
            if not source:
                continue
            if source.startswith(("http://", "https://")):
                links[lora.display_name] = source
            else:
                try:
                    url = parse_air(source).url
                except RegistryError:
                    url = None
                if url:
                    links[lora.display_name] = url
        return links

    async def card_embed(self, card: Card, recipe: Recipe, *, title: str | None = None, notes: list[str] | None = None, problems: list[str] | None = None) -> discord.Embed:
        catalog = await self.registry.catalogs.get(card.guild_id)
        missing = health(recipe, catalog) if problems is None else problems
        source_url = None
        if card.source_message_id and card.source_channel_id:
            source_url = f"https://discord.com/channels/{card.guild_id}/{card.source_channel_id}/{card.source_message_id}"
        heading = title or (f"📖 {card.book_name}" if card.book_name else f"📜 {recipe.prompt or 'A recipe'}")
        return embeds.recipe_card(
            recipe,
            title=heading,
            author_id=card.author_id,
            shared_by=card.shared_by,
            code=share_code.encode(recipe),
            lora_links=await self._lora_links(card.guild_id, recipe),
            missing=missing,
            notes=notes or [],
            source_url=source_url,
            image_url=card.image_url,
        )

    async def post_card(self, interaction: discord.Interaction[Any], recipe: Recipe, **card_fields: Any) -> discord.Message | None:
        """Post a recipe card in the interaction's channel; None (and an answer) if it failed."""
        assert interaction.guild_id is not None and interaction.channel_id is not None
        card = await self.registry.book.add_card(
            interaction.guild_id, interaction.channel_id, recipe.to_json(), shared_by=interaction.user.id, **card_fields
        )
        channel = self.services.client.get_partial_messageable(interaction.channel_id, guild_id=interaction.guild_id)
        try:
            message = await channel.send(
                embed=await self.card_embed(card, recipe),
                view=views.card_view(card.id),
                allowed_mentions=discord.AllowedMentions.none(),
            )
        except discord.HTTPException as exc:
            await send_private(interaction, f"Discord did not let me post the card here ({exc.status}); check my Send Messages and Embed Links permissions.")
            return None
        await self.registry.book.set_card_message(interaction.guild_id, card.id, message.id)
        return message

    async def share_post(self, interaction: discord.Interaction[Any], requester_id: int, recipe: Recipe) -> None:
        """The Share button under a result (the interaction is deferred)."""
        message = interaction.message
        assert message is not None
        image = next((a.url for a in message.attachments), None)
        posted = await self.post_card(
            interaction, recipe, author_id=requester_id, source="post", source_message_id=message.id,
            source_channel_id=message.channel.id, image_url=image,
        )  # fmt: skip
        if posted is not None:
            await send_private(interaction, f"Shared in this channel: {posted.jump_url}")

    async def _card(self, interaction: discord.Interaction[Any], card_id: int) -> tuple[Card, Recipe] | None:
        """The card a button or modal names, in this server; otherwise the member is told."""
        card = await self.registry.book.card(interaction.guild_id, card_id) if interaction.guild_id else None
        recipe = stored_recipe(card.recipe) if card else None
        if card is None or recipe is None:
            await send_private(interaction, "This card's recipe is no longer available.")
            return None
        return card, recipe

    async def card_button(self, interaction: discord.Interaction[Any], action: str, card_id: int) -> None:
        if interaction.guild_id is None:
            await send_private(interaction, "Recipe cards only work in a server.")
            return
        found = await self._card(interaction, card_id)
        if found is None:
            return
        card, recipe = found
        if action == "remix":
            modal = views.RemixModal(
                message_id=card.id, kind="remixcard", title="Remix this recipe", prompt=recipe.prompt,
                negative=recipe.negative_prompt, loras="\n".join(f"{lo.display_name}:{lo.weight:g}" for lo in recipe.loras),
                seed=str(recipe.seed), steps=str(recipe.steps),
            )  # fmt: skip
            await show_modal(interaction, modal)
            return
        if action == "save":
            name = card.book_name or suggest_name(recipe)
            await show_modal(interaction, views.SaveRecipeModal(kind="savecard", target=card.id, name=name, scope="server"))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if action == "share":
            posted = await self.post_card(
                interaction, recipe, author_id=card.author_id, source=card.source, source_message_id=card.source_message_id,
                source_channel_id=card.source_channel_id, book_name=card.book_name, image_url=card.image_url,
            )  # fmt: skip
            if posted is not None:
                await send_private(interaction, f"Shared in this channel: {posted.jump_url}")
            return
        seed = new_seed() if action == "use" else recipe.seed
        await self._run_card(interaction, card, recipe, seed=seed)

    def _card_parent(self, card: Card) -> Parent | None:
        label = f"📖 From the recipe book: {card.book_name}" if card.book_name else "📜 Made from a shared recipe"
        if card.source_message_id and card.source_channel_id:
            return Parent(card.source_message_id, card.source_channel_id, label, card.guild_id)
        if card.message_id:
            return Parent(card.message_id, card.channel_id, label, card.guild_id)
        return None

    async def _run_card(self, interaction: discord.Interaction[Any], card: Card, recipe: Recipe, **changes: Any) -> None:
        origin = "recipe book" if card.book_name else "recipe card"
        queued = await self.actions.rerun(interaction, recipe, origin=origin, parent=self._card_parent(card), **changes)
        if queued and card.book_name:
            entry = await self.registry.book.get(card.guild_id, card.book_name)
            if entry is not None:
                await self.registry.book.count_use(card.guild_id, entry.id)

    # -- modals -------------------------------------------------------------------------
    async def modal_submit(self, interaction: discord.Interaction[Any], kind: str, target: int, fields: Mapping[str, str]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.guild_id is None:
            await send_private(interaction, "This only works in a server.")
            return
        if kind == "savepost":
            post = await self.registry.posts.get(interaction.guild_id, target)
            recipe = stored_recipe(post.recipe) if post else None
            if recipe is None:
                await send_private(interaction, "The image is gone, so there is nothing to save.")
                return
            await self._save(interaction, recipe, fields, source_message_id=target)
            return
        found = await self._card(interaction, target)
        if found is None:
            return
        card, recipe = found
        if kind == "savecard":
            await self._save(interaction, recipe, fields, source_message_id=card.source_message_id)
            return
        origin_parent = self._card_parent(card)
        await self.actions.run_remix_form(interaction, recipe, fields, parent=origin_parent)

    async def _save(self, interaction: discord.Interaction[Any], recipe: Recipe, fields: Mapping[str, str], *, source_message_id: int | None) -> None:
        name = fields.get("name", "").strip()
        scope = " ".join(fields.get("scope", "me").lower().split())
        assert interaction.guild_id is not None
        try:
            if scope in _PERSONAL:
                saved = await self.registry.saved_recipes.save(interaction.guild_id, interaction.user.id, name, recipe.to_json())
                await send_private(interaction, f"Saved as **{saved.name}** in your recipes (only you see them); make it with `/recipe use scope:mine name:{saved.name}`.")
            elif scope in _SERVER:
                entry = await self.save_to_book(interaction, name, recipe, source_message_id=source_message_id)
                await send_private(interaction, f"Saved to this server's recipe book as **{entry.name}**; anyone can `/recipe use scope:server name:{entry.name}`.")
            else:
                await send_private(interaction, f"Keep it for `server` (the recipe book, for everyone) or `me` (your recipes), not `{embeds.truncate(scope, 30)}`.")
        except RegistryError as exc:
            await send_private(interaction, str(exc))

    async def save_to_book(self, interaction: discord.Interaction[Any], name: str, recipe: Recipe, *, source_message_id: int | None) -> Any:
        assert interaction.guild_id is not None
        return await self.registry.book.save(
            interaction.guild_id, interaction.user.id, name, dataclasses.replace(recipe, count=1).to_json(),
            model_name=recipe.model_label, lora_names=[lo.display_name for lo in recipe.loras], source_message_id=source_message_id,
        )  # fmt: skip

    # -- where a recipe comes from in the commands ----------------------------------------
    async def recipe_from(
        self, interaction: discord.Interaction[Any], source: str, *, scopes: tuple[Scope, ...] | None = None, first_found: bool = False
    ) -> tuple[Recipe, int | None, int | None, Named | None] | None:
        """(recipe, author, source message, the saved recipe if named) from a share code, a
        message link, or the name of a saved recipe in ``scopes`` (see :meth:`find`)."""
        assert interaction.guild_id is not None
        text = source.strip()
        if share_code.looks_like_code(text):
            try:
                return share_code.decode(text), interaction.user.id, None, None
            except share_code.ShareCodeError as exc:
                await send_private(interaction, f"That recipe code can't be read: {exc}.")
                return None
        link = MESSAGE_LINK.search(text)
        if link is not None:
            if link[1] != str(interaction.guild_id):
                await send_private(interaction, "That message is not in this server; recipes stay in their own server.")
                return None
            message_id = int(link[3])
            post = await self.registry.posts.get(interaction.guild_id, message_id)
            if post is not None and (recipe := stored_recipe(post.recipe)) is not None:
                return recipe, post.user_id, message_id, None
            card = await self.registry.book.card_by_message(interaction.guild_id, message_id)
            if card is not None and (recipe := stored_recipe(card.recipe)) is not None:
                return recipe, card.author_id, card.source_message_id, None
            await send_private(interaction, "I have no recipe for that message; for an image from another tool use `/recipe read`.")
            return None
        named = await self.find(interaction, text, scopes, first_found=first_found, what="a recipe code, a message link or a saved recipe")
        if named is None or named.recipe is None:
            return None
        return named.recipe, named.author_id, named.source_message_id, named

    async def latest_post(self, interaction: discord.Interaction[Any]) -> tuple[Recipe, int] | None:
        rows = await self.registry.posts.recent(interaction.guild_id, interaction.user.id, interaction.channel_id, limit=1)
        for post in rows:
            recipe = stored_recipe(post.recipe)
            if recipe is not None:
                return recipe, post.message_id
        return None

    # -- saved recipes, by name and scope ----------------------------------------------------
    async def _lookup(self, guild_id: int, user_id: int, name: str, scope: Scope) -> Named | None:
        if scope == "mine":
            saved = await self.registry.saved_recipes.get(guild_id, user_id, name)
            if saved is None:
                return None
            return Named("mine", saved.name, stored_recipe(saved.recipe), user_id, None, None)
        entry = await self.registry.book.get(guild_id, name)
        if entry is None:
            return None
        return Named("server", entry.name, stored_recipe(entry.recipe), entry.author_id, entry.source_message_id, entry)

    async def find(self, interaction: discord.Interaction[Any], name: str, scopes: tuple[Scope, ...] | Scope | None, *,
                   first_found: bool = False, readable: bool = True, what: str = "a saved recipe") -> Named | None:  # fmt: skip
        """The saved recipe called ``name`` in ``scopes`` (both when None); otherwise None, and
        the member is told where it was looked for.

        With both scopes and the name in both, the member is asked which one they mean, unless
        ``first_found`` (then the first scope listed wins: ``save`` copies from the other store).
        A recipe that can no longer be read is refused unless not ``readable`` (``delete``).
        """
        assert interaction.guild_id is not None
        if isinstance(scopes, str):
            scopes = (scopes,)
        order: tuple[Scope, ...] = scopes or ("mine", "server")
        found = []
        for scope in order:
            named = await self._lookup(interaction.guild_id, interaction.user.id, name, scope)
            if named is not None:
                found.append(named)
                if first_found:
                    break
        shown = embeds.truncate(name, 80)
        if not found:
            where = " or ".join(_SCOPE_WORDS[s] for s in order)
            scope_hint = f" scope:{order[0]}" if len(order) == 1 else ""
            await send_private(interaction, f"`{shown}` is not {what} in {where}; see `/recipe list{scope_hint}`.")
            return None
        if len(found) > 1:
            await send_private(
                interaction,
                f"Both your recipes and this server's recipe book have **{embeds.truncate(found[0].name, 80)}**; "
                "say which with `scope:mine` or `scope:server`.",
            )
            return None
        named = found[0]
        if readable and named.recipe is None:
            fix = "delete it and save it again" if named.scope == "mine" else "its author or an admin can delete it"
            await send_private(interaction, f"The saved recipe **{embeds.truncate(named.name, 80)}** can no longer be read; {fix}.")
            return None
        return named

    async def show(self, interaction: discord.Interaction[Any], name: str, scope: Scope | None = None) -> None:
        assert interaction.guild_id is not None and interaction.channel_id is not None
        named = await self.find(interaction, name, scope)
        if named is None or named.recipe is None:
            return
        recipe = named.recipe
        card = await self.registry.book.add_card(
            interaction.guild_id, interaction.channel_id, recipe.to_json(), author_id=named.author_id, shared_by=interaction.user.id,
            source="book" if named.scope == "server" else "mine", source_message_id=named.source_message_id,
            book_name=named.name if named.scope == "server" else None,
        )  # fmt: skip
        title = None if named.scope == "server" else f"🔒 {named.name} (your recipe)"
        await send_private(interaction, embed=await self.card_embed(card, recipe, title=title), view=views.card_view(card.id, shareable=True))

    async def use(self, interaction: discord.Interaction[Any], name: str, *, prompt: str | None, seed: int | None,
                  weights: str | None, reseed: bool, scope: Scope | None = None) -> None:  # fmt: skip
        assert interaction.guild_id is not None
        named = await self.find(interaction, name, scope)
        if named is None or named.recipe is None:
            return
        recipe = named.recipe
        changes: dict[str, Any] = {}
        if prompt:
            changes["prompt"] = prompt
        if seed is not None:
            changes["seed"] = seed
        elif reseed:
            changes["seed"] = new_seed()
        if weights:
            given = {n.casefold(): w for n, w in parse_lora_lines(weights.replace(",", "\n"))}
            slots = [(lo.display_name, given.pop(lo.display_name.casefold(), f"{lo.weight:g}")) for lo in recipe.loras]
            slots += [(n, w) for n, w in given.items()]
            changes["slots"] = slots
        parent = None
        if named.source_message_id:
            post = await self.registry.posts.get(interaction.guild_id, named.source_message_id)
            if post is not None:
                parent = Parent(post.message_id, post.channel_id, f"📖 From the recipe book: {named.name}", interaction.guild_id)
        origin = "recipe book" if named.scope == "server" else "recipe"
        if await self.actions.rerun(interaction, recipe, origin=origin, parent=parent, **changes) and named.book is not None:
            await self.registry.book.count_use(interaction.guild_id, named.book.id)

    async def delete(self, interaction: discord.Interaction[Any], name: str, scope: Scope | None = None) -> None:
        assert interaction.guild_id is not None
        named = await self.find(interaction, name, scope, readable=False)
        if named is None:
            return
        if named.scope == "mine":
            await self.registry.saved_recipes.delete(interaction.guild_id, interaction.user.id, named.name)
            await send_private(interaction, f"Deleted **{named.name}** from your recipes.")
            return
        if named.author_id != interaction.user.id and not is_admin(interaction):
            await send_private(interaction, f"Only <@{named.author_id}>, who saved **{named.name}**, or an admin (Manage Server) can delete it.")
            return
        await self.registry.book.delete(interaction.guild_id, named.name)
        await send_private(interaction, f"Deleted **{named.name}** from the recipe book.")

    async def name_choices(self, guild_id: int, user_id: int, current: str, scope: Scope | None) -> list[tuple[str, str]]:
        """(label, name) for autocomplete: the member's own, then the book's, each labelled
        when both scopes are offered (the same name may be in both)."""
        needle = name_key(current) if current.strip() else ""
        out: list[tuple[str, str]] = []
        if scope in (None, "mine"):
            mine = [s.name for s in await self.registry.saved_recipes.of_member(guild_id, user_id) if needle in name_key(s.name)]
            mine.sort(key=lambda n: not name_key(n).startswith(needle))
            out += [(f"{n} · yours" if scope is None else n, n) for n in mine]
        if scope in (None, "server"):
            out += [(f"{n} · server's book" if scope is None else n, n) for n in await self.registry.book.names(guild_id, current)]
        return [(embeds.truncate(label, 100), name) for label, name in out if len(name) <= 100][:25]

    async def list(self, interaction: discord.Interaction[Any], *, sort: str, model: str | None, lora: str | None,
                   author: discord.abc.User | None, page: int, scope: Scope | None = None) -> None:  # fmt: skip
        """The book's page and/or the member's own page; without a scope both, in two labelled
        embeds that share Discord's 6000 characters per message."""
        assert interaction.guild_id is not None
        shown: list[discord.Embed] = []
        if scope in (None, "server"):
            shown.append(await self._book_page(interaction, sort=sort, model=model, lora=lora, author=author, page=page))
        mine_by_author = author is None or author.id == interaction.user.id
        if scope == "mine" or (scope is None and mine_by_author):
            embed = await self._mine_page(interaction, sort=sort, model=model, lora=lora, page=page, by_other=not mine_by_author)
            room = embeds.EMBED_TOTAL_LIMIT - sum(len(e) for e in shown)
            if len(embed) > room and embed.description:
                embed.description = embeds.truncate(embed.description, max(1, len(embed.description) - (len(embed) - room)))
            shown.append(embed)
        await send_private(interaction, embeds=shown)

    async def _book_page(self, interaction: discord.Interaction[Any], *, sort: str, model: str | None, lora: str | None,
                         author: discord.abc.User | None, page: int) -> discord.Embed:  # fmt: skip
        assert interaction.guild_id is not None
        entries, total = await self.registry.book.list(
            interaction.guild_id, sort=sort, model=model, lora=lora, author_id=author.id if author else None,  # type: ignore[arg-type]
            limit=PAGE, offset=(page - 1) * PAGE,
        )  # fmt: skip
        catalog = await self.registry.catalogs.get(interaction.guild_id)
        lines = []
        for entry in entries:
            recipe = stored_recipe(entry.recipe)
            if recipe is None:
                lines.append(f"**{entry.name}** · (can no longer be read)")
                continue
            stack = ", ".join(f"{lo.display_name} {lo.weight:g}" for lo in recipe.loras) or "no LoRAs"
            warn = " ⚠️" if health(recipe, catalog) else ""
            lines.append(f"**{entry.name}**{warn} · {recipe.model_label} · {stack} · by <@{entry.author_id}> · used {entry.uses}×")
        pages = max(1, -(-total // PAGE))
        filters = [f for f in (model and f"model {model}", lora and f"LoRA {lora}", author and f"by {author.display_name}") if f]
        title = f"📖 Server's recipe book · {total} recipe(s)" + (f" · {', '.join(filters)}" if filters else "") + f" · page {min(page, pages)}/{pages}"
        embed = embeds.list_embed(title, lines, empty="No recipes yet: press 💾 on a recipe card or use `/recipe save scope:server`.")
        embed.set_footer(text="⚠️ = uses something this server no longer has; /recipe show says what to use instead.")
        return embed

    async def _mine_page(self, interaction: discord.Interaction[Any], *, sort: str, model: str | None, lora: str | None,
                         page: int, by_other: bool) -> discord.Embed:  # fmt: skip
        """The member's own recipes (at most ``MAX_SAVED_RECIPES``, so filtered here in Python)."""
        assert interaction.guild_id is not None
        saved = [] if by_other else await self.registry.saved_recipes.of_member(interaction.guild_id, interaction.user.id)
        rows = [(entry, stored_recipe(entry.recipe)) for entry in saved]
        if model:
            rows = [(e, r) for e, r in rows if r is not None and name_key(r.model_label) == name_key(model)]
        if lora:
            rows = [(e, r) for e, r in rows if r is not None and any(name_key(lo.display_name) == name_key(lora) for lo in r.loras)]
        if sort == "name":
            rows.sort(key=lambda row: name_key(row[0].name))
        pages = max(1, -(-len(rows) // PAGE))
        lines = []
        for entry, recipe in rows[(page - 1) * PAGE : page * PAGE]:
            line = imagine_command(recipe) if recipe is not None else "(this recipe can no longer be read)"
            lines.append(f"**{entry.name}**\n`{embeds.truncate(line, LINE_PREVIEW)}`")
        filters = [f for f in (model and f"model {model}", lora and f"LoRA {lora}") if f]
        title = f"🔒 Your recipes · {len(rows)} recipe(s)" + (f" · {', '.join(filters)}" if filters else "") + f" · page {min(page, pages)}/{pages}"
        empty = ("`author` only filters the server's book; your recipes are all yours." if by_other
                 else "None yet: press 💾 Save recipe under an image, or use `/recipe save`.")  # fmt: skip
        return embeds.list_embed(title, lines, empty=empty)
