"""A small but real discord.py bot used to exercise the double: commands, views, modals, files.

Each handler records what happened (and any exception discord.py raised) so tests can assert
both sides: what reached the wire and what the bot saw.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image

FLAVOURS = ["vanilla", "vanilla bean", "chocolate", "strawberry", "pistachio", "mango"]


def png_bytes(width: int = 8, height: int = 6) -> bytes:
    """A real PNG (so the double can read its size from the header)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


class PingView(discord.ui.View):
    def __init__(self, bot: SandboxBot) -> None:
        super().__init__(timeout=None)
        self.bot = bot

    @discord.ui.button(label="Ping", custom_id="sandbox:ping", style=discord.ButtonStyle.primary)
    async def ping(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.bot.events.append(("clicked", interaction.user.id, interaction.message.id if interaction.message else None))
        await interaction.response.send_message("pong", ephemeral=True)

    @discord.ui.button(label="Note", custom_id="sandbox:note")
    async def note(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.send_modal(NoteModal(self.bot))


class CounterView(discord.ui.View):
    """Edits its own message: once as the response (type 7), once after a deferred update (6)."""

    def __init__(self) -> None:
        super().__init__(timeout=None)
        self.count = 0

    @discord.ui.button(label="+1", custom_id="counter:inc")
    async def increment(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        self.count += 1
        await interaction.response.edit_message(content=f"count {self.count}", view=self)

    @discord.ui.button(label="+10 later", custom_id="counter:later")
    async def later(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.defer()
        self.count += 10
        await interaction.edit_original_response(content=f"count {self.count}")

    @discord.ui.button(label="Delete", custom_id="counter:delete", style=discord.ButtonStyle.danger)
    async def delete(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.defer()
        assert interaction.message is not None
        await interaction.message.delete()


class NoteModal(discord.ui.Modal, title="Leave a note"):
    text: discord.ui.TextInput[NoteModal] = discord.ui.TextInput(
        label="Note", custom_id="note:text", max_length=200
    )
    mood: discord.ui.TextInput[NoteModal] = discord.ui.TextInput(
        label="Mood", custom_id="note:mood", required=False, default="calm"
    )

    def __init__(self, bot: SandboxBot, *, quiet: bool = False) -> None:
        super().__init__(custom_id="sandbox:quiet-modal" if quiet else "sandbox:note-modal")
        self.bot = bot
        self.quiet = quiet

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.bot.events.append(("modal", self.text.value, self.mood.value))
        text = f"noted: {self.text.value} ({self.mood.value})"
        if self.quiet:
            await interaction.response.defer()  # type 6: acknowledge now, say it later
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text)


class SandboxBot(commands.Bot):
    def __init__(self, *, guild_id: int | None = None, intents: discord.Intents | None = None) -> None:
        super().__init__(
            command_prefix="!", intents=intents or discord.Intents.default(), guild_ready_timeout=0.1
        )
        self.guild_id = guild_id
        self.events: list[tuple[Any, ...]] = []
        self.errors: list[BaseException] = []
        self.interactions: dict[str, discord.Interaction] = {}
        self.sync_error: BaseException | None = None
        self.extra_commands: list[app_commands.Command[Any, ..., Any]] = []
        self._register()

    async def setup_hook(self) -> None:
        self.add_view(PingView(self))
        if self.guild_id is not None:

            @self.tree.command(description="Only in this guild", guild=discord.Object(self.guild_id))
            async def local(interaction: discord.Interaction) -> None:
                await interaction.response.send_message(f"local to {interaction.guild_id}")

        for command in self.extra_commands:
            self.tree.add_command(command)
        try:
            await self.tree.sync()
            if self.guild_id is not None:
                await self.tree.sync(guild=discord.Object(self.guild_id))
        except discord.HTTPException as exc:
            self.sync_error = exc

    async def on_ready(self) -> None:
        self.events.append(("ready", [guild.name for guild in self.guilds]))

    async def on_guild_available(self, guild: discord.Guild) -> None:
        self.events.append(("guild_available", guild.name))

    def _register(self) -> None:
        tree = self.tree

        @tree.command(description="Render a picture (defers, then follows up with a PNG)")
        @app_commands.describe(prompt="What to draw", width="Width in pixels")
        async def render(interaction: discord.Interaction, prompt: str, width: int = 8) -> None:
            self.interactions["render"] = interaction
            await interaction.response.defer(thinking=True)
            try:
                await interaction.followup.send(
                    f"here is {prompt}", file=discord.File(io.BytesIO(png_bytes(width)), "render.png"),
                    view=PingView(self),
                )
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command(description="Pick a flavour")
        async def pick(interaction: discord.Interaction, flavour: str) -> None:
            await interaction.response.send_message(f"picked {flavour}")

        @pick.autocomplete("flavour")
        async def pick_flavour(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            if current == "many":
                return [app_commands.Choice(name=f"choice {i}", value=str(i)) for i in range(30)]
            return [app_commands.Choice(name=f, value=f) for f in FLAVOURS if f.startswith(current)]

        @tree.command(description="Open a modal")
        async def note(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(NoteModal(self))

        @tree.command(description="Open a modal that acknowledges silently")
        async def quietnote(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(NoteModal(self, quiet=True))

        @tree.command(description="Answer twice (the second must fail)")
        async def twice(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("first")
            try:
                await interaction.response.send_message("second")
            except discord.InteractionResponded as exc:
                self.errors.append(exc)

        @tree.command(description="Send an embed over Discord's 6000 character total")
        async def bigembed(interaction: discord.Interaction) -> None:
            embed = discord.Embed(title="big", description="d" * 4000)
            for index in range(3):
                embed.add_field(name=f"field {index}", value="v" * 1000)
            try:
                await interaction.response.send_message(embed=embed)
            except discord.HTTPException as exc:
                self.errors.append(exc)
                await interaction.response.send_message("that embed was too big", ephemeral=True)

        @tree.command(description="Say hello in the channel (a plain channel message)")
        async def hello(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("posting", ephemeral=True)
            assert interaction.channel is not None
            try:
                message = await interaction.channel.send("hello channel")  # type: ignore[union-attr]
                self.events.append(("sent", message.id))
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command(description="Where am I?")
        async def whereami(interaction: discord.Interaction) -> None:
            place = "a DM" if interaction.guild is None else interaction.guild.name
            await interaction.response.send_message(
                f"you are in {place}; limit {interaction.filesize_limit}"
            )

        @tree.command(description="Answer too late")
        async def slow(interaction: discord.Interaction, seconds: float) -> None:
            await asyncio.sleep(seconds)
            try:
                await interaction.response.send_message("finally")
            except discord.HTTPException as exc:
                self.errors.append(exc)

        @tree.command(description="Answer with a file and an embed showing it")
        async def card(interaction: discord.Interaction) -> None:
            embed = discord.Embed(title="Card").set_image(url="attachment://card.png")
            await interaction.response.send_message(
                embed=embed, file=discord.File(io.BytesIO(png_bytes(4, 4)), "card.png", description="a card")
            )
            message = await interaction.original_response()
            self.events.append(("card", message.id, [a.filename for a in message.attachments]))
            await interaction.edit_original_response(
                attachments=[*message.attachments, discord.File(io.BytesIO(png_bytes(2, 2)), "extra.png")]
            )

        @tree.command(description="A message that counts clicks")
        async def counter(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("count 0", view=CounterView())

        @tree.command(description="Read an uploaded file back")
        async def upload(interaction: discord.Interaction, file: discord.Attachment) -> None:
            data = await file.read()
            await interaction.response.send_message(f"{file.filename}: {len(data)} bytes, {data[:4]!r}")

        @tree.command(description="Post, edit, fetch and list channel messages")
        async def channelwork(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True)
            channel = interaction.channel
            assert isinstance(channel, discord.TextChannel)
            message = await channel.send("draft", file=discord.File(io.BytesIO(png_bytes()), "draft.png"))
            await message.edit(content="final")
            fetched = await channel.fetch_message(message.id)
            history = [m.id async for m in channel.history(limit=5)]
            self.events.append(("channelwork", fetched.content, message.id in history,
                                len(fetched.attachments)))
            await interaction.followup.send("done", ephemeral=True)

        admin = app_commands.Group(
            name="admin", description="Server settings",
            default_permissions=discord.Permissions(manage_guild=True), guild_only=True,
        )

        @admin.command(description="Reset the settings")
        async def reset(interaction: discord.Interaction, confirm: bool) -> None:
            perms = interaction.permissions
            await interaction.response.send_message(
                f"reset={confirm} manage_guild={perms.manage_guild}", ephemeral=True
            )

        tree.add_command(admin)
