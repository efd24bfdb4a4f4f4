"""Slash commands, autocomplete, buttons and modals as real gateway payloads, answered on the wire."""

from __future__ import annotations

import aiohttp
import discord
import pytest

from tests.sandbox.conftest import World
from tests.sandbox.conftest import until as _until
from tests.sandbox.sandbox_bot import png_bytes


async def test_defer_within_deadline_then_followup_fills_the_thinking_message(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "render", {"prompt": "a fox", "width": 16})
    assert await handle.wait_response(3) == 5
    assert handle.deferred_within is not None and handle.deferred_within < double.response_deadline
    assert not handle.missed_deadline
    followup = await handle.wait_followup()
    # Discord replaces the deferred "thinking…" message with the first followup.
    assert handle.original is followup and not followup.loading
    attachment = followup.attachment("render.png")
    assert attachment.data == png_bytes(16)
    assert attachment.image_size() == (16, 6)
    upload = double.requests_matching("POST /webhooks/*")[0]
    assert upload.files == ["render.png"] and upload.payload is not None
    assert upload.payload["attachments"] == [{"id": 0, "filename": "render.png"}]
    async with aiohttp.ClientSession() as session, session.get(attachment.url) as response:
        assert await response.read() == png_bytes(16)
    assert [b.custom_id for b in followup.buttons] == ["sandbox:ping", "sandbox:note"]
    assert double.violations == []


async def test_interaction_payload_has_what_discord_py_reads(world: World) -> None:
    handle = await world.double.slash(world.alice, world.channel, "whereami")
    payload = handle.payload
    for key in ("id", "application_id", "type", "token", "version", "attachment_size_limit",
                "channel", "channel_id", "guild_id", "member", "app_permissions", "locale",
                "entitlements", "authorizing_integration_owners", "context"):
        assert key in payload, key
    assert (await handle.wait_original()).content == "you are in Studio; limit 10485760"


async def test_second_response_is_stopped_by_discord_py(world: World) -> None:
    handle = await world.double.slash(world.alice, world.channel, "twice")
    assert (await handle.wait_original()).content == "first"
    await _until(lambda: world.bot.errors)
    assert isinstance(world.bot.errors[0], discord.InteractionResponded)
    assert handle.responses == [4]


async def test_second_response_on_the_wire_is_40060(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "whereami")
    await handle.wait_response()
    url = f"{double.api_base}/interactions/{handle.id}/{handle.token}/callback"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"type": 4, "data": {"content": "again"}}) as response:
            assert response.status == 400
            assert (await response.json())["code"] == 40060
    assert double.violations[-1].kind == "interaction_already_acknowledged"
    assert handle.errors == [(400, 40060)]


async def test_expired_token_fails_with_50027(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "render", {"prompt": "a owl"})
    await handle.wait_followup()
    interaction = world.bot.interactions["render"]
    await interaction.edit_original_response(content="still fresh")
    assert handle.original is not None and handle.original.content == "still fresh"
    double.advance_clock(15 * 60 + 1)
    with pytest.raises(discord.HTTPException) as caught:
        await interaction.followup.send("too late")
    assert caught.value.status == 401 and caught.value.code == 50027
    with pytest.raises(discord.HTTPException):
        await interaction.edit_original_response(content="too late")
    assert double.violations[-1].kind == "interaction_token_expired"


async def test_expire_token_targets_one_interaction(world: World) -> None:
    double = world.double
    first = await double.slash(world.alice, world.channel, "render", {"prompt": "one"})
    await first.wait_followup()
    interaction = world.bot.interactions["render"]
    second = await double.slash(world.alice, world.channel, "render", {"prompt": "two"})
    await second.wait_followup()
    double.expire_token(first)
    with pytest.raises(discord.HTTPException) as caught:
        await interaction.followup.send("late")
    assert caught.value.code == 50027
    await world.bot.interactions["render"].followup.send("fine")
    assert second.followups[-1].content == "fine"


async def test_missing_the_three_second_deadline(world: World) -> None:
    double = world.double
    double.response_deadline = 0.2
    handle = await double.slash(world.alice, world.channel, "slow", {"seconds": 0.5})
    await _until(lambda: world.bot.errors)
    assert handle.missed_deadline and handle.responses == []
    error = world.bot.errors[0]
    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert [v.kind for v in double.violations] == ["interaction_deadline_missed"]


async def test_autocomplete_returns_the_bots_choices(world: World) -> None:
    choices = await world.double.autocomplete(world.alice, world.channel, "pick", {"flavour": "van"}, "flavour")
    assert choices == [{"name": "vanilla", "value": "vanilla"}, {"name": "vanilla bean", "value": "vanilla bean"}]
    handle = world.double.interactions[-1]
    assert handle.type == 4 and handle.payload["data"]["options"][0]["focused"] is True


async def test_more_than_25_autocomplete_choices_are_refused(world: World) -> None:
    double = world.double
    handle = await double.autocomplete_handle(world.alice, world.channel, "pick", {"flavour": "many"}, "flavour")
    await _until(lambda: handle.errors)
    assert handle.errors == [(400, 50035)] and handle.choices is None
    assert double.violations[-1].kind == "invalid_interaction_response"
    assert any("data.choices" in detail for detail in double.violations[-1].details)


