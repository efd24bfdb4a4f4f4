"""``/queue``: your jobs with their place and ETA, this server's load, and a way out.

Members see their own jobs (position, ETA from measured speed), how busy this server is, and
the first jobs in line; a button cancels all their jobs here. Admins (Manage Server) also see
each engine's state, without addresses: those are for the operator's log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import discord
from discord import app_commands

from bot.jobs import Job, JobState
from bot.jobs.engines import replica_lines
from bot.jobs.status import describe_eta, describe_position
from bot.ui import embeds, views
from bot.ui.cogs.cog import FeatureCog
from bot.ui.common import is_admin
from bot.ui.features import features_of
from bot.ui.routes import ButtonWork

SHOWN = 15
MINE_SHOWN = 10


def _state(job: Job) -> str:
    if job.state == JobState.QUEUED:
        eta = describe_eta(job.eta_s)
        return f"queued, {describe_position(job.position)}" + (f", {eta}" if eta else "")
    if job.state == JobState.RUNNING and job.total:
        return f"generating {job.step}/{job.total}"
    return {
        JobState.SUBMITTED: "next up",
        JobState.RUNNING: "loading the model",
        JobState.POSTING: "posting",
    }.get(job.state, job.state.value)


def _engine_lines(bot: Any) -> list[str]:
    lines = []
    for slot in bot.engines.slots:
        if slot.healthy and slot.cluster:
            lines.append(f"**{slot.name}**: up, {len(slot.jobs())} job(s) in hand, room for {bot.engines.units_of(slot)}")
            lines += [f"- {line}" for line in replica_lines(slot)]
        elif slot.healthy:
            busy = len(slot.jobs())
            lines.append(f"**{slot.name}**: up, {busy} job(s) in hand" + (f", holding `{slot.model}`" if slot.model else ""))
        else:
            since = f" for {time.time() - slot.down_since:.0f} s" if slot.down_since else ""
            process = slot.process
            extra = f", {process.restarts} restart(s), now {process.state}" if process is not None else ""
            lines.append(f"**{slot.name}**: down{since}{extra} (the bot's log has the details)")
    return lines


@app_commands.command(name="queue", description="Your image jobs, their place in line, and this server's queue")
@app_commands.guild_only()
async def queue(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    bot = features_of(interaction)
    dispatcher = bot.dispatcher
    everyone = dispatcher.open_jobs()
    here = [job for job in everyone if job.guild_id == interaction.guild_id]
    mine = [job for job in here if job.user_id == interaction.user.id]
    embed = discord.Embed(title="Image queue", colour=embeds.ACCENT)
    if mine:
        lines = [
            f"{_state(job)} · *{embeds.truncate(job.recipe.prompt.replace(chr(10), ' '), 50)}*"
            for job in mine[:MINE_SHOWN]
        ]
        if len(mine) > MINE_SHOWN:
            lines.append(f"… and {len(mine) - MINE_SHOWN} more")
        embed.add_field(name=f"Your jobs ({len(mine)})", value="\n".join(lines), inline=False)
    else:
        embed.add_field(name="Your jobs", value="None: `/imagine` starts one.", inline=False)
    making = sum(1 for job in here if job.state != JobState.QUEUED)
    load = f"{len(here) - making} waiting and {making} being made here; {len(everyone)} in all servers."
    if dispatcher.engines_down():
        load += "\n⚠️ The image engine is restarting; requests are kept and run when it is back."
    embed.add_field(name="This server", value=load, inline=False)
    line_up = []
    for index, job in enumerate(here[:SHOWN], 1):
        you = " ← you" if job.user_id == interaction.user.id else ""
        prompt = embeds.truncate(job.recipe.prompt.replace("\n", " "), 40)
        line_up.append(f"{index}. <@{job.user_id}> · {_state(job)} · *{prompt}*{you}")
    if len(here) > SHOWN:
        line_up.append(f"… and {len(here) - SHOWN} more")
    embed.add_field(name="In line here", value="\n".join(line_up) or "Nobody: `/imagine` starts right away.", inline=False)
    if is_admin(interaction):
        embed.add_field(name="Engines (admins)", value="\n".join(_engine_lines(bot)), inline=False)
    await interaction.followup.send(
        embed=embeds.fit_embed(embed),
        view=views.detached(views.queue_view()) if mine else discord.utils.MISSING,
        ephemeral=True,
    )


class QueueCog(FeatureCog, name="queue"):
    feature_commands = (queue,)

    def buttons(self) -> Mapping[type[Any], ButtonWork]:
        f = self.features
        return {views.CancelMineButton: lambda i, item: f.actions.cancel_mine(i)}
