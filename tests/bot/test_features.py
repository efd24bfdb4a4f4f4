"""Features as cogs: each owns its commands, buttons and modals, and comes and goes alone."""

from __future__ import annotations

import asyncio

from bot.ui import views
from bot.ui.cogs import COGS
from bot.ui.cogs.privacy import PrivacyCog
from tests.bot.conftest import World


def test_every_button_and_modal_belongs_to_exactly_one_feature() -> None:
    """A button no cog registers would be dead after a restart; two owners would be a race."""
    buttons = [item for cog in COGS for item in cog.buttons(cog(None, None))]  # type: ignore[arg-type]
    modals = [kind for cog in COGS for kind in cog.modals(cog(None, None))]  # type: ignore[arg-type]
    assert sorted(b.__name__ for b in buttons) == sorted(b.__name__ for b in views.DYNAMIC_ITEMS)
    kinds = views.MODAL_ID.pattern.split("(?P<kind>")[1].split(")")[0].split("|")
    assert sorted(modals) == sorted(kinds)


async def test_the_bot_runs_one_cog_per_feature(world: World) -> None:
    assert sorted(world.bot.cogs) == [
        "audit", "embeddings", "imagine", "loras", "models", "pictures", "privacy", "queue", "recipes", "settings",
        "sources",
    ]  # fmt: skip  (pictures: issue 20)


async def test_a_feature_is_removed_and_added_back_on_a_running_bot(world: World) -> None:
    """The privacy feature alone: its command and its persistent button leave with its cog,
    the others stay, and a button posted before the cog came back works once it is back."""
    bot = world.bot
    await world.registry.saved_recipes.save(world.guild.id, world.alice.user.id, "fox", {"model": "m", "prompt": "p"})
    handle = await world.double.slash(world.alice, world.channel, "privacy", {}, subcommand="delete")
    confirm = await handle.wait_followup()
    (button,) = confirm.buttons

    await bot.remove_cog("privacy")
    assert bot.tree.get_command("privacy") is None and bot.tree.get_command("imagine") is not None
    # discord.py's table of persistent buttons (no public reader): the feature took its own back.
    dynamic = bot._connection._view_store._dynamic_items.values()
    assert views.PrivacyDeleteButton not in dynamic and views.ImageButton in dynamic

    await bot.add_cog(PrivacyCog(bot, bot.features))
    assert bot.tree.get_command("privacy") is not None
    click = await world.double.click(world.alice, confirm, button.custom_id)
    done = await asyncio.wait_for(click.wait_followup(), 10)
    assert "Deleted 1 saved recipe(s)" in done.content
    assert await world.registry.saved_recipes.of_member(world.guild.id, world.alice.user.id) == []
