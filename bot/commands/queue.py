"""``/queue``: what is running and waiting in this server, and where your jobs are."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot import embeds
from bot.commands.common import bot_of

SHOWN = 15


@app_commands.command(name="queue", description="Show the image queue of this server")
@app_commands.guild_only()
async def queue(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    dispatcher = bot_of(interaction).dispatcher
    everyone = dispatcher.queue_snapshot()
    here = [job for job in everyone if job.guild_id == interaction.guild_id]
    lines = []
    for index, job in enumerate(here[:SHOWN], 1):
        state = f"{job.step}/{job.total}" if job.state == "running" and job.total else job.state
        mine = " ← you" if job.user_id == interaction.user.id else ""
        prompt = embeds.truncate(job.recipe.prompt.replace("\n", " "), 50)
        lines.append(f"{index}. <@{job.user_id}> · {state} · *{prompt}*{mine}")
    if len(here) > SHOWN:
        lines.append(f"… and {len(here) - SHOWN} more")
    title = f"Queue: {len(here)} job(s) here, {len(everyone)} in total"
    await interaction.followup.send(
        embed=embeds.list_embed(title, lines, empty="The queue is empty: `/imagine` starts right away."),
        ephemeral=True,
    )