async def test_button_click_reaches_the_view(world: World) -> None:
    double = world.double
    render = await double.slash(world.alice, world.channel, "render", {"prompt": "x"})
    message = await render.wait_followup()
    click = await double.click(world.alice, message, "sandbox:ping")
    reply = await click.wait_original()
    assert reply.content == "pong" and reply.ephemeral
    assert ("clicked", world.alice.user.id, message.id) in world.bot.events
    assert click.payload["data"] == {"custom_id": "sandbox:ping", "component_type": 2}
    with pytest.raises(LookupError):
        await double.click(world.alice, message, "sandbox:nope")


async def test_modal_submit_reaches_the_modal(world: World) -> None:
    double = world.double
    opened = await double.slash(world.alice, world.channel, "note")
    assert await opened.wait_response() == 9
    assert opened.modal is not None and opened.modal["title"] == "Leave a note"
    submitted = await double.submit_modal(world.alice, opened, {"note:text": "lovely"})
    reply = await submitted.wait_original()
    assert reply.content == "noted: lovely (calm)"
    assert ("modal", "lovely", "calm") in world.bot.events
    with pytest.raises(ValueError, match="required"):
        await double.submit_modal(world.alice, opened, {"note:text": ""})


async def test_modal_opened_from_a_button_carries_the_message(world: World) -> None:
    double = world.double
    render = await double.slash(world.alice, world.channel, "render", {"prompt": "x"})
    message = await render.wait_followup()
    click = await double.click(world.alice, message, "sandbox:note")
    assert await click.wait_response() == 9
    submitted = await double.submit_modal(world.alice, click, {"note:text": "from a button", "note:mood": "glad"})
    assert submitted.payload["message"]["id"] == str(message.id)
    assert (await submitted.wait_original()).content == "noted: from a button (glad)"


async def test_embed_over_6000_characters_is_refused(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "bigembed")
    reply = await handle.wait_original()
    assert reply.content == "that embed was too big"
    error = world.bot.errors[0]
    assert isinstance(error, discord.HTTPException) and error.code == 50035
    violation = double.violations[0]
    assert violation.kind == "invalid_interaction_response"
    assert any("MAX_EMBED_SIZE_EXCEEDED" in detail for detail in violation.details)
    assert handle.responses == [4]


async def test_file_over_the_attachment_size_limit_is_refused(world: World) -> None:
    double = world.double
    world.guild.attachment_size_limit = 64
    handle = await double.slash(world.alice, world.channel, "render", {"prompt": "x"})
    assert handle.payload["attachment_size_limit"] == 64
    await _until(lambda: world.bot.errors)
    error = world.bot.errors[0]
    assert isinstance(error, discord.HTTPException) and error.status == 413 and error.code == 40005
    assert double.violations[-1].kind == "file_too_large"
    assert handle.followups == []


async def test_429_with_retry_after_is_retried(world: World) -> None:
    double = world.double
    double.rate_limit("POST /channels/*/messages", count=2, retry_after=0.05)
    handle = await double.slash(world.alice, world.channel, "hello")
    await handle.wait_response()
    message = await double.wait_for_message(world.channel, lambda m: m.content == "hello channel")
    assert message.author is double.bot_user
    posts = double.requests_matching("POST /channels/*/messages")
    assert [r.status for r in posts] == [429, 429, 200]
    assert world.bot.errors == []


async def test_429_without_via_is_a_cloudflare_ban(world: World) -> None:
    double = world.double
    double.rate_limit("POST /channels/*/messages", count=1, cloudflare=True)
    await double.slash(world.alice, world.channel, "hello")
    await _until(lambda: world.bot.errors)
    error = world.bot.errors[0]
    assert isinstance(error, discord.HTTPException) and error.status == 429
    assert len(double.requests_matching("POST /channels/*/messages")) == 1


async def test_dm_interaction_has_a_user_and_no_guild(world: World) -> None:
    double = world.double
    dm = double.open_dm(world.alice)
    handle = await double.slash(world.alice, dm, "whereami")
    assert "guild_id" not in handle.payload and "member" not in handle.payload
    assert handle.payload["user"]["id"] == str(world.alice.user.id)
    assert handle.payload["context"] == 1
    assert (await handle.wait_original()).content == "you are in a DM; limit 10485760"
    with pytest.raises(PermissionError, match="direct messages"):
        await double.slash(world.alice, dm, "admin", {"confirm": True}, subcommand="reset")


async def test_autocomplete_helper_reports_a_refused_answer(world: World) -> None:
    with pytest.raises(AssertionError, match="50035"):
        await world.double.autocomplete(world.alice, world.channel, "pick", {"flavour": "many"}, "flavour")


async def test_modal_submit_can_be_deferred_then_followed_up(world: World) -> None:
    double = world.double
    opened = await double.slash(world.alice, world.channel, "quietnote")
    await opened.wait_response()
    submitted = await double.submit_modal(world.alice, opened, {"note:text": "psst"})
    followup = await submitted.wait_followup()
    assert submitted.responses == [6] and submitted.original is None
    assert followup.content == "noted: psst (calm)" and followup.ephemeral
    assert double.violations == []
