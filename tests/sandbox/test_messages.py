"""Message editing paths, attachments in and out, guild changes while the bot is online."""

from __future__ import annotations

import discord

from sandbox.discord_double import DiscordDouble, run_bot, write_transcript
from tests.sandbox.conftest import World, until
from tests.sandbox.sandbox_bot import SandboxBot, png_bytes


async def test_update_message_and_deferred_update(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "counter")
    message = await handle.wait_original()
    assert message.content == "count 0"
    click = await double.click(world.alice, message, "counter:inc")
    assert await click.wait_response() == 7
    assert message.content == "count 1" and message.edits == 1
    later = await double.click(world.alice, message, "counter:later")
    assert await later.wait_response() == 6
    await double.wait_for_message(world.channel, lambda m: m.content == "count 11")
    assert later.original is message


async def test_component_can_delete_its_message(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "counter")
    message = await handle.wait_original()
    click = await double.click(world.alice, message, "counter:delete")
    await click.wait_response()
    await until(lambda: message.deleted)
    assert message not in double.messages(world.channel)
    assert double.requests_matching("DELETE /channels/*/messages/*")[0].status == 204


async def test_attachment_option_is_downloadable_by_the_bot(world: World) -> None:
    handle = await world.double.slash(
        world.alice, world.channel, "upload", {"file": ("lora.safetensors", b"\x08\x00\x00\x00rest")}
    )
    reply = await handle.wait_original()
    assert reply.content == "lora.safetensors: 8 bytes, b'\\x08\\x00\\x00\\x00'"
    assert "attachments" in handle.payload["data"]["resolved"]


async def test_channel_messages_send_edit_fetch_history(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "channelwork")
    done = await handle.wait_original()
    assert done.content == "done" and done.ephemeral
    assert ("channelwork", "final", True, 1) in world.bot.events
    posted = next(m for m in double.messages(world.channel) if m.content == "final")
    assert posted.attachment("draft.png").data == png_bytes()
    assert posted.edits == 1
    # Ephemeral messages are not part of the channel's public history.
    assert all(not m.ephemeral for m in double.messages(world.channel, include_ephemeral=False))


async def test_guild_added_while_online_is_joined(world: World) -> None:
    double = world.double
    joined: list[str] = []

    async def on_guild_join(guild: discord.Guild) -> None:
        joined.append(guild.name)

    world.bot.add_listener(on_guild_join)
    guild = double.add_guild("Second")
    channel = double.add_channel(guild, "art")
    await until(lambda: joined == ["Second"])
    await until(lambda: world.bot.get_channel(channel.id) is not None)


async def test_member_chunking_with_the_members_intent(double: DiscordDouble) -> None:
    guild = double.add_guild("Big")
    double.add_member(guild, "carol")
    intents = discord.Intents.default()
    intents.members = True
    bot = SandboxBot(intents=intents)  # chunk_guilds_at_startup defaults to the members intent
    async with run_bot(bot, double):
        members = {m.name for m in bot.get_guild(guild.id).members}  # type: ignore[union-attr]
        assert {"carol", "owner", double.bot_user.name} <= members
        # A small guild arrives with all its members, so startup needs no chunk request...
        assert 8 not in double.sessions[0].received_ops
        # ...but an explicit chunk asks the gateway (op 8) and gets GUILD_MEMBERS_CHUNK back.
        chunked = await bot.get_guild(guild.id).chunk()  # type: ignore[union-attr]
        assert {m.name for m in chunked} == members
        assert 8 in double.sessions[0].received_ops


async def test_response_with_file_then_edit_adding_a_file(world: World) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "card")
    original = await handle.wait_original()
    await until(lambda: original.edits == 1)
    assert [a.filename for a in original.attachments] == ["card.png", "extra.png"]
    assert original.attachment("card.png").description == "a card"
    assert original.attachment("extra.png").data == png_bytes(2, 2)
    # Discord rewrites attachment:// references to the uploaded file's URL.
    assert original.embeds[0]["image"]["url"] == original.attachment("card.png").url
    assert ("card", original.id, ["card.png"]) in world.bot.events
    callback = double.requests_matching("POST /interactions/*/callback")[0]
    assert callback.files == ["card.png"] and callback.query == {"with_response": "1"}


async def test_transcript_shows_the_channel_with_its_files(world: World, tmp_path) -> None:
    double = world.double
    handle = await double.slash(world.alice, world.channel, "render", {"prompt": "a <b>bold</b> fox"})
    followup = await handle.wait_followup()
    transcript = write_transcript(double, world.channel, tmp_path / "out")
    text = transcript.text.read_text(encoding="utf-8")
    assert "here is a <b>bold</b> fox" in text and "[Ping] [Note]" in text
    assert [p.name for p in transcript.files] == [f"{followup.id}-render.png"]
    assert transcript.files[0].read_bytes() == png_bytes()
    page = transcript.html.read_text(encoding="utf-8")
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and f"files/{followup.id}-render.png" in page


async def test_transcript_renders_discord_markdown_and_mentions(world: World, tmp_path) -> None:
    double = world.double
    prompt = f"**big** `fox` for <@{world.alice.user.id}> <script>"
    handle = await double.slash(world.alice, world.channel, "render", {"prompt": prompt})
    await handle.wait_followup()
    page = write_transcript(double, world.channel, tmp_path / "out").html.read_text(encoding="utf-8")
    assert "<b>big</b> <code>fox</code> for <b>@alice</b> &lt;script&gt;" in page


async def test_a_request_over_the_size_limit_is_refused(world: World) -> None:
    import aiohttp

    double = world.double
    assert double.request_size_limit == 25 * 1024 * 1024  # Discord's; lowered to keep the test light
    double.request_size_limit = 4096
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", '{"content": "big"}', content_type="application/json")
    form.add_field("files[0]", b"\0" * 3000, filename="a.bin")
    form.add_field("files[1]", b"\0" * 3000, filename="b.bin")
    url = f"{double.api_base}/channels/{world.channel.id}/messages"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=form, headers={"Authorization": f"Bot {double.token}"}) as response:
            assert response.status == 413
            assert (await response.json())["code"] == 40005
    assert double.violations[-1].kind == "request_too_large"
    assert double.messages(world.channel) == []
